"""The saved model on disk, and loading it back to predict.

A model directory holds ``model.safetensors`` (weights only: loading runs no code from it)
and ``config.json`` (backbone, weight source, classes, preprocessing, the trial that made
it, its metrics). It is written to a temporary folder first and renamed into place, so a
crash never leaves half a model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from automl_tl.backbone import InputOptions, TransferModel
from automl_tl.data import prepare_unlabelled
from automl_tl.errors import AutomlTLError, ModelFileError
from automl_tl.executor import default_device, predict_logits
from automl_tl.heads import HeadSpec, build_head
from automl_tl.registry import get_backbone

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BEST_MODEL_DIR = "best_model"
FORMAT_VERSION = 1


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        json.dump(payload, file, indent=2, default=str)
        temp = Path(file.name)
    os.replace(temp, path)


def save_model(model: TransferModel, directory: Path, config: dict[str, Any]) -> None:
    """Save weights and config into ``directory``, replacing what was there only once both are written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(staging / WEIGHTS_FILE))
    (staging / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2, default=str))
    old = directory.with_name(f".{directory.name}-old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def read_model_config(directory: Path) -> dict[str, Any]:
    """The ``config.json`` of a saved model, checked for the fields loading needs."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"no saved model in {directory}: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from None
    expected = {"backbone": dict, "classes": list, "input_options": dict, "preprocessing": dict}
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} holds a {type(config).__name__}; expected a JSON object")
    for key, kind in expected.items():
        if not isinstance(config.get(key), kind):
            raise ModelFileError(f"{path} lacks the field {key!r} (a JSON {'object' if kind is dict else 'array'})")
    if not isinstance(config["backbone"].get("name"), str):
        raise ModelFileError(f"{path}: field 'backbone' lacks the backbone's 'name'")
    return config


class Predictor:
    """A fine-tuned model ready to predict; get one with :func:`load`."""

    def __init__(self, model: TransferModel, config: dict[str, Any], device: torch.device | None = None):
        self.config = config
        self.classes: list[Any] = config["classes"]
        self.input_column: str = config.get("input_column", "image")
        self.backbone = get_backbone(config["backbone"]["name"])
        self.preprocessor = self.backbone.preprocessor(InputOptions(**config["input_options"]))
        self.device = device or default_device()
        self.model = model.to(self.device).eval()

    def predict_proba(self, data: Any, batch_size: int = 64) -> pd.DataFrame:
        """Class probabilities, one row per input and one column per class.

        ``data``: a DataFrame or CSV with the training input column, a folder of files, or a list of inputs
        (image paths or arrays, audio paths, or texts).
        """
        inputs = prepare_unlabelled(data, self.input_column, self.backbone.modality)
        items = self.preprocessor.encode(inputs)
        logits = predict_logits(self.model, self.preprocessor, items, batch_size, self.device)
        return pd.DataFrame(torch.softmax(logits, dim=1).numpy(), columns=[str(c) for c in self.classes])

    def predict(self, data: Any, batch_size: int = 64) -> np.ndarray:
        """The most probable class of each input, as the labels were given in training."""
        probabilities = self.predict_proba(data, batch_size).to_numpy()
        return np.array(self.classes, dtype=object)[probabilities.argmax(axis=1)]


def load_model_dir(directory: Path, device: torch.device | None = None) -> Predictor:
    """Load a model directory written by :func:`save_model`; refuses anything that does not match its config."""
    directory = Path(directory)
    config = read_model_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"no saved model in {directory}: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights))  # safetensors: plain tensors, no code is executed
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a valid safetensors file: {exc}") from None
    backbone = get_backbone(config["backbone"]["name"])
    model = backbone.build(num_classes=len(config["classes"]), pretrained=False)
    try:
        head = HeadSpec.from_dict(config.get("head"))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{directory / CONFIG_FILE}: field 'head' is not a valid head: {exc}") from None
    if head.kind != "linear":
        model.head = build_head(head, backbone.embedding_dim, len(config["classes"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelFileError(f"{weights} does not match its config ({config['backbone']['name']}, "
                             f"{len(config['classes'])} classes): {first_line}") from None
    predictor = Predictor(model, config, device)
    saved = config["preprocessing"]
    if predictor.preprocessor.describe() != saved:
        raise ModelFileError(f"{directory / CONFIG_FILE}: the installed backbone {config['backbone']['name']!r} now "
                             f"prepares inputs differently from when the model was saved")
    return predictor


def load(run_dir: str | Path, device: torch.device | str | None = None) -> Predictor:
    """The best model of a search (``RUN_DIR/best_model``), or a model directory itself, ready to predict."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AutomlTLError(f"run directory not found: {run_dir}")
    directory = run_dir / BEST_MODEL_DIR if (run_dir / BEST_MODEL_DIR).is_dir() else run_dir
    return load_model_dir(directory, torch.device(device) if device is not None else None)
