"""Where tensors run: the device, moving batches onto it, mixed precision, and the one batched-inference loop
(features, logits) with its deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from automl_tl.backbone import Preprocessor, ordered_for_inference


class DeadlineReached(Exception):
    """A computation was stopped because the caller's deadline passed (nothing of it is kept)."""


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def move_to(batch: torch.Tensor | dict[str, torch.Tensor], device: torch.device) -> Any:
    """A collated batch (a tensor, or a tokenizer's dict of tensors) on ``device``."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def autocast(device: torch.device) -> torch.autocast:
    """Mixed precision only where it pays: on CUDA. On the CPU, float32 is faster for these models."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")


@torch.no_grad()
def batched_inference(
    forward: Callable[[Any], torch.Tensor],
    preprocessor: Preprocessor,
    items: Sequence[Any],
    batch_size: int,
    device: torch.device,
    deadline: float | None = None,
    what: str = "inference",
) -> torch.Tensor | None:
    """``forward`` (a batch on ``device`` -> a CPU tensor, one row per item) over the encoded ``items``, the rows
    in the items' order; None when there are none.

    The batches follow the preprocessor's inference order (texts by length, so that a batch pads little).
    ``deadline`` (a ``time.monotonic()`` value) is checked before every batch: when the batch, taking as long as
    the one before it, would end past it, :class:`DeadlineReached` is raised, saying ``what`` was stopped.
    """
    ordered, restore = ordered_for_inference(preprocessor, items)
    outputs = []
    last_batch_seconds = 0.0
    for start in range(0, len(ordered), batch_size):
        batch_started = time.monotonic()
        if deadline is not None and batch_started + last_batch_seconds > deadline:
            raise DeadlineReached(f"{what} stopped after {start} of {len(items)} examples")
        outputs.append(forward(move_to(preprocessor.collate(ordered[start : start + batch_size], train=False), device)))
        last_batch_seconds = time.monotonic() - batch_started
    return restore(torch.cat(outputs)) if outputs else None
