"""Exports (timm, transformers, TorchScript, ONNX) reproduce the model's logits; the README code beside
them runs; the model card holds the run's real numbers; bad requests are one-line errors with exit 2.

Real models throughout: a search of mobilenetv2_100 on real digits, one of all-MiniLM-L6-v2 on BBC
News texts, and CREPE-tiny with its packaged weights for audio."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import automl_tl
from automl_tl import InputOptions, SearchConfig, hookimpl
from automl_tl.cli import main
from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.heads import HeadSpec
from automl_tl.layout import MODEL_CARD_FILE
from automl_tl.plugins import get_plugin_manager
from automl_tl.registry import get_backbone
from automl_tl.results.export import export_model
from automl_tl.results.model_card import wilson_interval
from automl_tl.results.model_io import save_model
from automl_tl.train.executor import Executor
from automl_tl.train.head_modules import build_head

# torch.jit.load is deprecated in favour of torch.export, but TorchScript is what many runtimes load
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

TOLERANCE = 1e-4
IMAGE_FORMATS = ("timm", "torchscript", "onnx")
TEXT_FORMATS = ("transformers", "torchscript", "onnx")


def max_abs_diff(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


def reference_logits(predictor, inputs):
    """The original model's logits for raw ``inputs`` (through its own preprocessing), and the prepared batch."""
    batch = predictor.preprocessor.collate(predictor.preprocessor.encode(inputs), train=False)
    with torch.no_grad():
        return predictor.model(batch), batch


def code_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


# ---------------------------------------------------------------- the runs, made once


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, digits_bundle):
    run_dir = tmp_path_factory.mktemp("image-run")
    config = SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=2,
        seed=0,
        min_epochs=1,
        max_epochs=1,
        strategies=("linear_probe",),
        heads=("linear",),
        input_options=InputOptions(image_size=32),
    )
    automl_tl.run_search(digits_bundle, config, run_dir, Executor(show_progress=False))
    return run_dir


@pytest.fixture(scope="module")
def image_exports(image_run):
    return {fmt: export_model(image_run, fmt) for fmt in IMAGE_FORMATS}


@pytest.fixture(scope="module")
def text_data():
    from automl_tl_datasets.text import load_bbc_news

    if not get_backbone("all-MiniLM-L6-v2").weights_available():
        pytest.skip("offline all-MiniLM-L6-v2 is not installed (requirements-zoo.txt)")
    try:
        frame = load_bbc_news()
    except AutomlTLError as exc:
        pytest.skip(str(exc))
    frame = frame.groupby("label", group_keys=False).head(8).reset_index(drop=True)
    return automl_tl.prepare_dataset(frame, label_column="label", input_column="text", seed=0)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_data):
    """An MLP head on MiniLM's mean-pooled tokens: the export must reproduce pooling and head."""
    run_dir = tmp_path_factory.mktemp("text-run")
    config = SearchConfig(
        backbones=("all-MiniLM-L6-v2",),
        n_trials=1,
        min_epochs=1,
        max_epochs=1,
        strategies=("linear_probe",),
        heads=("mlp",),
        batch_size=16,
        pruner="none",
        input_options=InputOptions(max_length=32),
    )
    automl_tl.run_search(text_data, config, run_dir, Executor(show_progress=False))
    return run_dir


@pytest.fixture(scope="module")
def text_exports(text_run):
    return {fmt: export_model(text_run, fmt) for fmt in TEXT_FORMATS}


def saved_model(directory, backbone_name: str, head: HeadSpec, options: InputOptions, classes=("a", "b", "c")):
    """A model directory as the search writes it, for a pretrained backbone and a fresh (seeded) head."""
    backbone = get_backbone(backbone_name)
    torch.manual_seed(0)
    model = backbone.build(num_classes=len(classes))
    if head.kind != "linear":
        model.head = build_head(head, backbone.embedding_dim, len(classes))
    save_model(
        model,
        directory,
        {
            "backbone": backbone.describe(),
            "head": head.to_dict(),
            "classes": list(classes),
            "input_column": "input",
            "label_column": "label",
            "input_options": vars(options),
            "preprocessing": backbone.preprocessor(options).describe(),
            "trial": 0,
            "val_accuracy": 0.5,
        },
    )
    return directory


