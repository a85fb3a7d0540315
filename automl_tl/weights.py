"""Finding pretrained weights on this machine: installed packages' folders, the cache folder, strict loading."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from automl_tl.errors import WeightsMismatchError


def package_folder(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it; ``None`` when absent.

    Weight packages are installed with ``--no-deps`` and some import broken or heavy
    dependencies, so they are located, never imported.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a dotted name with a missing parent, or a bad name
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_root() -> Path:
    """Where automl_tl keeps what it builds once (joined checkpoints, synthesised data):
    ``$AUTOML_TL_CACHE``, else ``$XDG_CACHE_HOME/automl_tl``, else ``~/.cache/automl_tl``."""
    if os.environ.get("AUTOML_TL_CACHE"):
        return Path(os.environ["AUTOML_TL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "automl_tl"


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load ``state_dict`` into ``module`` requiring the same keys and shapes; one readable error naming ``source``.

    A mismatch is an error, never a silent random initialisation of the layers that did not match.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsMismatchError(f"weights from {source} are not a state dict of tensors "
                                   f"(found {type(state_dict).__name__})")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or misshaped:
        raise WeightsMismatchError(
            f"weights from {source} do not fit {type(module).__name__}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(misshaped)} with another shape "
            f"(e.g. {misshaped[:3]})")
    module.load_state_dict(state_dict, strict=True)
