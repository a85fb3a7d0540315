"""Where tensors run: the device, moving batches onto it, mixed precision, and the one batched-inference loop
(features, logits) with its deadline."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from automl_tl.backbone import Preprocessor, ordered_for_inference


class DeadlineReached(Exception):
    """A computation was stopped because the caller's deadline passed (nothing of it is kept)."""


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def release_memory() -> None:
    """Return freed tensors to the system between trials: a full garbage collection (a trial's optimizer and
    model can sit in reference cycles), then CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects alive on entry out of every garbage collection until exit.

    A process that has imported torch, timm and transformers holds half a million objects, and a full
    collection walks them all: half a second after every trial. What a search allocates and drops is what
    it made after it began, so the objects from before (modules, the user's data) are frozen for its
    duration, and handed back to the collector on exit. A heap frozen already (by the caller, or an outer
    search) is left as its owner froze it."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()  # nothing dead is frozen: what is frozen is never collected
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: On the CPU a batch of large images outgrows the processor's caches: MobileNetV2 and EfficientNet-Lite0/1 embed
#: 8 images of 224-240 px 1.7 to 3 times faster per image than 64 (at 128 px, 8 still beats 64 by 2 times).
#: Inference batches of 3-channel images of at least CPU_CHUNKED_PIXELS are run in chunks of CPU_IMAGE_CHUNK.
CPU_IMAGE_CHUNK = 8
CPU_CHUNKED_PIXELS = 96 * 96


def move_to(batch: torch.Tensor | dict[str, torch.Tensor], device: torch.device) -> Any:
    """A collated batch (a tensor, or a tokenizer's dict of tensors) on ``device``; a batch of images (4-D) in
    channels-last order, the layout convolutions run fastest in (a quarter faster to train on 2 CPU cores, twice
    as fast to embed, with the model's weights in it too: see :func:`on_device`)."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if batch.dim() == 4:
        return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
    return batch.to(device, non_blocking=True)


def on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, its 4-D weights (convolutions) in channels-last order to match :func:`move_to`'s
    image batches (other weights are left as they are; a text model is unchanged)."""
    return model.to(device=device, memory_format=torch.channels_last)


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
        batch = move_to(preprocessor.collate(ordered[start : start + batch_size], train=False), device)
        outputs.extend(forward(chunk) for chunk in _inference_chunks(batch, device))
        last_batch_seconds = time.monotonic() - batch_started
    return restore(torch.cat(outputs)) if outputs else None


def _inference_chunks(batch: Any, device: torch.device) -> Sequence[Any]:
    """``batch`` as the pieces inference runs it in: a CPU batch of large 3-channel images in chunks of
    :data:`CPU_IMAGE_CHUNK` (see there), anything else whole."""
    if (
        device.type == "cpu"
        and isinstance(batch, torch.Tensor)
        and batch.dim() == 4
        and batch.shape[1] == 3
        and batch.shape[2] * batch.shape[3] >= CPU_CHUNKED_PIXELS
    ):
        return torch.split(batch, CPU_IMAGE_CHUNK)
    return (batch,)