# ---------------------------------------------------------------- image: timm, TorchScript, ONNX


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_image_export_reproduces_the_logits_on_the_test_digits(image_run, image_exports, digits_bundle, fmt):
    predictor = automl_tl.load(image_run, device="cpu")
    expected, images = reference_logits(predictor, digits_bundle.test.inputs)  # 36 images; traced with 2
    folder = image_exports[fmt]
    if fmt == "timm":
        import timm

        info = json.loads((folder / "export.json").read_text())["create_model"]
        model = timm.create_model("mobilenetv2_100", num_classes=10, checkpoint_path=str(folder / "model.safetensors"))
        assert info == {"model_name": "mobilenetv2_100", "num_classes": 10, "checkpoint_path": "model.safetensors"}
        with torch.no_grad():
            got = model.eval()(images)
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(folder / "model.pt"))(images)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"images": images.numpy()})[0]
    assert max_abs_diff(got, expected) < TOLERANCE
    assert np.array_equal(np.asarray(got).argmax(1), expected.argmax(1).numpy())


class _ResnetPlugin:
    @hookimpl
    def register_backbones(self, register):
        from automl_tl_timm import TimmBackbone

        register(TimmBackbone("resnet18", weights="none", name="test/resnet18"))  # plumbing only: random weights


def test_timm_export_finds_each_architectures_classifier(clean_registry, tmp_path):
    """resnet's classifier is ``fc`` (mobilenet's ``classifier``): the export writes it under timm's own name."""
    import timm

    get_plugin_manager().register(_ResnetPlugin(), name="resnet")
    try:
        model_dir = saved_model(tmp_path / "resnet", "test/resnet18", HeadSpec("linear"), InputOptions(image_size=32))
        folder = export_model(model_dir, "TIMM")  # format names are not case-sensitive
        predictor = automl_tl.load(model_dir, device="cpu")
    finally:
        get_plugin_manager().unregister(name="resnet")
    images = torch.randn(4, 3, 32, 32)
    model = timm.create_model("resnet18", num_classes=3, checkpoint_path=str(folder / "model.safetensors")).eval()
    with torch.no_grad():
        assert max_abs_diff(model(images), predictor.model(images)) < TOLERANCE
    assert "fc" in json.loads((folder / "export.json").read_text())["files"]["model.safetensors"]


def test_image_export_files_say_what_input_they_expect(image_run, image_exports):
    config = json.loads((image_run / "best_model" / "config.json").read_text())
    card = (image_run / MODEL_CARD_FILE).read_text()
    for fmt, folder in image_exports.items():
        info = json.loads((folder / "export.json").read_text())
        assert info["format"] == fmt and info["classes"] == list(range(10))
        assert info["inputs"] == [
            {
                "name": "images",
                "dtype": "float32",
                "shape": ["batch", 3, 32, 32],
                "description": info["inputs"][0]["description"],
            }
        ]
        assert "resized to 32x32" in info["inputs"][0]["description"] and "0.485" in info["inputs"][0]["description"]
        assert info["preprocessing"] == config["preprocessing"]
        assert info["check"]["max_abs_diff"] < TOLERANCE and info["check"]["examples"] == 3
        assert (folder / MODEL_CARD_FILE).read_text() == card  # the run's card, copied
    from_model_dir = export_model(image_run / "best_model", "torchscript", image_run / "from-model-dir")
    assert (from_model_dir / MODEL_CARD_FILE).read_text() == card


def test_image_readme_code_prepares_and_classifies_a_png_like_the_model(
    image_run, image_exports, digits_bundle, tmp_path
):
    from automl_tl.data.readers import read_image

    predictor = automl_tl.load(image_run, device="cpu")
    path = tmp_path / "digit.png"
    read_image(digits_bundle.test.inputs[0]).save(path)
    expected, prepared = reference_logits(predictor, [str(path)])
    for fmt, folder in image_exports.items():
        prepare, run = code_blocks((folder / "README.md").read_text())
        namespace = {"path": str(path)}
        exec(prepare, namespace)  # noqa: S102 - the README's own code, as a user would run it
        assert max_abs_diff(namespace["images"], prepared) < 1e-6, fmt
        exec(run, namespace)  # noqa: S102
        assert max_abs_diff(namespace["logits"], expected) < TOLERANCE, fmt


# ---------------------------------------------------------------- text: transformers, TorchScript, ONNX


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_text_export_reproduces_the_logits_on_the_test_texts(text_run, text_exports, text_data, fmt):
    from transformers import AutoModel, AutoTokenizer

    predictor = automl_tl.load(text_run, device="cpu")
    texts = list(text_data.test.inputs)
    expected, _ = reference_logits(predictor, texts)
    folder = text_exports[fmt]
    # every text export carries the tokenizer, set up to pad and truncate as in training
    batch = AutoTokenizer.from_pretrained(str(folder))(
        texts, padding=True, truncation=True, max_length=32, return_tensors="pt", return_token_type_ids=False
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if fmt == "transformers":
        from safetensors.torch import load_file

        encoder = AutoModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
        head = load_file(str(folder / "head.safetensors"))
        assert encoder.config.id2label == dict(enumerate(predictor.classes))
        with torch.no_grad():
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)  # sentence-transformers' mean pooling
        got = (
            torch.nn.functional.gelu(pooled @ head["hidden.weight"].T + head["hidden.bias"]) @ head["output.weight"].T
            + head["output.bias"]
        )
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(folder / "model.pt"))(ids, mask)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert max_abs_diff(got, expected) < TOLERANCE
    assert np.array_equal(np.asarray(got).argmax(1), expected.argmax(1).numpy())


