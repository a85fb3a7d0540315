"""Frozen-body features, computed once and kept on disk for every trial, run and worker on the machine.

An entry is content-addressed: its key hashes the backbone's identity, a hash of its
pretrained weights, the whole preprocessing and the samples themselves (array bytes, text, or a
file's path, size and modification time). Equal keys therefore mean equal features, whatever
the run, study or process that asks.

Entries are ``KEY.npy`` (float32, one row per sample, read with ``allow_pickle=False``) plus
``KEY.json`` (what the key was made of, for people). They are written to a temporary file and
renamed into place, under a per-key lock, so two workers asking for the same entry at once
compute it once and nobody ever reads half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_tl.backbone import Backbone, Preprocessor, ordered_for_inference
from automl_tl.locking import exclusive_lock
from automl_tl.weights import cache_root

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


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


class DeadlineReached(Exception):
    """Computing features was stopped because the caller's deadline passed (nothing is stored)."""


@torch.no_grad()
def compute_features(backbone: Backbone, preprocessor: Preprocessor, items: Sequence[Any], device: torch.device,
                     batch_size: int = 64, deadline: float | None = None) -> np.ndarray:
    """The pretrained body's embedding of every encoded item, in order, as float32 (evaluation mode).

    The batches follow the preprocessor's inference order (texts longest first); the rows, the items' order.
    ``deadline`` (a ``time.monotonic()`` value) is checked before every batch: past it,
    :class:`DeadlineReached` is raised.
    """
    from automl_tl.executor import move_to  # the executor imports this module

    model = backbone.build(num_classes=2).to(device).eval()
    ordered, restore = ordered_for_inference(preprocessor, items)
    rows = []
    for start in range(0, len(ordered), batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineReached(f"{backbone.name} features stopped after {start} of {len(items)} samples")
        batch = move_to(preprocessor.collate(ordered[start:start + batch_size], train=False), device)
        rows.append(model.embed(batch).float().cpu().numpy())
    del model
    dim = backbone.embedding_dim
    return restore(np.concatenate(rows).astype(np.float32)) if rows else np.zeros((0, dim), np.float32)


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
        description = {"format": FORMAT_VERSION, "backbone": backbone.describe(),
                       "weights": backbone.weights_fingerprint(), "preprocessing": preprocessor.describe(),
                       "samples": samples}
        text = json.dumps(description, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:40], description

    def features(self, backbone: Backbone, preprocessor: Preprocessor, encode: Callable[[], Sequence[Any]],
                 samples: str, rows: int, device: torch.device, batch_size: int = 64,
                 deadline: float | None = None) -> np.ndarray:
        """The body's features of ``rows`` samples whose raw content hashes to ``samples``.

        ``encode`` returns the samples encoded by ``preprocessor``; it is called only on a cache miss.
        On a miss, computing stops with :class:`DeadlineReached` once ``deadline`` passes.
        """
        if not self.enabled:
            self.misses += 1
            return compute_features(backbone, preprocessor, encode(), device, batch_size, deadline)
        key, description = self.key(backbone, preprocessor, samples)
        path = self.root / key[:2] / f"{key}.npy"
        found = self._read(path, rows, backbone.embedding_dim)
        if found is not None:
            self.hits += 1
            return found
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_suffix(".lock")):
            found = self._read(path, rows, backbone.embedding_dim)  # another worker may have written it
            if found is not None:
                self.hits += 1
                return found
            started = time.perf_counter()
            features = compute_features(backbone, preprocessor, encode(), device, batch_size, deadline)
            _write_atomic(path, features, {**description, "shape": list(features.shape),
                                            "seconds": round(time.perf_counter() - started, 3)})
            self.misses += 1
            logger.info("computed %s features of %d samples in %.1fs (cached in %s)", backbone.name, rows,
                        time.perf_counter() - started, path.parent)
            return features

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
            logger.warning("ignoring cached features %s of shape %s (expected %s); computing them again",
                           path, features.shape, (rows, dim))
            return None
        return features


def _write_atomic(path: Path, features: np.ndarray, description: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".npy", delete=False) as file:
        np.save(file, features, allow_pickle=False)
        temp = Path(file.name)
    os.replace(temp, path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        json.dump(description, file, indent=2, default=str)
        temp = Path(file.name)
    os.replace(temp, path.with_suffix(".json"))
