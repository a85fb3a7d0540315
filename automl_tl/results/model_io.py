"""The saved model on disk, and loading it back to predict.

A model directory holds ``model.safetensors`` (weights only: loading runs no code from it)
and ``config.json`` (backbone, weight source, classes, preprocessing, the trial that made
it, its metrics). It is written to a temporary folder first and renamed into place, so a
crash never leaves half a model behind.

Loading reads those two files and nothing else: no pickle is ever unpickled and no other
file in the directory (``model.pt``, ``pytorch_model.bin``, ...) is opened, even when
``model.safetensors`` is missing. A directory that was tampered with (missing file, wrong
tensor names or shapes, a config that disagrees with the weights) is refused with one
:class:`~automl_tl.errors.ModelFileError` line naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from automl_tl.backbone import Backbone
from automl_tl.data.bundle import prepare_unlabelled
from automl_tl.data.readers import check_input, input_excerpt, read_table
from automl_tl.errors import (
    DataError,
    EmptyInputError,
    ModelFileError,
    UnknownBackboneError,
    UnreadableInputError,
)
from automl_tl.files import with_usual_permissions
from automl_tl.heads import ALL_HEAD_KINDS, MAX_HIDDEN, HeadSpec, head_shapes
from automl_tl.inputs import InputOptions
from automl_tl.layout import BEST_MODEL_DIR, CONFIG_FILE, WEIGHTS_FILE
from automl_tl.options import (
    BAD_INPUT_ERROR,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_ON_BAD_INPUT,
    IMAGE_SIZE_RANGE,
    MAX_CLIP_SECONDS,
    MAX_LENGTH_RANGE,
)
from automl_tl.registry import get_backbone
from automl_tl.results.calibration import TEMPERATURE_RANGE, check_temperature
from automl_tl.train.device import default_device, on_device
from automl_tl.train.executor import predict_logits
from automl_tl.train.feature_cache import compute_features
from automl_tl.train.head_modules import build_head
from automl_tl.transfer_model import TransferModel
from automl_tl.weights import TensorSpec, compare_state, expected_specs

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: the columns a predictions table adds after the input's own: the class, one probability per class, why not
PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "proba:"
ERROR_COLUMN = "error"


def probability_columns(classes: list[Any]) -> list[str]:
    """The probability columns of a predictions table, ``proba:CLASS``: the prefix keeps them apart from the
    input's columns and from ``prediction`` and ``error``, whatever the classes are called. Classes whose text
    is the same (``1`` and ``"1"``) are told apart by their Python spelling (``proba:1``, ``proba:'1'``)."""
    names = [f"{PROBABILITY_PREFIX}{c}" for c in classes]
    if len(set(names)) < len(names):
        names = [f"{PROBABILITY_PREFIX}{c!r}" for c in classes]
    return names


def _origin(data: Any) -> str:
    """How a message names what was given to predict on."""
    if isinstance(data, (str, Path)):
        return str(data)
    return "the DataFrame" if isinstance(data, pd.DataFrame) else f"the {type(data).__name__} of inputs"


def save_model(model: TransferModel, directory: Path, config: dict[str, Any]) -> None:
    """Save weights and config into ``directory``, replacing what was there only once both are written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = with_usual_permissions(Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent)))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(staging / WEIGHTS_FILE))
    (staging / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2, default=str))
    with_usual_permissions(staging / WEIGHTS_FILE)  # safetensors writes it private (0600)
    replace_directory(staging, directory)


