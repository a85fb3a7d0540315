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

import json
import logging
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from automl_tl.backbone import InputOptions, TransferModel
from automl_tl.data import (BAD_INPUT_ERROR, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_ON_BAD_INPUT, check_input, input_excerpt,
                            prepare_unlabelled, read_table)
from automl_tl.errors import (AutomlTLError, DataError, EmptyInputError, ModelFileError, UnknownBackboneError,
                              UnreadableInputError)
from automl_tl.executor import default_device, predict_logits
from automl_tl.heads import HeadSpec, build_head
from automl_tl.registry import get_backbone

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BEST_MODEL_DIR = "best_model"
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


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: readers (and a
    process killed mid-write) see the old file or the new one, never half of one."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """:func:`write_text_atomic` for bytes (figures, archives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, suffix=".tmp", delete=False) as file:
        file.write(data)
        temp = Path(file.name)
    with_usual_permissions(temp)
    os.replace(temp, path)


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def with_usual_permissions(path: Path) -> Path:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have (the umask's), not the private
    0600 / 0700 that ``tempfile`` uses: results are files a team shares and serves."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)
    return path


def save_model(model: TransferModel, directory: Path, config: dict[str, Any]) -> None:
    """Save weights and config into ``directory``, replacing what was there only once both are written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = with_usual_permissions(Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent)))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(staging / WEIGHTS_FILE))
    (staging / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2, default=str))
    with_usual_permissions(staging / WEIGHTS_FILE)  # safetensors writes it private (0600)
    old = directory.with_name(f".{directory.name}-old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def repair_interrupted_save(directory: Path) -> None:
    """Undo what a process killed inside :func:`save_model` left beside ``directory``.

    Killed between its two renames, it leaves no ``directory`` but the complete previous model in
    ``.NAME-old``: that one is put back. Half-written staging folders (``.NAME-*``) are deleted, so
    kills never fill the disk. Call it where no other process saves into ``directory`` at the same time
    (the search holds its best-model lock).
    """
    directory = Path(directory)
    old = directory.with_name(f".{directory.name}-old")
    if not directory.exists() and (old / WEIGHTS_FILE).is_file() and (old / CONFIG_FILE).is_file():
        os.replace(old, directory)
    if directory.parent.is_dir():
        for leftover in directory.parent.glob(f".{directory.name}-*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)


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
    classes = config["classes"]
    if len(classes) < 2 or len({json.dumps(c, sort_keys=True) for c in classes}) != len(classes):
        raise ModelFileError(f"{path}: field 'classes' holds {len(classes)} class(es) "
                             f"({', '.join(map(repr, classes[:5]))}); expected at least 2 distinct classes")
    known = {f.name for f in fields(InputOptions)}
    for key, value in config["input_options"].items():
        # bool is an int to Python, but no input size is a yes/no
        if key not in known or not (value is None or isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ModelFileError(f"{path}: field 'input_options' holds {key!r}: {value!r}; expected "
                                 f"{', '.join(sorted(known))}, each a number or null")
    return config


def _check_state(state: Mapping[str, torch.Tensor], model: TransferModel, weights: Path, what: str) -> None:
    """Refuse tensors that do not fit ``model`` exactly: names missing or unexpected, another shape or kind.

    ``what`` says what the config asked for (backbone, classes, head), so the message tells which side to fix.
    A few names of each problem are given: a foreign file can miss hundreds of tensors.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing ({some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({some(unexpected)})")
    for name, want in expected.items():
        got = state.get(name)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"tensor {name} has shape {list(got.shape)}, expected {list(want.shape)}")
        elif want.is_floating_point() and not got.is_floating_point():
            problems.append(f"tensor {name} holds {got.dtype}, expected floating point")
        if len(problems) >= 3:
            break
    if problems:
        raise ModelFileError(f"{weights} does not match its {CONFIG_FILE} ({what}): {'; '.join(problems[:3])}")


class Predictor:
    """A fine-tuned model ready to predict; get one with :func:`load`."""

    def __init__(self, model: TransferModel, config: dict[str, Any], device: torch.device | None = None):
        self.config = config
        self.classes: list[Any] = config["classes"]
        self.input_column: str = config.get("input_column", "image")
        self.label_column: str | None = config.get("label_column")  # models saved before it was recorded lack it
        self.backbone = get_backbone(config["backbone"]["name"])
        self.preprocessor = self.backbone.preprocessor(InputOptions(**config["input_options"]))
        self.device = device or default_device()
        self.model = model.to(self.device).eval()

    def read_inputs(self, data: Any) -> list[Any]:
        """The raw inputs of ``data`` (see :meth:`predict_proba`), checked against what the model was trained on.

        Columns other than the input column are ignored, except the training label column: a class in it that
        the model never learnt is refused (see :func:`~automl_tl.data.prepare_unlabelled`). No input at all
        (an empty list or DataFrame, a table of a header alone) is refused with
        :class:`~automl_tl.errors.EmptyInputError`, a ``ValueError`` as in scikit-learn.
        """
        inputs = prepare_unlabelled(data, self.input_column, self.backbone.modality,
                                    label_column=self.label_column, classes=self.classes)
        if not inputs:
            raise EmptyInputError(f"no inputs to predict on: {_origin(data)} holds none; expected at least one")
        return inputs

    def predict_table(self, data: Any, batch_size: int = 64, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                      on_bad_input: str = DEFAULT_ON_BAD_INPUT,
                      keep_columns: list[str] | None = None) -> pd.DataFrame:
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
        probabilities, errors = self._probabilities(inputs, batch_size, max_image_pixels, on_bad_input)
        table = pd.DataFrame(probabilities, columns=probability_columns(self.classes))
        table.insert(0, PREDICTION_COLUMN, pd.Series(self._labels(probabilities), dtype=object))
        # which file (or text) each row is about, as given; an array or an unreadable text file is named, not shown
        written = inputs if given is None else list(given[self.input_column])
        shown = pd.Series([value if isinstance(value, str) else input_excerpt(value) for value in written], dtype=object)
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
                raise DataError(f"--keep-columns (keep_columns=) names {unknown[0]!r}, which is not a column of "
                                f"{_origin(data)}; its columns: {', '.join(columns)}")
        kept = [c for c, name in zip(frame.columns, columns)
                if name == self.input_column or keep_columns is None or name in keep_columns]
        added = {PREDICTION_COLUMN, ERROR_COLUMN, *probability_columns(self.classes)}
        clash = next((str(c) for c in kept if str(c) in added), None)
        if clash is not None:
            raise DataError(f"column {clash!r} of {_origin(data)} has the name of a column predict writes "
                            f"({PREDICTION_COLUMN}, {PROBABILITY_PREFIX}CLASS, {ERROR_COLUMN}); rename it, or leave "
                            "it out with --keep-columns (keep_columns= in Python)")
        return frame[kept].reset_index(drop=True)

    def predict_proba(self, data: Any, batch_size: int = 64,
                      max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> pd.DataFrame:
        """Class probabilities, one row per input and one column per class (NaN for an input that cannot be
        read: see :meth:`predict_table`, which also says why).

        ``data``: a DataFrame or table file with the training input column, a folder of files, or a list of
        inputs (image paths or arrays, audio paths, or texts); none at all raises
        :class:`~automl_tl.errors.EmptyInputError` (see :meth:`read_inputs`).
        """
        probabilities, _ = self._probabilities(self.read_inputs(data), batch_size, max_image_pixels,
                                               DEFAULT_ON_BAD_INPUT)
        return pd.DataFrame(probabilities, columns=[str(c) for c in self.classes])

    def predict(self, data: Any, batch_size: int = 64,
                max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        """The most probable class of each input, as the labels were given in training (None for an input
        that cannot be read)."""
        return self._labels(self.predict_proba(data, batch_size, max_image_pixels).to_numpy())

    def _labels(self, probabilities: np.ndarray) -> np.ndarray:
        """The class of each row of ``probabilities``; None where the row is NaN (its input was unreadable)."""
        labels = np.empty(len(probabilities), dtype=object)
        readable = ~np.isnan(probabilities).any(axis=1)
        labels[readable] = np.array(self.classes, dtype=object)[probabilities[readable].argmax(axis=1)]
        return labels

    def _probabilities(self, inputs: list[Any], batch_size: int, max_image_pixels: int | None,
                       on_bad_input: str) -> tuple[np.ndarray, list[str]]:
        """Probabilities (NaN rows for inputs that cannot be read) and each row's error ("" when none)."""
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
            raise DataError(f"none of the {len(inputs)} inputs can be read, so nothing was predicted; "
                            f"the first: {first}")
        if failed:
            logger.warning("%d of %d inputs cannot be read and have no prediction (their reason is in the 'error' "
                           "column), the first: %s", failed, len(inputs), first)
        probabilities = np.full((len(inputs), len(self.classes)), np.nan, dtype=np.float32)
        if items:
            order = sorted(items)
            logits = predict_logits(self.model, self.preprocessor, [items[i] for i in order], batch_size, self.device)
            probabilities[order] = torch.softmax(logits, dim=1).numpy()
        return probabilities, errors


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
    try:
        state = load_file(str(weights))  # safetensors: plain tensors, no code is executed
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} is not a valid safetensors file: {exc}") from None
    try:
        backbone = get_backbone(config["backbone"]["name"])
    except UnknownBackboneError as exc:  # say which file names it: the registry alone cannot
        close = f" (close names: {', '.join(exc.close_matches)})" if exc.close_matches else ""
        raise ModelFileError(f"{config_path} names backbone {exc.name!r}, which no installed plugin registers{close}; "
                             "install the plugin the model was trained with") from None
    n_classes = len(config["classes"])
    model = backbone.build(num_classes=n_classes, pretrained=False)
    try:
        head = HeadSpec.from_dict(config.get("head"))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{config_path}: field 'head' is not a valid head: {exc}") from None
    if head.kind != "linear":
        model.head = build_head(head, backbone.embedding_dim, n_classes)
    _check_state(state, model, weights, f"{backbone.name}, {n_classes} classes, {head.kind} head")
    model.load_state_dict(state, strict=True)  # cannot fail now: names and shapes were checked
    try:
        predictor = Predictor(model, config, device)
    except (TypeError, ValueError) as exc:  # input options the backbone's preprocessor refuses
        raise ModelFileError(f"{config_path}: field 'input_options' does not suit {backbone.name}: {exc}") from None
    saved = config["preprocessing"]
    if predictor.preprocessor.describe() != saved:
        raise ModelFileError(f"{config_path}: the installed backbone {config['backbone']['name']!r} now "
                             f"prepares inputs differently from when the model was saved")
    return predictor


def model_dir_of(run_dir: Path) -> Path:
    """Where the model of ``run_dir`` is: ``RUN_DIR/best_model`` for a search's run directory, else the
    directory itself (a saved model directory given directly)."""
    return run_dir / BEST_MODEL_DIR if (run_dir / BEST_MODEL_DIR).is_dir() else run_dir


def load(run_dir: str | Path, device: torch.device | str | None = None) -> Predictor:
    """The best model of a search (``RUN_DIR/best_model``), or a model directory itself, ready to predict."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AutomlTLError(f"run directory not found: {run_dir}")
    return load_model_dir(model_dir_of(run_dir), device)
