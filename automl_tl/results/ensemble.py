"""An ensemble of saved models on disk, and loading it back to predict: the weighted average of its
members' class probabilities.

```
ensemble_model/
  ensemble.json   format_version, classes, input and label columns, metric, the members (folder, weight,
                  trial, backbone, strategy) and how they were chosen (see automl_tl.results.ensemble_selection)
  member_0/       a model directory as automl_tl.results.model_io writes it (model.safetensors + config.json)
  member_1/ ...   (a member of kind "concatenated_features": a probe on several bodies' embeddings side by
                  side, concatenated.json + part_N/ model folders; see automl_tl.results.concatenated)
```

Loading reads ``ensemble.json`` (checked against its schema before any member is built) and then each
member as :func:`~automl_tl.results.model_io.load_model_dir` does, so the same safety holds: safetensors
and JSON only, nothing unpickled, every refusal one :class:`~automl_tl.errors.ModelFileError` line.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_tl.errors import ModelFileError
from automl_tl.files import with_usual_permissions
from automl_tl.layout import ENSEMBLE_FILE
from automl_tl.results.calibration import TEMPERATURE_RANGE, check_temperature, log_probabilities, softmax
from automl_tl.results.concatenated import (
    CONCATENATED_FEATURES,
    ConcatenatedModel,
    load_concatenated_dir,
    save_concatenated,
)
from automl_tl.results.model_io import (
    PredictionRequest,
    Predictor,
    adopt_predictor_fields,
    load_model_dir,
    read_versioned_json,
    replace_directory,
    save_model,
)

ENSEMBLE_FORMAT_VERSION = 1
#: the most members an ensemble file may list (greedy selection makes at most 25 additions)
MAX_MEMBERS = 64
#: a member's folder inside the ensemble's: nothing else is opened, so a tampered file cannot point elsewhere
_MEMBER_FOLDER = re.compile(r"member_[0-9]{1,3}")
#: what a member is: one saved model (the default, also when no kind is listed), or a concatenated-feature probe
MODEL_MEMBER = "model"
MEMBER_KINDS = (MODEL_MEMBER, CONCATENATED_FEATURES)


def member_folder(index: int) -> str:
    return f"member_{index}"


def save_ensemble(
    directory: Path, members: Sequence[tuple[float, Any, dict[str, Any]]], config: dict[str, Any]
) -> None:
    """Write an ensemble into ``directory``: each member (weight, model, the model's config as
    :func:`~automl_tl.results.model_io.save_model` takes it; or weight, a
    :class:`~automl_tl.results.concatenated.ConcatenatedModel`, and what ``ensemble.json`` lists of it) in its own
    folder, and ``ensemble.json`` from ``config`` (classes, columns, metric, selection) with the members listed.
    What was there is replaced only once everything is written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = with_usual_permissions(Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent)))
    try:
        listed = []
        for index, (weight, model, model_config) in enumerate(members):
            if isinstance(model, ConcatenatedModel):
                save_concatenated(model, staging / member_folder(index))
                summary = {**model_config, "kind": CONCATENATED_FEATURES, "backbones": model.backbones}
            else:
                save_model(model, staging / member_folder(index), model_config)
                summary = _member_summary(model_config)
            listed.append({**summary, "folder": member_folder(index), "weight": float(weight)})
        payload = {"format_version": ENSEMBLE_FORMAT_VERSION, **config, "members": listed}
        (staging / ENSEMBLE_FILE).write_text(json.dumps(payload, indent=2, default=str))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, directory)


def _member_summary(model_config: dict[str, Any]) -> dict[str, Any]:
    trial_config = model_config.get("trial_config", {})
    return {
        "trial": model_config.get("trial"),
        "backbone": trial_config.get("backbone"),
        "strategy": trial_config.get("strategy"),
        "fitted_on": model_config.get("fitted_on"),
    }


def is_ensemble_dir(directory: Path) -> bool:
    return (Path(directory) / ENSEMBLE_FILE).is_file()


