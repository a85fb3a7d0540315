"""Frozen-body features, computed once and kept on disk for every trial, run and worker on the machine.

An entry is content-addressed: its key hashes the backbone's identity, a hash of its
pretrained weights, the whole preprocessing and the samples themselves (array bytes, text, or a
file's path, size and modification time). Equal keys therefore mean equal features, whatever
the run, study or process that asks.

Entries are ``KEY.npy`` (float32, one row per sample, read with ``allow_pickle=False``) plus
``KEY.json`` (what the key was made of, and the seconds per sample it took, for people and cost
estimates). They are written to a temporary file and renamed into place, under a per-key lock, so
two workers asking for the same entry at once compute it once and nobody ever reads half a file.

Some rows of an entry can be asked for first (the pre-ranking scores a sample of the training
split): they are kept as a partial entry, ``KEY.part.npz`` (row numbers and their features), and
the computation of the whole entry later computes only the rows it lacks.

Features are computed in the preprocessor's inference order (texts longest first, so batches pad
to little) and returned in the samples' order; :func:`measure_inference` times a few batches
beforehand, so a caller can tell what computing them will cost before committing to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_tl.backbone import Backbone, Preprocessor, ordered_for_inference
from automl_tl.files import exclusive_lock
from automl_tl.train.device import batched_inference, move_to, on_device
from automl_tl.transfer_model import TransferModel
from automl_tl.weights import cache_root

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".part.npz"  # some rows of an entry: arrays "index", "features" and "seconds_per_example"

#: measuring a backbone's cost: one warm-up batch of this many examples (first-call costs: lazy
#: initialisation, memory allocation), then a few timed batches of a few random examples
MEASURE_WARMUP_EXAMPLES = 2
MEASURE_BATCH_SIZE = 8
MEASURE_BATCHES = 2


def default_feature_root() -> Path:
    """``$AUTOML_TL_FEATURE_CACHE``, else ``features/`` in the automl_tl cache folder."""
    if os.environ.get("AUTOML_TL_FEATURE_CACHE"):
        return Path(os.environ["AUTOML_TL_FEATURE_CACHE"]).expanduser()
    return cache_root() / "features"


def samples_hash(inputs: Sequence[Any]) -> str:
    """A hash of the samples' content: array bytes and shape, text, or a file's path, size and mtime."""
    digest = hashlib.sha256()
    for value in inputs:
        if isinstance(value, np.ndarray):
            digest.update(repr((value.shape, value.dtype.str)).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, (str, Path)) and len(str(value)) < 4096 and os.path.isfile(value):
            stat = os.stat(value)
            digest.update(f"file:{os.path.abspath(value)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(f"value:{value}".encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def pretrained_model(backbone: Backbone, device: torch.device) -> TransferModel:
    """The backbone's pretrained model on ``device``, in evaluation mode, for computing features."""
    return on_device(backbone.build(num_classes=2), device).eval()


@torch.no_grad()
def compute_features(
    backbone: Backbone,
    preprocessor: Preprocessor,
    items: Sequence[Any],
    device: torch.device,
    batch_size: int = 64,
    deadline: float | None = None,
    model: TransferModel | None = None,
) -> np.ndarray:
    """The pretrained body's embedding of every encoded item, in order, as float32 (evaluation mode).

    The batches follow the preprocessor's inference order (texts longest first); the rows, the items' order.
    ``deadline`` (a ``time.monotonic()`` value) is checked before every batch: past it,
    :class:`DeadlineReached` is raised. ``model``: the pretrained model already built on ``device`` (else built).
    """
    model = pretrained_model(backbone, device) if model is None else model
    features = batched_inference(
        lambda batch: model.embed(batch).float().cpu(),
        preprocessor,
        items,
        batch_size,
        device,
        deadline,
        what=f"{backbone.name} features",
    )
    if features is None:
        return np.zeros((0, backbone.embedding_dim), np.float32)
    return features.numpy().astype(np.float32)


@dataclass(frozen=True)
class InferenceCost:
    """What computing a backbone's features costs on this device, as measured by :func:`measure_inference`."""

    seconds_per_example: float  # the body's forward pass, batches included (collate, transfer)
    load_seconds: float  # building the pretrained model, paid once per computation
    examples_timed: int  # 0: only the warm-up batch was timed (an overestimate: it holds first-call costs)

    def estimate(self, examples: int) -> float:
        """Seconds to compute the features of ``examples`` encoded examples, the model's loading included."""
        return self.load_seconds + self.seconds_per_example * examples


