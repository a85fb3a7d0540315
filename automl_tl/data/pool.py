"""The unlabelled pool that self-training pseudo-labels: the training data's rows without a label, and the
inputs of ``--unlabeled PATH`` (a table or a folder, read with the training data's readers).

The pool is capped at :data:`MAX_POOL` inputs (a seeded sample: predicting and training on more costs more
than the pseudo-labels add), and every input in it is checked once: one that cannot be read is left out,
counted and named, as the training data's bad rows are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl_tl.data.bundle import DatasetBundle, Split, prepare_unlabelled
from automl_tl.data.readers import find_unreadable, input_excerpt
from automl_tl.options import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

#: the most unlabelled inputs self-training predicts (a seeded sample of the rest is dropped)
MAX_POOL = 4000
#: the name of the pool's split (its encodings and cached features are kept under it)
POOL_SPLIT = "unlabelled"
#: unreadable inputs named in the record (all are counted)
_NAMED = 5


@dataclass(frozen=True)
class UnlabelledPool:
    """Inputs without labels, readable, at most :data:`MAX_POOL`; and what was left out of them."""

    inputs: tuple[Any, ...]
    from_training_data: int  # inputs taken from the training data's rows without a label (before the cap)
    from_file: int  # inputs taken from --unlabeled (before the cap)
    unreadable: tuple[tuple[str, str], ...] = ()  # (file or text, why) of each input left out
    capped_from: int | None = None  # readable inputs before the cap, when it dropped some
    origin: str | None = None  # the --unlabeled path

    def __len__(self) -> int:
        return len(self.inputs)

    def split(self) -> Split:
        """The pool as a split (labels -1: none yet), to predict on and to take pseudo-labelled rows from."""
        return Split(POOL_SPLIT, list(self.inputs), np.full(len(self.inputs), -1, dtype=np.int64))

    def summary(self) -> dict[str, Any]:
        """What the pool holds, for the self-training record."""
        record: dict[str, Any] = {
            "pool": len(self),
            "from_training_data": self.from_training_data,
            "from_file": self.from_file,
            "unreadable": len(self.unreadable),
        }
        if self.origin is not None:
            record["unlabeled_path"] = self.origin
        if self.unreadable:
            record["unreadable_first"] = [{"file": f, "reason": r} for f, r in self.unreadable[:_NAMED]]
        if self.capped_from is not None:
            record["capped_from"] = self.capped_from
        return record


def unlabelled_pool(
    data: DatasetBundle,
    unlabeled: str | Path | None = None,
    seed: int = 0,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    cap: int = MAX_POOL,
) -> UnlabelledPool:
    """The pool of ``data``'s rows without a label and of the inputs of ``unlabeled`` (a table with the
    training data's input column, or a folder of its modality's files), capped at ``cap`` by a ``seed``-ed
    sample taken before the inputs are checked (so that checking costs at most ``cap`` reads, plus those
    replacing bad ones)."""
    from_data = list(data.unlabelled)
    from_file: list[Any] = []
    if unlabeled is not None:
        from_file = prepare_unlabelled(unlabeled, data.input_column, data.modality)
    candidates = from_data + from_file
    order = np.random.default_rng(seed).permutation(len(candidates))
    kept: list[Any] = []
    unreadable: list[tuple[str, str]] = []
    origin = str(unlabeled) if unlabeled is not None else "the training data's rows without a label"
    start = 0
    while len(kept) < cap and start < len(order):  # check in chunks until the pool is full or the inputs run out
        chunk = [candidates[i] for i in order[start : start + cap - len(kept)]]
        start += len(chunk)
        bad = find_unreadable(chunk, data.modality, f"unlabelled inputs of {origin}", max_image_pixels=max_image_pixels)
        bad_positions = {position for position, _ in bad}
        unreadable += [(exc.file or input_excerpt(chunk[p]), exc.reason) for p, exc in bad]
        kept += [value for p, value in enumerate(chunk) if p not in bad_positions]
    readable = len(candidates) - len(unreadable)  # (an estimate when the cap left some unchecked)
    if unreadable:
        logger.warning(
            "skipped %d unlabelled input(s) of %s that cannot be used: %s%s",
            len(unreadable),
            origin,
            "; ".join(f"{file}: {reason}" for file, reason in unreadable[:3]),
            "; ..." if len(unreadable) > 3 else "",
        )
    if readable > len(kept):
        logger.info("unlabelled pool: a seeded sample of %d of %d inputs (the most predicted on)", len(kept), readable)
    return UnlabelledPool(
        tuple(kept),
        len(from_data),
        len(from_file),
        tuple(unreadable),
        readable if readable > len(kept) else None,
        None if unlabeled is None else str(unlabeled),
    )
