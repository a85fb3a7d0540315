"""Exporting a run's best model to the formats other tools load: TorchScript, ONNX, and its backbone's own.

Each export is a folder holding the model file(s), ``export.json`` (the format, the inputs the model
expects with their shapes, dtypes and preprocessing, the classes, how to load it), a ``README.md``
with the same as prose and runnable code, and the run's ``MODEL_CARD.md``.

* ``torchscript`` (``model.pt``) and ``onnx`` (``model.onnx``), the core's formats: the whole model, tensors in,
  logits out, for every modality; the batch dimension (and a text's length) may vary. A backbone may write
  beside them what prepares its raw inputs (:meth:`~automl_tl.backbone.Backbone.write_export_inputs`).
  A kept ensemble exports to these as one graph (:mod:`automl_tl.results.ensemble_graph`): its members on
  the same inputs, the log of their weighted mean probabilities out.
* the native formats a backbone's plugin offers, which its own library loads
  (:meth:`~automl_tl.backbone.Backbone.native_export_formats`): the plugin writes and loads them; this module
  knows no backbone's internals.

Every export is loaded back once it is written and run on a batch it was not traced with; an export
whose logits differ from the original's by more than :data:`CHECK_TOLERANCE` is refused. The folder
is written aside and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from automl_tl.backbone import ExportContext, ExportFiles, NativeExportFormat
from automl_tl.errors import AutomlTLError, ConfigError, first_line
from automl_tl.files import with_usual_permissions, write_json_atomic
from automl_tl.layout import BEST_MODEL_DIR, ENSEMBLE_DIR, EXPORTS_DIR, MODEL_CARD_FILE
from automl_tl.registry import list_backbones
from automl_tl.results.ensemble import EnsemblePredictor, is_ensemble_dir, load_ensemble_dir
from automl_tl.results.ensemble_graph import (
    OUTPUT_DESCRIPTION,
    OUTPUT_MEANING,
    check_shared_inputs,
    describe_members,
    ensemble_module,
    first_model,
)
from automl_tl.results.loading import kept_model_dir
from automl_tl.results.model_card import describe_preprocessing, render_model_card
from automl_tl.results.model_io import Predictor, load_model_dir

logger = logging.getLogger(__name__)

#: the formats of every model, whatever its backbone (a backbone's native formats come before them)
CORE_FORMATS = ("torchscript", "onnx")
EXPORT_INFO_FILE = "export.json"
README_FILE = "README.md"
#: largest max abs difference of logits between an export and the original that is accepted at export time
CHECK_TOLERANCE = 1e-3
#: an ONNX file holds at most 2 GB; larger models keep their weights in a side file
_ONNX_SINGLE_FILE_BYTES = 1_500_000_000

#: the tensor input's name, by modality, for models that take one tensor
_TENSOR_INPUT_NAMES = {"image": "images", "audio": "waveforms"}


def export_model(run_dir: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Export the best model of ``run_dir`` (or a saved model directory) to ``fmt``; return the export folder.

    ``fmt`` is one of :func:`export_formats`. ``output`` is the folder to write (default ``RUN_DIR/exports/FORMAT``);
    an earlier export there is replaced, any other non-empty folder is refused. Raises
    :class:`~automl_tl.errors.AutomlTLError` (one line) for an unknown format, a missing run directory, a
    model the format cannot hold, or an export that does not reproduce the model's logits.
    """
    fmt = str(fmt).lower()
    formats = export_formats()
    if fmt not in formats:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {', '.join(formats)}")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AutomlTLError(f"run directory not found: {run_dir}")
    source = kept_model_dir(run_dir)
    ensemble: EnsemblePredictor | None = None
    if is_ensemble_dir(source):
        if fmt not in CORE_FORMATS:  # (before any member is loaded)
            raise ConfigError(
                f"the {fmt} format holds one model of its library, and {source} is an ensemble: export it "
                f"with --format {_alternatives(CORE_FORMATS)} (one graph), or export one of its members"
            )
        ensemble = load_ensemble_dir(source, device="cpu")
        check_shared_inputs(ensemble, str(source))
        predictor = first_model(ensemble)  # whose inputs the graph takes
    else:
        predictor = load_model_dir(source, device="cpu")
        _check_supported(fmt, predictor)
    target = Path(output) if output is not None else run_dir / EXPORTS_DIR / fmt
    _check_target(target)
    try:  # a read-only folder is refused now, before the export's work
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():  # an earlier export (or an empty folder) there is replaced: it must be writable
            probe, probe_path = tempfile.mkstemp(prefix=".write-test-", dir=target)
            os.close(probe)
            os.unlink(probe_path)
        staging = with_usual_permissions(Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent)))
    except OSError as exc:
        raise AutomlTLError(f"cannot write the export to {target}: {exc.strerror or exc}") from None
    try:
        exporter = _Exporter(predictor, source, staging, target.resolve(), ensemble)
        info = (
            exporter.export_torchscript()
            if fmt == "torchscript"
            else exporter.export_onnx()
            if fmt == "onnx"
            else exporter.export_native(fmt)
        )
        # the logits are the model's own: divided by this, their softmax is what predict_proba gives
        info["temperature"] = (ensemble or predictor).temperature
        info["check"] = {
            "max_abs_diff": exporter.max_abs_diff,
            "examples": exporter.check_examples,
            "tolerance": CHECK_TOLERANCE,
        }
        write_json_atomic(staging / EXPORT_INFO_FILE, info)
        card = _copy_model_card(run_dir, source, staging / MODEL_CARD_FILE)
        (staging / README_FILE).write_text(_readme(info, card))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise AutomlTLError(f"cannot write the export to {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %s to %s (logits within %.1e of the original's)", fmt, target, exporter.max_abs_diff)
    return target