@torch.no_grad()
def measure_inference(
    backbone: Backbone,
    preprocessor: Preprocessor,
    items: Sequence[Any],
    device: torch.device,
    batch_size: int = MEASURE_BATCH_SIZE,
    batches: int = MEASURE_BATCHES,
    max_seconds: float | None = None,
    seed: int = 0,
    model: TransferModel | None = None,
) -> InferenceCost:
    """Time the pretrained body on a few batches of the encoded ``items``: the model is built, run on a
    warm-up batch of :data:`MEASURE_WARMUP_EXAMPLES`, then on ``batches`` batches of ``batch_size`` other
    items drawn at random (seeded), in the preprocessor's inference order.

    A timed batch is skipped once the measurement (loading included) would pass ``max_seconds``; with none
    timed, the warm-up's seconds per example stand in. Costs a few seconds at most for a large encoder on a CPU.
    ``model``: the pretrained model already built on ``device`` (else built, and its loading timed).
    """
    started = time.perf_counter()
    model = pretrained_model(backbone, device) if model is None else model
    load_seconds = time.perf_counter() - started
    chosen = np.random.default_rng(seed).permutation(len(items))[: MEASURE_WARMUP_EXAMPLES + batch_size * batches]
    warmup = [items[i] for i in chosen[:MEASURE_WARMUP_EXAMPLES]]
    timed, _ = ordered_for_inference(preprocessor, [items[i] for i in chosen[MEASURE_WARMUP_EXAMPLES:]])

    def seconds_of(batch_items: Sequence[Any]) -> float:
        batch_started = time.perf_counter()
        model.embed(move_to(preprocessor.collate(batch_items, train=False), device)).float().cpu()  # waits for it
        return time.perf_counter() - batch_started

    if not warmup:
        return InferenceCost(0.0, load_seconds, 0)
    per_example = seconds_of(warmup) / len(warmup)
    seconds, examples = 0.0, 0
    for start in range(0, len(timed), batch_size):
        batch_items = timed[start : start + batch_size]
        expected = (seconds / examples if examples else per_example) * len(batch_items)
        if max_seconds is not None and time.perf_counter() - started + expected > max_seconds:
            break
        seconds += seconds_of(batch_items)
        examples += len(batch_items)
    cost = InferenceCost(seconds / examples if examples else per_example, load_seconds, examples)
    logger.debug(
        "%s: %.4fs per example (%d timed), %.1fs to load",
        backbone.name,
        cost.seconds_per_example,
        examples,
        load_seconds,
    )
    return cost


