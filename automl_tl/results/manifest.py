"""The run manifest: what it takes to know how a run's results were made, in ``manifest.json``.

Package versions, the seeds, the data's fingerprint and sizes, each backbone searched with its
weight source and the hash of its weights when they were loaded in this process, the search
settings, and the hardware. It is written beside the other results at the end of every search.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch

from automl_tl.backbone import _WEIGHTS_FINGERPRINTS, Backbone
from automl_tl.config import SearchConfig
from automl_tl.data.bundle import DatasetBundle

#: the packages whose versions change results
PACKAGES = (
    "automl_tl",
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "optuna",
    "numpy",
    "pandas",
    "scikit-learn",
    "safetensors",
    "soundfile",
)


def package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES` (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    """The machine: processor, cores, torch threads and the accelerator if any."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def _backbone_entry(backbone: Backbone) -> dict[str, Any]:
    entry = backbone.describe()
    # Only a hash computed already (for the feature cache): hashing here would load every backbone again.
    entry["weights_sha256_prefix"] = _WEIGHTS_FINGERPRINTS.get(
        (type(backbone).__qualname__, backbone.name, backbone.weight_source)
    )
    return entry


def build_manifest(
    config: SearchConfig, data: DatasetBundle, backbones: list[Backbone], data_source: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest of a search over ``backbones`` on ``data`` with ``config``."""
    return {
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "python": platform.python_version(),
        "packages": package_versions(),
        "seeds": {
            "search": config.seed,
            "data_split": (data_source or {}).get("seed"),
            "trials": "search seed + the trial's slot",
        },
        "data": {**data.summary(), "source": data_source},
        "backbones": [_backbone_entry(b) for b in backbones],
        "search": config.to_dict(),
        "hardware": hardware(),
    }