def test_text_readme_code_runs_and_matches_the_model(text_run, text_exports, text_data):
    predictor = automl_tl.load(text_run, device="cpu")
    texts = list(text_data.test.inputs)[:5] + ["a short one", "Shares fell after the company reported lower profits."]
    expected, _ = reference_logits(predictor, texts)
    for fmt, folder in text_exports.items():
        (code,) = code_blocks((folder / "README.md").read_text())
        namespace = {"texts": texts}
        exec(code, namespace)  # noqa: S102 - the README's own code, as a user would run it
        assert max_abs_diff(namespace["logits"], expected) < TOLERANCE, fmt
        one = {"texts": texts[-1:]}  # a batch of one, without padding: traced with two padded texts
        exec(code, one)  # noqa: S102
        assert max_abs_diff(one["logits"], expected[-1:]) < TOLERANCE, fmt
        info = json.loads((folder / "export.json").read_text())
        assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"]
        assert info["inputs"][0]["dtype"] == "int64" and info["inputs"][0]["shape"] == ["batch", "sequence <= 32"]
    assert namespace["logits"].shape == (len(texts), len(predictor.classes))


# ---------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def crepe_model(tmp_path_factory):
    backbone = get_backbone("crepe-tiny")
    if not backbone.weights_available():
        pytest.skip(f"{backbone.weight_source} is not installed")
    return saved_model(
        tmp_path_factory.mktemp("crepe") / "model", "crepe-tiny", HeadSpec("linear"), InputOptions(clip_seconds=0.5)
    )


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_audio_export_reproduces_the_logits_silent_frames_included(crepe_model, tmp_path, fmt):
    """CREPE skips silent frames (a data-dependent shape); the exports must still give the same logits."""
    predictor = automl_tl.load(crepe_model, device="cpu")
    t = np.arange(16000) / 16000
    tones = [(0.4 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220.0, 330.0, 440.0, 523.0)]
    tones[1][:6000] = 0.0  # silent start, then a tone
    tones[2] = tones[2][:3000]  # shorter than the clip: zero-padded
    waveforms = [torch.from_numpy(tone) for tone in tones] + [torch.zeros(8000)]  # all silent: every frame counts
    expected, batch = reference_logits(predictor, waveforms)
    folder = export_model(crepe_model, fmt, tmp_path / fmt)
    if fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(folder / "model.pt"))(batch)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"waveforms": batch.numpy()})[0]
    assert max_abs_diff(got, expected) < TOLERANCE
    (code,) = code_blocks((folder / "README.md").read_text())
    namespace = {"waveforms": batch}
    exec(code, namespace)  # noqa: S102 - the README's own code, as a user would run it
    assert max_abs_diff(namespace["logits"], expected) < TOLERANCE
    info = json.loads((folder / "export.json").read_text())
    assert info["inputs"][0]["shape"] == ["batch", 8000] and "16000 Hz" in info["inputs"][0]["description"]
    assert "Model card" in (folder / MODEL_CARD_FILE).read_text()  # rendered for a bare model directory