class FeatureCache:
    """Features of a pretrained body on a set of samples; on disk under ``root``, or in memory only.

    ``root=None`` uses :func:`default_feature_root`; ``enabled=False`` computes features on every
    call and stores nothing (what a search without the cache pays).
    """

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_feature_root()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def key(self, backbone: Backbone, preprocessor: Preprocessor, samples: str) -> tuple[str, dict[str, Any]]:
        """The entry's name and the description it hashes."""
        description = {
            "format": FORMAT_VERSION,
            "backbone": backbone.describe(),
            "weights": backbone.weights_fingerprint(),
            "preprocessing": preprocessor.describe(),
            "samples": samples,
        }
        text = json.dumps(description, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:40], description

    def _path(self, backbone: Backbone, preprocessor: Preprocessor, samples: str) -> tuple[Path, dict[str, Any]]:
        key, description = self.key(backbone, preprocessor, samples)
        return self.root / key[:2] / f"{key}.npy", description

    def features(
        self,
        backbone: Backbone,
        preprocessor: Preprocessor,
        encode: Callable[[], Sequence[Any]],
        samples: str,
        rows: int,
        device: torch.device,
        batch_size: int = 64,
        deadline: float | None = None,
        index: Sequence[int] | None = None,
        model: TransferModel | None = None,
    ) -> np.ndarray:
        """The body's features of ``rows`` samples whose raw content hashes to ``samples``.

        ``encode`` returns the samples encoded by ``preprocessor``; it is called only on a cache miss.
        ``index`` (row numbers) asks for those rows only: what is computed for them is kept as a partial
        entry, which the computation of every row later completes rather than repeats.
        On a miss, computing stops with :class:`DeadlineReached` once ``deadline`` passes (nothing is stored).
        ``model``: the pretrained model already built on ``device``, used on a miss (else one is built).
        """
        wanted = None if index is None else np.asarray(index, dtype=np.int64)
        if not self.enabled:
            self.misses += 1
            items = encode()
            return compute_features(
                backbone,
                preprocessor,
                items if wanted is None else [items[i] for i in wanted],
                device,
                batch_size,
                deadline,
                model,
            )
        path, description = self._path(backbone, preprocessor, samples)
        found = self._lookup(path, rows, backbone.embedding_dim, wanted)
        if found is not None:
            self.hits += 1
            return found[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_suffix(".lock")):
            found = self._lookup(path, rows, backbone.embedding_dim, wanted)  # another worker may have written it
            if found is not None:
                self.hits += 1
                return found[0]
            started = time.perf_counter()
            known_index, known, known_seconds = self._read_partial(path, rows, backbone.embedding_dim)
            missing = np.setdiff1d(np.arange(rows) if wanted is None else wanted, known_index)
            items = encode()
            computed = (
                compute_features(
                    backbone, preprocessor, [items[i] for i in missing], device, batch_size, deadline, model
                )
                if len(missing)
                else known[:0]
            )
            seconds = time.perf_counter() - started
            # seconds per sample over every row computed so far, the partial entry's included
            per_example = (known_seconds * len(known_index) + seconds) / max(len(known_index) + len(missing), 1)
            merged_index = np.concatenate([known_index, missing])
            order = np.argsort(merged_index, kind="stable")
            merged_index, merged = merged_index[order], np.concatenate([known, computed])[order]
            self.misses += 1
            if len(merged_index) == rows:  # every row: the whole entry, which supersedes the partial one
                _write_atomic(
                    path,
                    merged,
                    {
                        **description,
                        "shape": list(merged.shape),
                        "seconds": round(seconds, 3),
                        "seconds_per_example": per_example,
                    },
                )
                path.with_name(path.stem + PARTIAL_SUFFIX).unlink(missing_ok=True)
                logger.info(
                    "computed %s features of %d samples in %.1fs (cached in %s)",
                    backbone.name,
                    len(missing),
                    seconds,
                    path.parent,
                )
                return merged if wanted is None else merged[wanted]
            _write_partial(path, merged_index, merged, per_example)
            logger.info(
                "computed %s features of %d of %d samples in %.1fs (kept in %s)",
                backbone.name,
                len(missing),
                rows,
                seconds,
                path.parent,
            )
            return merged[np.searchsorted(merged_index, wanted)]

    def cached_seconds_per_example(
        self,
        backbone: Backbone,
        preprocessor: Preprocessor,
        samples: str,
        rows: int,
        index: Sequence[int] | None = None,
    ) -> float | None:
        """If the features of the ``rows`` samples (or of the rows in ``index``) are cached, the seconds per
        sample their computation took (NaN when the entry does not say); None when they are not cached."""
        if not self.enabled:
            return None
        path, _ = self._path(backbone, preprocessor, samples)
        found = self._lookup(
            path, rows, backbone.embedding_dim, None if index is None else np.asarray(index, dtype=np.int64)
        )
        return None if found is None else found[1]

    def _lookup(
        self,
        path: Path,
        rows: int,
        dim: int,
        wanted: np.ndarray | None,
    ) -> tuple[np.ndarray, float] | None:
        """The cached features of every row (or of the ``wanted`` rows), with their seconds per sample."""
        whole = self._read(path, rows, dim)
        if whole is not None:
            try:
                per_example = float(json.loads(path.with_suffix(".json").read_text()).get("seconds_per_example", "nan"))
            except (OSError, ValueError, TypeError, AttributeError):
                per_example = float("nan")
            return (whole if wanted is None else whole[wanted]), per_example
        if wanted is None:
            return None
        known_index, known, per_example = self._read_partial(path, rows, dim)
        if len(known_index) == 0:
            return None
        positions = np.searchsorted(known_index, wanted).clip(max=len(known_index) - 1)
        if (known_index[positions] != wanted).any():  # some wanted row is not in the partial entry
            return None
        return known[positions], per_example

    @staticmethod
    def _read(path: Path, rows: int, dim: int) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable cached features %s (%s); computing them again", path, exc)
            return None
        if features.shape != (rows, dim) or features.dtype != np.float32 or not np.isfinite(features).all():
            logger.warning(
                "ignoring cached features %s of shape %s (expected %s); computing them again",
                path,
                features.shape,
                (rows, dim),
            )
            return None
        return features

    @staticmethod
    def _read_partial(path: Path, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Row numbers (sorted), features and seconds per sample of the partial entry; nothing if none is usable."""
        nothing = np.zeros(0, np.int64), np.zeros((0, dim), np.float32), 0.0
        partial = path.with_name(path.stem + PARTIAL_SUFFIX)
        if not partial.is_file():
            return nothing
        try:
            with np.load(partial, allow_pickle=False) as stored:
                index, features = stored["index"], stored["features"]
                per_example = float(stored["seconds_per_example"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable partial features %s (%s); computing them again", partial, exc)
            return nothing
        usable = (
            index.ndim == 1
            and index.dtype == np.int64
            and features.shape == (len(index), dim)
            and features.dtype == np.float32
            and np.isfinite(features).all()
            and (np.diff(index) > 0).all()
            and (len(index) == 0 or (index[0] >= 0 and index[-1] < rows))
        )
        if not usable:
            logger.warning(
                "ignoring partial features %s that do not fit %d samples of %d dimensions", partial, rows, dim
            )
            return nothing
        return index, features, per_example


def _write_atomic(path: Path, features: np.ndarray, description: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".npy", delete=False) as file:
        np.save(file, features, allow_pickle=False)
        temp = Path(file.name)
    os.replace(temp, path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        json.dump(description, file, indent=2, default=str)
        temp = Path(file.name)
    os.replace(temp, path.with_suffix(".json"))


def _write_partial(path: Path, index: np.ndarray, features: np.ndarray, seconds_per_example: float) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz", delete=False) as file:
        np.savez(
            file, index=index.astype(np.int64), features=features, seconds_per_example=np.float64(seconds_per_example)
        )
        temp = Path(file.name)
    os.replace(temp, path.with_name(path.stem + PARTIAL_SUFFIX))