# ---------------------------------------------------------------- checks before any work


def _native_formats() -> dict[str, NativeExportFormat]:
    """The native formats the registered backbones offer, by name (described by the first backbone, by name,
    that offers one); a name of the core's formats is the core's."""
    found: dict[str, NativeExportFormat] = {}
    for backbone in list_backbones():
        for native in backbone.native_export_formats():
            if native.name not in CORE_FORMATS:
                found.setdefault(native.name, native)
    return found


def export_formats() -> tuple[str, ...]:
    """Every format :func:`export_model` knows: the registered backbones' native formats, by name, then the core's."""
    return tuple(sorted(_native_formats())) + CORE_FORMATS


def _check_supported(fmt: str, predictor: Predictor) -> None:
    """Refuse, in one line that names the formats that would work, a model the format cannot hold."""
    if fmt in CORE_FORMATS:
        return
    backbone = predictor.backbone
    native = [item.name for item in backbone.native_export_formats() if item.name not in CORE_FORMATS]
    if fmt in native:
        backbone.check_native_export(fmt, predictor.model, predictor.config)
        return
    modality = backbone.modality
    what = f"{predictor.config['backbone']['name']} is a{'n' if modality[0] in 'aeiou' else ''} {modality} model"
    works = _alternatives((*native, *CORE_FORMATS))
    other = _native_formats()[fmt]  # another backbone's: export_model refused unknown formats
    if other.modality != modality:
        raise ConfigError(
            f"the {fmt} format holds {other.modality} models only; {what}: export it with --format {works}"
        )
    raise ConfigError(
        f"the {fmt} format holds {other.holds} only; {what} {other.outside}: export it with --format {works}"
    )


def _alternatives(formats: tuple[str, ...]) -> str:
    return ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0]


def _check_target(target: Path) -> None:
    if target.is_file():
        raise AutomlTLError(f"export output {target} is a file; expected a folder to write the export into")
    if target.is_dir() and any(target.iterdir()) and not (target / EXPORT_INFO_FILE).is_file():
        raise AutomlTLError(
            f"export output {target} is a non-empty folder that holds no earlier export "
            f"({EXPORT_INFO_FILE}); choose another --output"
        )


def _copy_model_card(run_dir: Path, source: Path, path: Path) -> bool:
    """The run's model card beside the export (written afresh for a single model of a run made before model
    cards existed); whether there is one (an ensemble folder given on its own has none)."""
    card = run_dir / MODEL_CARD_FILE
    if not card.is_file() and run_dir.resolve().name in (BEST_MODEL_DIR, ENSEMBLE_DIR):
        card = run_dir.resolve().parent / MODEL_CARD_FILE  # RUN_DIR/best_model given: the run's card
    if card.is_file():
        shutil.copyfile(card, path)
    elif is_ensemble_dir(source):
        return False
    else:
        path.write_text(render_model_card(run_dir))
    return True


# ---------------------------------------------------------------- inputs