def read_ensemble_config(directory: Path) -> dict[str, Any]:
    """``ensemble.json`` of ``directory``, checked: its format version, 1 to :data:`MAX_MEMBERS` members each
    naming a ``member_N`` folder and a finite positive weight, the weights summing to 1."""
    path = Path(directory) / ENSEMBLE_FILE
    config = read_versioned_json(path, ENSEMBLE_FORMAT_VERSION, "ensemble")
    members = config.get("members")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        count = len(members) if isinstance(members, list) else "no list of"
        raise ModelFileError(f"{path}: field 'members' holds {count} members; expected 1 to {MAX_MEMBERS}")
    for position, member in enumerate(members):
        where = f"{path}: member {position}"
        if not isinstance(member, dict):
            raise ModelFileError(f"{where} is not a JSON object")
        folder, weight = member.get("folder"), member.get("weight")
        if not isinstance(folder, str) or not _MEMBER_FOLDER.fullmatch(folder):
            raise ModelFileError(f"{where}: field 'folder' is {folder!r}; expected member_N")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not (math.isfinite(weight) and weight > 0)
        ):
            raise ModelFileError(f"{where}: field 'weight' is {weight!r}; expected a positive number")
        kind = member.get("kind", MODEL_MEMBER)
        if not isinstance(kind, str) or kind not in MEMBER_KINDS:
            raise ModelFileError(f"{where}: field 'kind' is {kind!r}; expected one of {', '.join(MEMBER_KINDS)}")
    if "temperature" in config and not check_temperature(config["temperature"]):
        raise ModelFileError(
            f"{path}: field 'temperature' is {config['temperature']!r}; expected a number from "
            f"{TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g}"
        )
    total = sum(member["weight"] for member in members)
    if abs(total - 1.0) > 1e-6:
        raise ModelFileError(f"{path}: the members' weights sum to {total:g}; expected 1")
    return config


def load_ensemble_dir(directory: Path, device: torch.device | str | None = None) -> EnsemblePredictor:
    """Load an ensemble written by :func:`save_ensemble`; every member is loaded (and checked) as
    :func:`~automl_tl.results.model_io.load_model_dir` does (each part of a concatenated-feature probe: see
    :func:`~automl_tl.results.concatenated.load_concatenated_dir`), and must have the ensemble's classes and input
    column."""
    directory = Path(directory)
    config = read_ensemble_config(directory)
    members = [
        load_concatenated_dir(directory / member["folder"], device)
        if member.get("kind") == CONCATENATED_FEATURES
        else load_model_dir(directory / member["folder"], device)
        for member in config["members"]
    ]
    first = members[0]
    for member, listed in zip(members, config["members"]):
        if member.classes != first.classes or member.input_column != first.input_column:
            raise ModelFileError(
                f"{directory / listed['folder']}: its classes or input column differ from the first member's"
            )
        if member.backbone.modality != first.backbone.modality:
            raise ModelFileError(
                f"{directory / listed['folder']}: a {member.backbone.modality} model among "
                f"{first.backbone.modality} ones"
            )
    return EnsemblePredictor(members, [member["weight"] for member in config["members"]], config)


class EnsemblePredictor(Predictor):
    """Predicts with the weighted average of its members' class probabilities; otherwise a :class:`Predictor`
    (the same tables, columns and bad-input policy). Each member reads the inputs itself."""

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float], config: dict[str, Any]):
        # (no Predictor.__init__: there is no one model here; what the tables need comes from the members)
        self.members = list(members)
        self.weights = np.asarray(weights, dtype=np.float64)
        # (its temperature divides the averaged probabilities' logarithms before the softmax: Predictor.temperature)
        adopt_predictor_fields(self, self.members[0], config)

    def _probabilities(self, request: PredictionRequest) -> tuple[np.ndarray, list[str]]:
        total: np.ndarray | None = None
        errors: list[str] = []
        # the members that share a body (every frozen-body one of a backbone) embed the inputs once between them
        request = request.sharing_bodies()
        for weight, member in zip(self.weights, self.members):
            probabilities, errors = member._probabilities(request)
            weighted = weight * probabilities.astype(np.float64)
            total = weighted if total is None else total + weighted
        readable = ~np.isnan(total).any(axis=1)
        total[readable] = softmax(log_probabilities(total[readable]), self.temperature)
        return total.astype(np.float32), errors