def test_aisfx_exports_to_torchscript_and_onnx(tmp_path):
    backbone = get_backbone("aisfx")
    if not backbone.weights_available():
        pytest.skip(f"{backbone.weight_source} is not installed")
    model_dir = saved_model(tmp_path / "aisfx", "aisfx", HeadSpec("linear"), InputOptions(clip_seconds=0.5))
    predictor = automl_tl.load(model_dir, device="cpu")
    t = np.arange(30000) / 44100
    waveforms = [torch.from_numpy((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)) for f in (110.0, 880.0, 3000.0)]
    expected, batch = reference_logits(predictor, waveforms)
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(export_model(model_dir, "onnx") / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert max_abs_diff(session.run(["logits"], {"waveforms": batch.numpy()})[0], expected) < TOLERANCE
    with torch.no_grad():
        got = torch.jit.load(str(export_model(model_dir, "torchscript") / "model.pt"))(batch)
    assert max_abs_diff(got, expected) < TOLERANCE


@pytest.mark.parametrize("fmt, works", [("timm", "torchscript or onnx"), ("transformers", "torchscript or onnx")])
def test_audio_refuses_formats_that_cannot_hold_it(crepe_model, tmp_path, fmt, works):
    with pytest.raises(ConfigError, match=f"crepe-tiny is an audio model: export it with --format {works}$"):
        export_model(crepe_model, fmt, tmp_path / fmt)
    assert not (tmp_path / fmt).exists()


# ---------------------------------------------------------------- refusals


def test_timm_refuses_an_mlp_head_naming_the_formats_that_work(tmp_path):
    model_dir = saved_model(
        tmp_path / "mlp", "mobilenetv2_100", HeadSpec("mlp", hidden=32), InputOptions(image_size=32)
    )
    with pytest.raises(ConfigError, match="head is an MLP: export it with --format torchscript or onnx"):
        export_model(model_dir, "timm")
    assert not (model_dir / "exports").exists()


def _cli(capsys, *argv):
    status = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "fmt, message",
    [
        ("bogus", "unknown export format 'bogus'; expected one of timm, transformers, torchscript, onnx"),
        (
            "transformers",
            "the transformers format holds text models only; mobilenetv2_100 is an image model: "
            "export it with --format timm, torchscript or onnx",
        ),
    ],
)
def test_cli_refuses_unknown_or_unsupported_formats_in_one_line(image_run, capsys, fmt, message):
    status, out, err = _cli(capsys, image_run, "--format", fmt)
    assert status == 2 and err == f"automl-tl: error: {message}\n" and not out


def test_cli_refuses_timm_for_a_text_model(text_run, capsys):
    status, _, err = _cli(capsys, text_run, "--format", "timm")
    assert status == 2 and err.count("\n") == 1
    assert "all-MiniLM-L6-v2 is a text model: export it with --format transformers, torchscript or onnx" in err


def test_cli_refuses_a_missing_run_dir(tmp_path, capsys):
    status, _, err = _cli(capsys, tmp_path / "nowhere", "--format", "onnx")
    assert status == 2 and err == f"automl-tl: error: run directory not found: {tmp_path / 'nowhere'}\n"


def test_cli_exports_replaces_its_own_export_and_keeps_other_folders(image_run, tmp_path, capsys):
    target = tmp_path / "ts"
    status, out, _ = _cli(capsys, image_run, "--format", "torchscript", "--output", target)
    assert status == 0 and str(target) in out and (target / "model.pt").is_file()
    (target / "stale.txt").write_text("from before")
    assert _cli(capsys, image_run, "--format", "torchscript", "--output", target)[0] == 0
    assert not (target / "stale.txt").exists()  # an earlier export is replaced whole
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    status, _, err = _cli(capsys, image_run, "--format", "torchscript", "--output", foreign)
    assert status == 2 and "non-empty folder that holds no earlier export" in err and err.count("\n") == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


# ---------------------------------------------------------------- the model card


def test_search_writes_a_model_card_with_the_runs_real_numbers(image_run):
    card = (image_run / MODEL_CARD_FILE).read_text()
    summary = json.loads((image_run / "summary.json").read_text())
    manifest = json.loads((image_run / "manifest.json").read_text())
    test = summary["test"]
    row = next(line for line in card.splitlines() if line.startswith("| test (held out)"))
    low, high = wilson_interval(test["accuracy"], test["examples"])
    assert row == (
        f"| test (held out) | {test['examples']} | {test['accuracy']:.4f} (95% interval {low:.2f}–{high:.2f}) "
        f"| {test['balanced_accuracy']:.4f} | {test['macro_f1']:.4f} |"
    )
    validation = json.loads((image_run / "best_model" / "metrics.json").read_text())["validation"]
    assert validation["examples"] == summary["data"]["val"] == 36
    assert validation["accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-6)  # the best epoch's, recomputed
    assert (
        f"| validation (chose the model) | 36 | {validation['accuracy']:.4f} | "
        f"{validation['balanced_accuracy']:.4f} | {validation['macro_f1']:.4f} |" in card
    )
    data = summary["data"]
    assert (
        f"{data['train'] + data['val'] + data['test']}: {data['train']} train, {data['val']} validation, "
        f"{data['test']} test" in card
    )
    assert f"`{data['fingerprint']}`" in card
    weights_hash = manifest["backbones"][0]["weights_sha256_prefix"]
    assert weights_hash and f"`{weights_hash}`" in card
    assert "offline package" in card and "`mobilenetv2_100` (timm `mobilenetv2_100`)" in card
    assert f"trial {summary['best_trial']}" in card and "2 (2 complete)" in card
    assert "strategies `linear_probe`" in card and "heads `linear`" in card
    assert "Small data." in card and f"{100 / test['examples']:.1f} points" in card
    assert "Not evaluated on" in card and "Intended use" in card
