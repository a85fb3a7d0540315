"""A probe on several frozen bodies' embeddings concatenated, on disk, and loading it back to predict.

The probe is one linear layer on the bodies' normalised embeddings side by side (see
:func:`automl_tl.train.embedding_heads.fit_concatenated_logistic_regression`). Its columns fall into one block
per body, so it is kept as one ordinary model per body, each its body and a normalised linear head holding its
block of the layer, and it predicts the softmax of their logits' sum: every part is a model directory
as :mod:`automl_tl.results.model_io` writes and checks it, so the same safety holds (safetensors and JSON only,
every size checked before anything is allocated).

```
member_N/                 (an ensemble member: see automl_tl.results.ensemble)
  concatenated.json       format_version, kind, the parts (folder, backbone) in the order their blocks were joined
  part_0/                 model.safetensors + config.json of the first body and its block of the layer
  part_1/ ...
```
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_tl.errors import ModelFileError
from automl_tl.files import with_usual_permissions
from automl_tl.layout import CONCATENATED_FILE
from automl_tl.results.model_io import (
    PredictionRequest,
    Predictor,
    adopt_predictor_fields,
    load_model_dir,
    read_versioned_json,
    replace_directory,
    save_model,
)
from automl_tl.transfer_model import TransferModel

CONCATENATED_FORMAT_VERSION = 1
#: what ``concatenated.json`` (and an ensemble member listing it) calls this kind of model
CONCATENATED_FEATURES = "concatenated_features"
#: the most bodies a concatenated-feature probe may join (the search joins at most 3)
MAX_PARTS = 8
#: a part's folder: nothing else is opened, so a tampered file cannot point elsewhere
_PART_FOLDER = re.compile(r"part_[0-9]")


def part_folder(index: int) -> str:
    return f"part_{index}"


@dataclass
class ConcatenatedModel:
    """A concatenated-feature probe in memory: each part's model (its body and its block of the layer) with the
    config :func:`~automl_tl.results.model_io.save_model` takes, in the order their blocks were joined."""

    parts: list[tuple[TransferModel, dict[str, Any]]]

    @property
    def backbones(self) -> list[str]:
        return [config["backbone"]["name"] for _, config in self.parts]


def save_concatenated(model: ConcatenatedModel, directory: Path) -> None:
    """Write ``model`` into ``directory`` (``concatenated.json`` and a folder per part), replacing what was
    there only once everything is written."""
    if not 2 <= len(model.parts) <= MAX_PARTS:
        raise ValueError(f"a concatenated-feature probe joins 2 to {MAX_PARTS} bodies, not {len(model.parts)}")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = with_usual_permissions(Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent)))
    try:
        listed = []
        for index, (part, config) in enumerate(model.parts):
            save_model(part, staging / part_folder(index), config)
            listed.append({"folder": part_folder(index), "backbone": config["backbone"]["name"]})
        payload = {"format_version": CONCATENATED_FORMAT_VERSION, "kind": CONCATENATED_FEATURES, "parts": listed}
        (staging / CONCATENATED_FILE).write_text(json.dumps(payload, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, directory)


def read_concatenated_config(directory: Path) -> dict[str, Any]:
    """``concatenated.json`` of ``directory``, checked: its format version and kind, 2 to :data:`MAX_PARTS`
    parts each naming a distinct ``part_N`` folder."""
    path = Path(directory) / CONCATENATED_FILE
    if not path.is_file():
        raise ModelFileError(f"no concatenated-feature probe in {directory}: {CONCATENATED_FILE} is missing")
    config = read_versioned_json(path, CONCATENATED_FORMAT_VERSION, "concatenated-feature probe")
    if config.get("kind") != CONCATENATED_FEATURES:
        raise ModelFileError(f"{path}: field 'kind' is {config.get('kind')!r}; expected {CONCATENATED_FEATURES!r}")
    parts = config.get("parts")
    if not isinstance(parts, list) or not 2 <= len(parts) <= MAX_PARTS:
        count = len(parts) if isinstance(parts, list) else "no list of"
        raise ModelFileError(f"{path}: field 'parts' holds {count} parts; expected 2 to {MAX_PARTS}")
    folders = [part.get("folder") if isinstance(part, dict) else None for part in parts]
    for position, folder in enumerate(folders):
        if not isinstance(folder, str) or not _PART_FOLDER.fullmatch(folder):
            raise ModelFileError(f"{path}: part {position}: field 'folder' is {folder!r}; expected part_N")
    if len(set(folders)) != len(folders):
        raise ModelFileError(f"{path}: field 'parts' names a folder twice")
    return config


def load_concatenated_dir(directory: Path, device: torch.device | str | None = None) -> ConcatenatedPredictor:
    """Load a probe written by :func:`save_concatenated`: ``concatenated.json`` is checked first, then each part
    is loaded (and checked) as :func:`~automl_tl.results.model_io.load_model_dir` does; they must share their
    classes, input column and modality."""
    directory = Path(directory)
    config = read_concatenated_config(directory)
    parts = [load_model_dir(directory / part["folder"], device) for part in config["parts"]]
    first = parts[0]
    for part, listed in zip(parts[1:], config["parts"][1:]):
        if (
            part.classes != first.classes
            or part.input_column != first.input_column
            or part.backbone.modality != first.backbone.modality
        ):
            raise ModelFileError(
                f"{directory / listed['folder']}: its classes, input column or modality differ from the first part's"
            )
    return ConcatenatedPredictor(parts, config)


class ConcatenatedPredictor(Predictor):
    """Predicts with the softmax of its parts' summed logits (one linear layer on their bodies' embeddings
    side by side); otherwise a :class:`Predictor`. Each part reads the inputs itself."""

    def __init__(self, parts: Sequence[Predictor], config: dict[str, Any]):
        # (no Predictor.__init__: there is no one model here; what the tables need comes from the parts)
        self.parts = list(parts)
        adopt_predictor_fields(self, self.parts[0], config)

    @property
    def backbones(self) -> list[str]:
        """The bodies joined, in order."""
        return [part.backbone.name for part in self.parts]

    def _logits(self, request: PredictionRequest) -> tuple[np.ndarray, list[str]]:
        total: np.ndarray | None = None
        errors: list[str] = []
        request = request.sharing_bodies()
        for part in self.parts:
            logits, errors = part._logits(request)
            total = logits if total is None else total + logits
        return total, errors