def replace_directory(staging: Path, directory: Path) -> None:
    """Put the complete folder ``staging`` in the place of ``directory`` (two renames: the old one is kept
    as ``.NAME-old`` until the new one is in place; see :func:`repair_interrupted_save`)."""
    old = directory.with_name(f".{directory.name}-old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def repair_interrupted_save(directory: Path, marker_files: tuple[str, ...] = (WEIGHTS_FILE, CONFIG_FILE)) -> None:
    """Undo what a process killed inside :func:`save_model` (or any :func:`replace_directory`) left beside
    ``directory``.

    Killed between its two renames, it leaves no ``directory`` but the complete previous one in
    ``.NAME-old`` (complete: it holds ``marker_files``): that one is put back. Half-written staging folders
    (``.NAME-*``) are deleted, so kills never fill the disk. Call it where no other process saves into
    ``directory`` at the same time (the search holds its best-model lock).
    """
    directory = Path(directory)
    old = directory.with_name(f".{directory.name}-old")
    if not directory.exists() and all((old / name).is_file() for name in marker_files):
        os.replace(old, directory)
    if directory.parent.is_dir():
        for leftover in directory.parent.glob(f".{directory.name}-*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)


#: a config.json larger than this is refused unread (a real one is a few kB, a few MB with 100,000 classes)
MAX_CONFIG_BYTES = 64 * 2**20
#: the most classes a saved model may have (ImageNet-21k has 21,841); a tampered config.json once listed 10**6
MAX_CLASSES = 100_000
#: the longest backbone name or column name taken from a config.json
MAX_NAME_LENGTH = 1000


def read_model_config(directory: Path) -> dict[str, Any]:
    """The ``config.json`` of a saved model, checked against its schema (see :func:`check_model_config`)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"no saved model in {directory}: {CONFIG_FILE} is missing")
    config = read_bounded_json(path)
    check_model_config(config, path)
    return config


def read_bounded_json(path: Path) -> Any:
    """The JSON in ``path``, refused (:class:`~automl_tl.errors.ModelFileError`) unread when larger than
    :data:`MAX_CONFIG_BYTES`, or when it is not JSON."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a model's config may be")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from None


def adopt_predictor_fields(composite: Any, first: "Predictor", config: dict[str, Any]) -> None:
    """Give a predictor made of others (an ensemble, a concatenated-feature probe; no one model, so no
    ``Predictor.__init__``) its ``config`` and what the predictions table and the inputs need, from its first
    part: the classes, the columns, the backbone (its modality reads the inputs; every part has the same) and the
    device; and the temperature its config holds (1 when none)."""
    composite.config = config
    composite.classes = first.classes
    composite.input_column = first.input_column
    composite.label_column = first.label_column
    composite.backbone = first.backbone
    composite.device = first.device
    composite.temperature = float(config.get("temperature", 1.0))


def read_versioned_json(path: Path, version: int, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (read as :func:`read_bounded_json`), refused unless its ``format_version`` is
    ``version``, the only format of ``what`` ("ensemble", ...) this version reads."""
    config = read_bounded_json(path)
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} holds a {type(config).__name__}; expected a JSON object")
    found = config.get("format_version")
    if isinstance(found, bool) or found != version:
        raise ModelFileError(
            f"{path}: field 'format_version' is {found!r}; expected {version} (the only {what} format this "
            "version of automl_tl reads)"
        )
    return config


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut short: a tampered field can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_number(path: Path, subject: str, value: Any, whole: bool, low: float, high: float, unit: str = "") -> None:
    """Refuse ``value`` unless it is a number (a whole one if ``whole``; never a bool) in [low, high].

    ``subject`` names the field and its value in the message ("field 'head.hidden' is 2.5"); ``unit`` follows
    the bounds."""
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise ModelFileError(f"{path}: {subject}; expected {kind}")
    if not value >= low:  # (NaN fails this too)
        raise ModelFileError(f"{path}: {subject}; expected at least {low:g}{unit}")
    if not value <= high:
        raise ModelFileError(f"{path}: {subject}; expected at most {high:g}{unit}")


def check_model_config(config: Any, path: Path) -> None:
    """Refuse a saved model's config that is not what :func:`save_model` writes (one
    :class:`~automl_tl.errors.ModelFileError` line naming the field): checked before anything is built from it,
    so that a tampered size (10**6 classes, an MLP head 10**12 wide, 10**6-pixel images) is refused, not
    allocated.

    The schema: ``format_version`` :data:`FORMAT_VERSION`; ``backbone`` an object with a ``name``; ``classes``
    from 2 to :data:`MAX_CLASSES` distinct strings or numbers; ``input_options`` the fields of
    :class:`~automl_tl.inputs.InputOptions`, each null or within the search's bounds; ``preprocessing`` an
    object; ``head`` (optional) the fields of :class:`~automl_tl.heads.HeadSpec`; ``input_column`` a string and
    ``label_column`` a string or null, where present. Bool is never taken for a number.
    """
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} holds a {type(config).__name__}; expected a JSON object")
    # the version first, where there is one: another format's fields may differ, and that is the news
    version = config.get("format_version")
    if "format_version" in config and (
        isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION
    ):
        raise ModelFileError(
            f"{path}: field 'format_version' is {_shown(version)}; expected {FORMAT_VERSION} (the "
            "only format this version of automl_tl reads; a newer one may have saved the model)"
        )
    expected = {"backbone": dict, "classes": list, "input_options": dict, "preprocessing": dict}
    for key, kind in expected.items():
        what = "object" if kind is dict else "array"
        if key not in config:
            raise ModelFileError(f"{path} lacks the field {key!r} (a JSON {what})")
        if not isinstance(config[key], kind):
            raise ModelFileError(f"{path}: field {key!r} is {_shown(config[key])}; expected a JSON {what}")
    if "format_version" not in config:
        raise ModelFileError(f"{path} lacks the field 'format_version' (expected {FORMAT_VERSION})")
    name = config["backbone"].get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ModelFileError(
            f"{path}: field 'backbone.name' is {_shown(name)}; expected the backbone's name (a string)"
        )
    _check_classes(config["classes"], path)
    _check_input_options(config["input_options"], path)
    if config.get("head") is not None:
        _check_head(config["head"], path)
    if "temperature" in config and not check_temperature(config["temperature"]):
        raise ModelFileError(
            f"{path}: field 'temperature' is {_shown(config['temperature'])}; expected a number from "
            f"{TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g}"
        )
    for key, optional in (("input_column", False), ("label_column", True)):
        if key not in config or (optional and config[key] is None):
            continue
        value = config[key]
        if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
            raise ModelFileError(
                f"{path}: field {key!r} is {_shown(value)}; expected a column name (a string"
                f"{' or null' if optional else ''})"
            )


def _check_classes(classes: list[Any], path: Path) -> None:
    if len(classes) > MAX_CLASSES:
        raise ModelFileError(f"{path}: field 'classes' holds {len(classes)} classes; expected at most {MAX_CLASSES}")
    for value in classes:
        # a label as the training data gave it: a string, a number or a yes/no (a bool is a fine label)
        finite = not isinstance(value, float) or math.isfinite(value)
        if not isinstance(value, (str, int, float)) or not finite or isinstance(value, str) and len(value) > 10_000:
            raise ModelFileError(
                f"{path}: field 'classes' holds {_shown(value)}; expected each class a string or "
                "a number (a finite one), as the training labels were"
            )
    if len(classes) < 2 or len({json.dumps(c) for c in classes}) != len(classes):
        raise ModelFileError(
            f"{path}: field 'classes' holds {len(classes)} class(es) "
            f"({', '.join(map(_shown, classes[:5]))}); expected at least 2 distinct classes"
        )


#: each input option's bounds: (whole number?, low, high, unit), as the search takes them (see automl_tl.config)
_INPUT_OPTION_BOUNDS = {
    "image_size": (True, IMAGE_SIZE_RANGE[0], IMAGE_SIZE_RANGE[1], " pixels"),
    "max_length": (True, MAX_LENGTH_RANGE[0], MAX_LENGTH_RANGE[1], " tokens"),
    "clip_seconds": (False, 1e-3, MAX_CLIP_SECONDS, " seconds"),
}


def _check_input_options(options: dict[str, Any], path: Path) -> None:
    known = {f.name for f in fields(InputOptions)}
    for key, value in options.items():
        # bool is an int to Python, but no input size is a yes/no
        if key not in known or not (value is None or isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ModelFileError(
                f"{path}: field 'input_options' holds {_shown(key)}: {_shown(value)}; expected "
                f"{', '.join(sorted(known))}, each a number or null"
            )
        if value is not None:
            whole, low, high, unit = _INPUT_OPTION_BOUNDS[key]
            _check_number(path, f"field 'input_options' holds {key!r}: {_shown(value)}", value, whole, low, high, unit)


def _check_head(head: Any, path: Path) -> None:
    if not isinstance(head, dict):
        raise ModelFileError(f"{path}: field 'head' is {_shown(head)}; expected a JSON object (kind, hidden, dropout)")
    known = [f.name for f in fields(HeadSpec)]
    unknown = [key for key in head if key not in known]
    if unknown:
        raise ModelFileError(
            f"{path}: field 'head' holds an unknown key {_shown(unknown[0])}; expected {', '.join(known)}"
        )
    kind = head.get("kind", HeadSpec.kind)
    if not isinstance(kind, str) or kind not in ALL_HEAD_KINDS:
        raise ModelFileError(
            f"{path}: field 'head.kind' is {_shown(kind)}; expected one of {', '.join(ALL_HEAD_KINDS)}"
        )
    if "hidden" in head:
        _check_number(
            path, f"field 'head.hidden' is {_shown(head['hidden'])}", head["hidden"], True, 1, MAX_HIDDEN, " units"
        )
    if "dropout" in head:
        dropout = head["dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ModelFileError(f"{path}: field 'head.dropout' is {_shown(dropout)}; expected a number in [0, 1)")


def read_weights_header(weights: Path) -> dict[str, TensorSpec]:
    """Each tensor's shape and dtype name (safetensors', e.g. ``F32``) in ``weights``, by name, from the file's
    header alone: no tensor is read. Refused (:class:`~automl_tl.errors.ModelFileError`) when the file is not a
    valid safetensors file (safetensors checks that the header's offsets cover the file exactly)."""
    try:
        with safe_open(str(weights), framework="pt") as file:
            return {
                name: (tuple(file.get_slice(name).get_shape()), file.get_slice(name).get_dtype())
                for name in file.keys()
            }
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a valid safetensors file: {exc}") from None


def _check_head_in_header(
    header: Mapping[str, TensorSpec], head: HeadSpec, embedding_dim: int, n_classes: int, weights: Path, what: str
) -> None:
    """Refuse, before anything is built, weights whose head tensors are not those the config implies, and tensors
    that belong to neither body nor head: building a head from a tampered config could allocate gigabytes."""
    expected = {f"head.{name}": (shape, True) for name, shape in head_shapes(head, embedding_dim, n_classes).items()}
    found = {name: value for name, value in header.items() if name.startswith("head.")}
    unexpected = [name for name in header if name not in expected and not name.startswith("body.")]
    mismatch = compare_state(expected, found, unexpected)
    if mismatch:
        raise ModelFileError(f"{weights} does not match its {CONFIG_FILE} ({what}): {'; '.join(mismatch.problems())}")


class Predictor:
    """A fine-tuned model ready to predict; get one with :func:`load`."""

    def __init__(
        self,
        model: TransferModel,
        config: dict[str, Any],
        device: torch.device | None = None,
        backbone: Backbone | None = None,
    ):
        """``backbone``: the registered backbone ``config`` names, when the caller has already resolved it."""
        self.config = config
        self.classes: list[Any] = config["classes"]
        self.input_column: str = config.get("input_column", "image")
        self.label_column: str | None = config.get("label_column")  # models saved before it was recorded lack it
        self.backbone = backbone if backbone is not None else get_backbone(config["backbone"]["name"])
        self.preprocessor = self.backbone.preprocessor(InputOptions(**config["input_options"]))
        self.device = device or default_device()
        self.model = on_device(model, self.device).eval()
        #: the logits are divided by it before the softmax (temperature scaling fitted on validation; 1: none)
        self.temperature = float(config.get("temperature", 1.0))

    def read_inputs(self, data: Any) -> list[Any]:
        """The raw inputs of ``data`` (see :meth:`predict_proba`), checked against what the model was trained on.

        Columns other than the input column are ignored, except the training label column: a class in it that
        the model never learnt is refused (see :func:`~automl_tl.data.bundle.prepare_unlabelled`). No input at all
        (an empty list or DataFrame, a table of a header alone) is refused with
        :class:`~automl_tl.errors.EmptyInputError`, a ``ValueError`` as in scikit-learn.
        """
        inputs = prepare_unlabelled(
            data, self.input_column, self.backbone.modality, label_column=self.label_column, classes=self.classes
        )
        if not inputs:
            raise EmptyInputError(f"no inputs to predict on: {_origin(data)} holds none; expected at least one")
        return inputs

    def predict_table(
        self,
        data: Any,
        batch_size: int = 64,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        on_bad_input: str = DEFAULT_ON_BAD_INPUT,
        keep_columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """One row per input, in order: the input's own columns (of a table or DataFrame; the file or text
        of a folder or list), ``prediction``, one ``proba:CLASS`` column per class (see
        :func:`probability_columns`), and ``error``.

        The input's columns are copied as given, relative paths included, so that the table joins back to
        the input. ``keep_columns`` copies only those (the input column always); None: every one. A column
        named like one this table adds is refused (:class:`~automl_tl.errors.DataError`): rename it or
        leave it out.

        An input that cannot be read (missing, corrupt, larger than ``max_image_pixels``, empty...) keeps its
        row, with no prediction, NaN probabilities and the reason in ``error`` (empty for the others); one
        warning counts them. Refused (:class:`~automl_tl.errors.DataError`, one line) when no input can be
        read, or with ``on_bad_input`` "error" at the first that cannot.
        """
        inputs = self.read_inputs(data)
        given = self._kept_columns(data, keep_columns)
        probabilities, errors = self._probabilities(
            PredictionRequest(inputs, batch_size, max_image_pixels, on_bad_input)
        )
        table = pd.DataFrame(probabilities, columns=probability_columns(self.classes))
        table.insert(0, PREDICTION_COLUMN, pd.Series(self._labels(probabilities), dtype=object))
        # which file (or text) each row is about, as given; an array or an unreadable text file is named, not shown
        written = inputs if given is None else list(given[self.input_column])
        shown = pd.Series(
            [value if isinstance(value, str) else input_excerpt(value) for value in written], dtype=object
        )
        if given is None:
            table.insert(0, self.input_column, shown)
        else:
            for position, column in enumerate(given.columns):
                table.insert(position, column, shown if column == self.input_column else given[column].to_numpy())
        table[ERROR_COLUMN] = errors
        return table

    def _kept_columns(self, data: Any, keep_columns: list[str] | None) -> pd.DataFrame | None:
        """The columns of the table ``data`` that a predictions table copies (see :meth:`predict_table`);
        None when ``data`` is no table (a folder, a list of inputs)."""
        if isinstance(data, pd.DataFrame):
            frame = data
        elif isinstance(data, (str, Path)) and not Path(data).is_dir():
            frame = read_table(Path(data))  # read again, as written: read_inputs resolved its relative paths
        else:
            if keep_columns:
                raise DataError(f"--keep-columns (keep_columns=) names columns, but {_origin(data)} is no table")
            return None
        columns = [str(c) for c in frame.columns]
        if keep_columns is not None:
            unknown = [c for c in keep_columns if c not in columns]
            if unknown:
                raise DataError(
                    f"--keep-columns (keep_columns=) names {unknown[0]!r}, which is not a column of "
                    f"{_origin(data)}; its columns: {', '.join(columns)}"
                )
        kept = [
            c
            for c, name in zip(frame.columns, columns)
            if name == self.input_column or keep_columns is None or name in keep_columns
        ]
        added = {PREDICTION_COLUMN, ERROR_COLUMN, *probability_columns(self.classes)}
        clash = next((str(c) for c in kept if str(c) in added), None)
        if clash is not None:
            raise DataError(
                f"column {clash!r} of {_origin(data)} has the name of a column predict writes "
                f"({PREDICTION_COLUMN}, {PROBABILITY_PREFIX}CLASS, {ERROR_COLUMN}); rename it, or leave "
                "it out with --keep-columns (keep_columns= in Python)"
            )
        return frame[kept].reset_index(drop=True)

    def predict_proba(
        self, data: Any, batch_size: int = 64, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    ) -> pd.DataFrame:
        """Class probabilities, one row per input and one column per class (NaN for an input that cannot be
        read: see :meth:`predict_table`, which also says why).

        ``data``: a DataFrame or table file with the training input column, a folder of files, or a list of
        inputs (image paths or arrays, audio paths, or texts); none at all raises
        :class:`~automl_tl.errors.EmptyInputError` (see :meth:`read_inputs`).
        """
        probabilities, _ = self._probabilities(
            PredictionRequest(self.read_inputs(data), batch_size, max_image_pixels, DEFAULT_ON_BAD_INPUT)
        )
        return pd.DataFrame(probabilities, columns=[str(c) for c in self.classes])

    def predict(
        self, data: Any, batch_size: int = 64, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    ) -> np.ndarray:
        """The most probable class of each input, as the labels were given in training (None for an input
        that cannot be read)."""
        return self._labels(self.predict_proba(data, batch_size, max_image_pixels).to_numpy())

    def _labels(self, probabilities: np.ndarray) -> np.ndarray:
        """The class of each row of ``probabilities``; None where the row is NaN (its input was unreadable)."""
        labels = np.empty(len(probabilities), dtype=object)
        readable = ~np.isnan(probabilities).any(axis=1)
        labels[readable] = np.array(self.classes, dtype=object)[probabilities[readable].argmax(axis=1)]
        return labels

    def _probabilities(self, request: PredictionRequest) -> tuple[np.ndarray, list[str]]:
        """Probabilities of the request's inputs (NaN rows for inputs that cannot be read) and each row's error
        ("" when none)."""
        logits, errors = self._logits(request)
        probabilities = np.full(logits.shape, np.nan, dtype=np.float32)
        readable = ~np.isnan(logits).any(axis=1)
        if readable.any():
            scaled = torch.from_numpy(logits[readable]) / self.temperature
            probabilities[readable] = torch.softmax(scaled, dim=1).numpy()
        return probabilities, errors

    def _logits(self, request: PredictionRequest) -> tuple[np.ndarray, list[str]]:
        """The model's logits of the request's inputs (float32; NaN rows for inputs that cannot be read) and each
        row's error; for a request that shares bodies, the head's on the body's shared embeddings."""
        if request.shares_bodies:
            embeddings, errors = request.embeddings(self)
            return self._head_logits(embeddings), errors
        items, errors = self._readable_items(request.inputs, request.max_image_pixels, request.on_bad_input)
        logits = np.full((len(request.inputs), len(self.classes)), np.nan, dtype=np.float32)
        if items:
            order = sorted(items)
            found = predict_logits(
                self.model, self.preprocessor, [items[i] for i in order], request.batch_size, self.device
            )
            logits[order] = found.float().numpy()
        return logits, errors

    def _embeddings(
        self, inputs: list[Any], batch_size: int, max_image_pixels: int | None, on_bad_input: str
    ) -> tuple[np.ndarray, list[str]]:
        """The body's embeddings of ``inputs`` (float32; NaN rows for inputs that cannot be read) and each row's
        error."""
        items, errors = self._readable_items(inputs, max_image_pixels, on_bad_input)
        embeddings = np.full((len(inputs), self.backbone.embedding_dim), np.nan, dtype=np.float32)
        if items:
            order = sorted(items)
            # (what the search's feature cache computes: the frozen-body heads were trained on these)
            embeddings[order] = compute_features(
                self.backbone,
                self.preprocessor,
                [items[i] for i in order],
                self.device,
                batch_size,
                model=self.model.eval(),
            )
        return embeddings, errors

    @torch.no_grad()
    def _head_logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The head's logits of ``embeddings`` (rows of NaN stay NaN)."""
        logits = np.full((len(embeddings), len(self.classes)), np.nan, dtype=np.float32)
        readable = ~np.isnan(embeddings).any(axis=1)
        if readable.any():
            self.model.eval()
            rows = torch.from_numpy(embeddings[readable]).to(self.device)
            logits[readable] = self.model.head(rows).float().cpu().numpy()
        return logits

    @property
    def body_key(self) -> tuple[str, str, str]:
        """What makes two predictors' embeddings of the same inputs the same: the backbone, its input options
        and a digest of the body's weights and buffers (every frozen-body model of one backbone shares it)."""
        if getattr(self, "_body_key", None) is None:
            digest = hashlib.blake2b(digest_size=16)
            for name, tensor in self.model.body.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            options = json.dumps(self.config["input_options"], sort_keys=True)
            self._body_key = (self.backbone.name, options, digest.hexdigest())
        return self._body_key

    def _readable_items(
        self, inputs: list[Any], max_image_pixels: int | None, on_bad_input: str
    ) -> tuple[dict[int, Any], list[str]]:
        """The encoded inputs that can be read, by position, and each input's error ("" when none); refused
        when none can be read, or with ``on_bad_input`` "error" at the first that cannot."""
        modality = self.backbone.modality
        errors = [""] * len(inputs)
        items: dict[int, Any] = {}
        first: UnreadableInputError | None = None
        for index, value in enumerate(inputs):
            try:
                # the header (size), the file's existence and format, the text: cheap; decoding happens once,
                # in encode, one file at a time so that a truncated one fails alone
                check_input(value, modality, f" (input {index})", max_image_pixels, decode=False)
                if modality != "text":
                    items[index] = self.preprocessor.encode([value])[0]
            except UnreadableInputError as exc:
                if on_bad_input == BAD_INPUT_ERROR:
                    raise
                errors[index] = exc.reason  # (the row's input column names the file)
                first = first or exc
        if modality == "text":
            good = [i for i, error in enumerate(errors) if not error]
            items = dict(zip(good, self.preprocessor.encode([inputs[i] for i in good])))
        failed = sum(1 for error in errors if error)
        if inputs and failed == len(inputs):
            raise DataError(
                f"none of the {len(inputs)} inputs can be read, so nothing was predicted; the first: {first}"
            )
        if failed:
            logger.warning(
                "%d of %d inputs cannot be read and have no prediction (their reason is in the 'error' "
                "column), the first: %s",
                failed,
                len(inputs),
                first,
            )
        return items, errors


class PredictionRequest:
    """One prediction call: its inputs, the batch size, and how inputs that cannot be read are treated.

    A request that :attr:`shares_bodies` (see :meth:`sharing_bodies`) embeds its inputs once per distinct body
    (:attr:`Predictor.body_key`) for every predictor it is passed to: the members of an ensemble and the parts of
    a concatenated-feature probe that share a body (every frozen-body model of one backbone) run it once between
    them, each then applying its own head. A lone predictor runs its whole model instead."""

    def __init__(
        self,
        inputs: list[Any],
        batch_size: int,
        max_image_pixels: int | None,
        on_bad_input: str,
        shares_bodies: bool = False,
    ):
        self.inputs = inputs
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels
        self.on_bad_input = on_bad_input
        self.shares_bodies = shares_bodies
        self._embedded: dict[tuple[str, str, str], tuple[np.ndarray, list[str]]] = {}

    def sharing_bodies(self) -> PredictionRequest:
        """This request, or the same one sharing bodies between the predictors it is passed to."""
        if self.shares_bodies:
            return self
        return PredictionRequest(self.inputs, self.batch_size, self.max_image_pixels, self.on_bad_input, True)

    def embeddings(self, predictor: Predictor) -> tuple[np.ndarray, list[str]]:
        """``predictor``'s body's embeddings of the inputs and each row's error, computed on first request."""
        key = predictor.body_key
        if key not in self._embedded:
            self._embedded[key] = predictor._embeddings(
                self.inputs, self.batch_size, self.max_image_pixels, self.on_bad_input
            )
        return self._embedded[key]


def load_model_dir(directory: Path, device: torch.device | str | None = None) -> Predictor:
    """Load a model directory written by :func:`save_model`; refuses anything that does not match its config.

    Only ``config.json`` and ``model.safetensors`` are read. Any other file, a pickle such as ``model.pt`` or
    ``pytorch_model.bin`` included, is ignored: never opened, and never a fallback for a missing
    ``model.safetensors``. Every refusal is a :class:`~automl_tl.errors.ModelFileError` naming the file.
    """
    directory = Path(directory)
    device = torch.device(device) if isinstance(device, str) else device
    config = read_model_config(directory)
    config_path = directory / CONFIG_FILE
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"no saved model in {directory}: {WEIGHTS_FILE} is missing")
    header = read_weights_header(weights)  # names, shapes and dtypes only: no tensor is read yet
    try:
        backbone = get_backbone(config["backbone"]["name"])
    except UnknownBackboneError as exc:  # say which file names it: the registry alone cannot
        close = f" (close names: {', '.join(exc.close_matches)})" if exc.close_matches else ""
        raise ModelFileError(
            f"{config_path} names backbone {exc.name!r}, which no installed plugin registers{close}; "
            "install the plugin the model was trained with"
        ) from None
    n_classes = len(config["classes"])
    try:
        head = HeadSpec.from_dict(config.get("head"))
    except (TypeError, ValueError) as exc:  # (the schema check leaves nothing for this to find)
        raise ModelFileError(f"{config_path}: field 'head' is not a valid head: {exc}") from None
    what = f"{backbone.name}, {n_classes} classes, {head.kind} head"
    _check_head_in_header(header, head, backbone.embedding_dim, n_classes, weights, what)
    model = backbone.build(num_classes=n_classes, pretrained=False)
    if head.kind != "linear":
        model.head = build_head(head, backbone.embedding_dim, n_classes)
    # the tensors that do not fit the model exactly (names, shapes, floating point), refused before any is read
    mismatch = compare_state(expected_specs(model), header)
    if mismatch:
        raise ModelFileError(f"{weights} does not match its {CONFIG_FILE} ({what}): {'; '.join(mismatch.problems())}")
    try:
        state = load_file(str(weights))  # safetensors: plain tensors, no code is executed
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a valid safetensors file: {exc}") from None
    model.load_state_dict(state, strict=True)  # cannot fail now: names and shapes were checked
    try:
        predictor = Predictor(model, config, device, backbone)
    except (TypeError, ValueError) as exc:  # input options the backbone's preprocessor refuses
        raise ModelFileError(f"{config_path}: field 'input_options' does not suit {backbone.name}: {exc}") from None
    saved = config["preprocessing"]
    if predictor.preprocessor.describe() != saved:
        raise ModelFileError(
            f"{config_path}: the installed backbone {config['backbone']['name']!r} now "
            f"prepares inputs differently from when the model was saved"
        )
    return predictor


def model_dir_of(run_dir: Path) -> Path:
    """Where the model of ``run_dir`` is: ``RUN_DIR/best_model`` for a search's run directory, else the
    directory itself (a saved model directory given directly)."""
    return run_dir / BEST_MODEL_DIR if (run_dir / BEST_MODEL_DIR).is_dir() else run_dir