class _TensorInputs(nn.Module):
    """The model with positional tensor inputs, as tracing and ONNX want them (a text model takes a dict)."""

    def __init__(self, model: nn.Module, names: list[str], keyed: bool):
        super().__init__()
        self.model, self.names, self.keyed = model, names, keyed

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)) if self.keyed else tensors[0])


def _raw_examples(modality: str, preprocessing: dict[str, Any], count: int, seed: int) -> list[Any]:
    """``count`` made-up raw inputs of ``modality`` of unequal sizes, which the model's preprocessor prepares."""
    rng = np.random.default_rng(seed)
    if modality == "image":
        return [rng.integers(0, 256, (20 + 7 * i, 24 + 5 * i, 3), dtype=np.uint8) for i in range(count)]
    if modality == "text":
        words = "the model reads a sentence of words about markets sport music science weather and films".split()
        # unequal lengths, so batches are padded and the padding path is what gets traced
        return [" ".join(rng.choice(words, 3 + 6 * i)) for i in range(count)]
    if modality == "audio":
        samples = int(preprocessing.get("clip_samples", 16000))
        waves = [
            torch.from_numpy(rng.normal(0, 0.1, int(samples * (1.5 - 0.6 * i))).astype(np.float32))
            for i in range(count)
        ]
        waves[-1][: len(waves[-1]) // 2] = 0.0  # a silent stretch, which some audio networks treat apart
        return waves
    raise AutomlTLError(f"cannot export a model of modality {modality!r}: no example inputs to trace it with")


def _as_predictor_inputs(raw: list[Any], modality: str, preprocessing: dict[str, Any], scratch: Path) -> list[Any]:
    """``raw`` as a predictor reads inputs: audio waveforms written to float WAV files in ``scratch`` (a predictor
    reads sound from files only; float samples at the model's rate read back unchanged), the rest as they are."""
    if modality != "audio":
        return raw
    import soundfile

    paths = []
    for index, wave in enumerate(raw):
        path = scratch / f"check_{index}.wav"
        soundfile.write(str(path), np.asarray(wave, dtype=np.float32), int(preprocessing["sample_rate"]), "FLOAT")
        paths.append(str(path))
    return paths


def input_spec(predictor: Predictor) -> list[dict[str, Any]]:
    """The export's inputs, in order: name, dtype, shape (named dimensions vary) and how to prepare them."""
    preprocessing = predictor.config["preprocessing"]
    modality = predictor.backbone.modality
    if modality == "image":
        size = preprocessing.get("size")
        return [
            {
                "name": "images",
                "dtype": "float32",
                "shape": ["batch", 3, size, size],
                "description": describe_preprocessing(preprocessing) + "; channels first (RGB)",
            }
        ]
    if modality == "text":
        length = f"sequence <= {preprocessing.get('max_length')}"
        return [
            {
                "name": "input_ids",
                "dtype": "int64",
                "shape": ["batch", length],
                "description": f"token ids of the saved tokenizer (special tokens included), truncated to "
                f"{preprocessing.get('max_length')} tokens, padded on the right to the batch's longest "
                f"text with id {preprocessing.get('pad_token_id')}",
            },
            {
                "name": "attention_mask",
                "dtype": "int64",
                "shape": ["batch", length],
                "description": "1 for each token, 0 for padding",
            },
        ]
    if modality == "audio":
        return [
            {
                "name": "waveforms",
                "dtype": "float32",
                "shape": ["batch", preprocessing.get("clip_samples")],
                "description": describe_preprocessing(preprocessing) + "; amplitudes as floats in [-1, 1]",
            }
        ]
    return [{"name": "inputs", "dtype": "float32", "shape": ["batch", "..."], "description": json.dumps(preprocessing)}]


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Only warnings from these libraries' loggers meanwhile (the ONNX optimiser logs every rewrite at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(max(item.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


# ---------------------------------------------------------------- the exporters


class _Exporter:
    """Writes one export of ``predictor``'s model into ``folder`` (to be renamed to ``final``); of ``ensemble``
    as one graph when given (``predictor`` is then its first model, whose inputs the graph takes)."""

    def __init__(
        self,
        predictor: Predictor,
        model_dir: Path,
        folder: Path,
        final: Path,
        ensemble: EnsemblePredictor | None = None,
    ):
        self.predictor, self.model_dir, self.ensemble = predictor, model_dir, ensemble
        self.model = ensemble_module(ensemble) if ensemble is not None else predictor.model.eval()
        self.config = predictor.config
        #: what the messages call the model exported
        self.name = "the ensemble" if ensemble is not None else self.config["backbone"]["name"]
        self.folder, self.final = folder, final
        self.modality = predictor.backbone.modality
        preprocessing = self.config["preprocessing"]
        prepared = [
            predictor.preprocessor.collate(
                predictor.preprocessor.encode(_raw_examples(self.modality, preprocessing, count, seed)), train=False
            )
            for count, seed in ((2, 0), (3, 1))
        ]
        self.keyed = isinstance(prepared[0], dict)
        self.names = list(prepared[0]) if self.keyed else [_TENSOR_INPUT_NAMES.get(self.modality, "inputs")]
        # traced with one batch, checked on another of another size (and another text length)
        self.trace_inputs, self.check_inputs = [
            tuple(b[n] for n in self.names) if self.keyed else (b,) for b in prepared
        ]
        self.check_examples = len(self.check_inputs[0])
        self.wrapper = _TensorInputs(self.model, self.names, self.keyed).eval()
        with torch.no_grad():
            self.expected = self.wrapper(*self.check_inputs)
        self.max_abs_diff = float("nan")
        if ensemble is not None:
            self._check_graph(ensemble, _raw_examples(self.modality, preprocessing, 3, 1))
        # what the backbone gets to write its own files: the check batch's raw inputs are those of (3, 1) above
        self.context = ExportContext(
            model=self.model,
            config=self.config,
            preprocessor=predictor.preprocessor,
            folder=folder,
            final=final,
            check_raw=_raw_examples(self.modality, preprocessing, 3, 1),
            check_inputs=self.check_inputs,
            check=self._check,
        )

    def _check_graph(self, ensemble: EnsemblePredictor, raw: list[Any]) -> None:
        """Refuse a graph whose probabilities on the check batch are not the ensemble's own predictions."""
        with tempfile.TemporaryDirectory(prefix="automl-tl-check-") as scratch:
            readable = _as_predictor_inputs(raw, self.modality, self.config["preprocessing"], Path(scratch))
            table = pd.DataFrame({ensemble.input_column: readable})
            predicted = ensemble.predict_proba(table, batch_size=len(raw), max_image_pixels=None).to_numpy()
        graph = torch.softmax(self.expected.double() / ensemble.temperature, dim=1).numpy()
        difference = float(np.abs(graph - predicted).max())
        if not difference <= CHECK_TOLERANCE:
            raise AutomlTLError(
                f"the ensemble's graph does not reproduce its predictions: its probabilities differ by up to "
                f"{difference:.2e} (> {CHECK_TOLERANCE:g}); export one of its members instead"
            )

    def _check(self, logits: Any, what: str) -> None:
        got = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
        if tuple(got.shape) != tuple(self.expected.shape):
            raise AutomlTLError(
                f"the {what} export returns logits of shape {list(got.shape)}, expected "
                f"{list(self.expected.shape)}; it does not reproduce the model"
            )
        self.max_abs_diff = float((got.float() - self.expected).abs().max())
        if not self.max_abs_diff <= CHECK_TOLERANCE:
            raise AutomlTLError(
                f"the {what} export does not reproduce the model: its logits differ by up to "
                f"{self.max_abs_diff:.2e} (> {CHECK_TOLERANCE:g}); export it with another --format"
            )

    def _info(self, fmt: str, files: dict[str, str], load_code: str) -> dict[str, Any]:
        backbone = self.config["backbone"]
        info = {
            "format": fmt,
            "files": files,
            "backbone": backbone,
            "modality": self.modality,
            "head": self.config.get("head"),
            "classes": self.config["classes"],
            "inputs": input_spec(self.predictor),
            "output": {
                "name": "logits",
                "dtype": "float32",
                "shape": ["batch", len(self.config["classes"])],
                "description": "one score per class, in the order of 'classes'; softmax gives probabilities",
            },
            "preprocessing": self.config["preprocessing"],
            "load": load_code,
            "source_model": str(self.model_dir.resolve()),
            "folder": str(self.final),
        }
        if self.ensemble is not None:
            # (backbone, head and preprocessing are the first member's: the inputs are prepared as for it)
            info["head"] = None
            info["output"]["description"] = OUTPUT_DESCRIPTION
            info["ensemble"] = {
                "combination": "weighted mean of the members' probabilities",
                "members": describe_members(self.ensemble),
            }
        return info

    def _input_files(self) -> ExportFiles:
        """What the backbone writes beside a whole-model export to prepare raw inputs (nothing by default)."""
        return self.predictor.backbone.write_export_inputs(self.context) or ExportFiles({}, "")

    # ------------------------------------------------------------ the backbone's own formats

    def export_native(self, fmt: str) -> dict[str, Any]:
        written = self.predictor.backbone.write_native_export(fmt, self.context)
        return {**self._info(fmt, written.files, written.code), **written.info}

    # ------------------------------------------------------------ TorchScript

    def export_torchscript(self) -> dict[str, Any]:
        path = self.folder / "model.pt"
        try:
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.export, but still what many runtimes (C++, mobile) load;
                # tracer warnings are about Python values frozen into the graph, which the check below tests
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(self.wrapper, self.trace_inputs, check_trace=False, strict=False)
                traced.save(str(path))
                loaded = torch.jit.load(str(path))
                with torch.no_grad():
                    logits = loaded(*self.check_inputs)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise AutomlTLError(
                f"cannot trace {self.name} to TorchScript: {first_line(exc, 300)}; try --format onnx"
            ) from None
        self._check(logits, "TorchScript")
        inputs = self._input_files()
        code = (
            f"import torch\n{inputs.imports}\nfolder = {str(self.final)!r}\n"
            'model = torch.jit.load(folder + "/model.pt").eval()  # TorchScript holds code: load only files you trust\n'
            + inputs.code
            + f"with torch.no_grad():\n    logits = model({', '.join(self.names)})\n"
        )
        files = {"model.pt": "the whole model as TorchScript: " + ", ".join(self.names) + " -> logits", **inputs.files}
        return self._info("torchscript", files, code)

    # ------------------------------------------------------------ ONNX

    def export_onnx(self) -> dict[str, Any]:
        # torch.onnx's exporter needs onnx and onnxscript; onnxruntime runs the check
        for package in ("onnx", "onnxscript", "onnxruntime"):
            if importlib.util.find_spec(package) is None:
                raise AutomlTLError(f"the ONNX export needs {package}: pip install 'automl-tl[export]'")
        import onnx
        import onnxruntime

        path = self.folder / "model.onnx"
        batch = torch.export.Dim("batch")
        if self.keyed:
            length = torch.export.Dim("sequence", max=int(self.config["preprocessing"].get("max_length", 512)))
            dynamic: tuple[dict[int, Any], ...] = tuple({0: batch, 1: length} for _ in self.names)
        else:
            dynamic = ({0: batch},)
        # one entry per input, inside the tuple of the wrapper's *tensors
        size = sum(p.numel() * p.element_size() for p in self.model.parameters())
        try:
            with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
                warnings.filterwarnings("ignore", message=".*axis name.*")  # about naming dynamic axes only
                # an LSTM's flattened weights, re-set while tracing: the check below tests the result
                warnings.filterwarnings("ignore", message=".*were assigned during export.*")
                warnings.simplefilter("ignore", FutureWarning)  # torch's deprecations inside its own exporter
                torch.onnx.export(
                    self.wrapper,
                    self.trace_inputs,
                    str(path),
                    dynamo=True,
                    input_names=self.names,
                    output_names=["logits"],
                    dynamic_shapes=(dynamic,),
                    verbose=False,
                    external_data=size > _ONNX_SINGLE_FILE_BYTES,
                )
        except Exception as exc:  # noqa: BLE001 - torch.export and the ONNX translation raise many kinds
            raise AutomlTLError(
                f"cannot export {self.name} to ONNX: {_onnx_reason(exc)}; try --format torchscript"
            ) from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._check(session.run(["logits"], {n: t.numpy() for n, t in zip(self.names, self.check_inputs)})[0], "ONNX")
        inputs = self._input_files()
        feeds = ", ".join(f"{n!r}: {n}.numpy()" for n in self.names)
        code = (
            f"import onnxruntime\n{inputs.imports}\nfolder = {str(self.final)!r}\n"
            'session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])\n'
            + inputs.code
            + f'logits = session.run(["logits"], {{{feeds}}})[0]  # numpy float32 (batch, classes)\n'
        )
        files = {"model.onnx": "the whole model as ONNX: " + ", ".join(self.names) + " -> logits"}
        if (self.folder / "model.onnx.data").is_file():
            files["model.onnx.data"] = "the weights of model.onnx (keep them side by side)"
        files.update(inputs.files)
        info = self._info("onnx", files, code)
        info["opset"] = next(
            (
                o.version
                for o in onnx.load(str(path), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx")
            ),
            None,
        )
        return info


def _onnx_reason(error: BaseException) -> str:
    """The line of torch.onnx's long report that says what failed (its first line only says which step)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    _, found, summary = text.partition("## Exception summary")
    lines = [line.strip() for line in summary.splitlines() if line.strip()] if found else []
    return first_line(AutomlTLError(lines[0]), 300) if lines else first_line(error, 300)


# ---------------------------------------------------------------- README


def image_preparation_code(preprocessing: dict[str, Any]) -> str | None:
    """Python that prepares one image file as the model was trained (None where a crop makes it longer)."""
    if preprocessing.get("kind") != "image" or preprocessing.get("crop_pct", 1.0) < 1.0:
        return None
    size = preprocessing["size"]
    return (
        "import numpy as np\nimport torch\nfrom PIL import Image\n\n"
        f'image = Image.open(path).convert("RGB").resize(({size}, {size}), '
        f"Image.Resampling.{preprocessing['interpolation'].upper()})\n"
        f"mean = np.array({preprocessing['mean']}, dtype=np.float32)\n"
        f"std = np.array({preprocessing['std']}, dtype=np.float32)\n"
        "pixels = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std\n"
        "images = torch.from_numpy(pixels.transpose(2, 0, 1).copy()).unsqueeze(0)  # (1, 3, H, W)\n"
    )


def _readme(info: dict[str, Any], card: bool = True) -> str:
    fmt, backbone = info["format"], info["backbone"]
    classes = info["classes"]
    ensemble = info.get("ensemble")
    title = f"Ensemble of {len(ensemble['members'])} models" if ensemble else f"`{backbone['name']}` classifier"
    lines = [
        f"# {title}, {fmt} export",
        "",
        f"Exported by automl_tl from `{info['source_model']}`. "
        + (f"The model card is in `{MODEL_CARD_FILE}`; " if card else "")
        + f"`{EXPORT_INFO_FILE}` holds everything below as JSON.",
        "",
    ]
    if ensemble:
        lines += ["One graph runs every member on the same inputs:", ""]
        lines += [
            f"- `{m['folder']}` ({m['kind']}: {', '.join(m['backbones'])}), weight {m['weight']:.3g}, "
            f"temperature {m['temperature']:.3g}"
            for m in ensemble["members"]
        ]
        lines += [""]
    lines += ["## Files", ""]
    lines += [f"- `{name}`: {what}" for name, what in info["files"].items()]
    lines += ["", "## Input", "", "| name | dtype | shape | what |", "|---|---|---|---|"]
    lines += [
        f"| `{i['name']}` | {i['dtype']} | ({', '.join(map(str, i['shape']))}) | {i['description']} |"
        for i in info["inputs"]
    ]
    output = f"{OUTPUT_MEANING}, one per class" if ensemble else "one score per class"
    lines += [
        "",
        f"Output: `logits`, float32 (batch, {len(classes)}): {output}, in this order: "
        + ", ".join(f"`{c}`" for c in classes)
        + ".",
        "",
    ]
    if info.get("temperature", 1.0) != 1.0:
        lines += [
            f"Dividing the logits by the temperature {info['temperature']:.4g} before the softmax gives the "
            "calibrated probabilities the model predicts.",
            "",
        ]
    prepare = image_preparation_code(info["preprocessing"])
    if prepare:
        lines += ["Preparing an image file at `path` as in training:", "", "```python", prepare.rstrip(), "```", ""]
    lines += ["## Load and run", "", "```python", info["load"].rstrip(), "```", ""]
    if info["modality"] == "text":
        lines += ["`texts` is a list of strings; the tokenizer saved here pads and truncates as in training.", ""]
    check = info.get("check", {})
    lines += [
        f"Checked when exported: on {check.get('examples')} examples the logits of this export differ from "
        f"the original model's by at most {check.get('max_abs_diff', float('nan')):.1e}.",
        "",
    ]
    return "\n".join(lines)
