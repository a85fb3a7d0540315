"""An ensemble exports to TorchScript and ONNX as one graph: its members (a concatenated-feature probe's parts
included) run on the same input tensors, and the graph's logits are the log of their weighted mean
probabilities, so that softmax(logits / temperature) is what the ensemble's own predict_proba gives. Members
that prepare inputs differently beyond what the graph can convert, and native formats, are refused in one line.

Real models throughout: pretrained mobilenetv2_100 and tf_efficientnet_lite0 bodies (whose images are
normalised differently) with seeded heads, on real digits."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from automl_tl import InputOptions
from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.heads import HeadSpec
from automl_tl.registry import get_backbone
from automl_tl.results.concatenated import ConcatenatedModel
from automl_tl.results.ensemble import EnsemblePredictor, load_ensemble_dir, save_ensemble
from automl_tl.results.export import export_model
from automl_tl.train.head_modules import build_head

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

CLASSES = ["0", "1", "2"]
TOLERANCE = 1e-4


def member(backbone_name: str, seed: int, size: int = 32, head: str = "linear", temperature: float | None = None):
    """A model and its config as the search saves them: a pretrained body and a seeded head (a normalised
    linear head with a made-up centre, as a concatenated probe's part has)."""
    backbone = get_backbone(backbone_name)
    options = InputOptions(image_size=size)
    torch.manual_seed(seed)
    model = backbone.build(num_classes=len(CLASSES))
    spec = HeadSpec(kind=head)
    if head != "linear":
        model.head = build_head(spec, backbone.embedding_dim, len(CLASSES))
        model.head.center.normal_()
    with torch.no_grad():  # heads large enough that the members disagree and their probabilities are not flat
        for parameter in model.head.parameters():
            parameter.mul_(20)
    config = {
        "backbone": backbone.describe(),
        "head": spec.to_dict(),
        "classes": CLASSES,
        "input_column": "image",
        "label_column": "label",
        "input_options": vars(options),
        "preprocessing": backbone.preprocessor(options).describe(),
        "trial": seed,
    }
    if temperature is not None:
        config["temperature"] = temperature
    return model.eval(), config


def write_ensemble(directory, members, temperature: float = 1.5):
    save_ensemble(
        directory,
        members,
        {"classes": CLASSES, "input_column": "image", "label_column": "label", "temperature": temperature},
    )
    return directory


@pytest.fixture(scope="module")
def images(digits_frame):
    return pd.DataFrame({"image": list(digits_frame["image"][:6])})


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    """mobilenetv2_100 (with its own temperature) and tf_efficientnet_lite0, weighted 0.7 and 0.3."""
    return write_ensemble(
        tmp_path_factory.mktemp("two") / "ensemble_model",
        [(0.7, *member("mobilenetv2_100", 0, temperature=2.0)), (0.3, *member("tf_efficientnet_lite0", 1))],
    )


@pytest.fixture(scope="module")
def with_concatenated(tmp_path_factory):
    """A mobilenetv2_100 model and a probe on the concatenated features of mobilenetv2_100 and
    tf_efficientnet_lite0 (its parts' bodies, their normalised linear heads summed)."""
    probe = ConcatenatedModel(
        [
            member("mobilenetv2_100", 2, head="normalised_linear"),
            member("tf_efficientnet_lite0", 3, head="normalised_linear"),
        ]
    )
    return write_ensemble(
        tmp_path_factory.mktemp("concatenated") / "ensemble_model",
        [(0.4, *member("mobilenetv2_100", 4)), (0.6, probe, {"strategy": "concatenated_features"})],
        temperature=0.8,
    )


def exported_probabilities(export, predictor: EnsemblePredictor, frame: pd.DataFrame) -> np.ndarray:
    """The export run on ``frame``'s images prepared as export.json says (its first member's preprocessing),
    then softmax(logits / temperature)."""
    info = json.loads((export / "export.json").read_text())
    first = predictor.members[0]
    first = first.parts[0] if hasattr(first, "parts") else first
    images = first.preprocessor.collate(first.preprocessor.encode(list(frame["image"])), train=False)
    assert info["inputs"][0]["shape"][1:] == list(images.shape[1:])
    if info["format"] == "torchscript":
        with torch.no_grad():
            logits = torch.jit.load(str(export / "model.pt"))(images).numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"images": images.numpy()})[0]
    return torch.softmax(torch.from_numpy(logits).double() / info["temperature"], dim=1).numpy()


def test_an_ensemble_exports_as_one_onnx_graph_whose_probabilities_are_the_ensembles(two_backbones, images, tmp_path):
    # (ONNX here, TorchScript with the concatenated probe's three bodies below: ONNX takes a minute for two on CPU)
    export = export_model(two_backbones, "onnx", tmp_path / "onnx")
    predictor = load_ensemble_dir(two_backbones, "cpu")
    expected = predictor.predict_proba(images).to_numpy()
    # the members disagree: the ensemble's probabilities are neither member's alone
    alone = [m.predict_proba(images).to_numpy() for m in predictor.members]
    assert all(np.abs(expected - probabilities).max() > 0.05 for probabilities in alone)
    assert np.abs(exported_probabilities(export, predictor, images) - expected).max() < TOLERANCE
    info = json.loads((export / "export.json").read_text())
    assert info["temperature"] == 1.5 and info["check"]["max_abs_diff"] < 1e-3
    assert [(m["folder"], m["weight"], m["temperature"]) for m in info["ensemble"]["members"]] == [
        ("member_0", 0.7, 2.0),
        ("member_1", 0.3, 1.0),
    ]
    assert "log of the members' weighted mean probabilities" in info["output"]["description"]
    assert "log of the members' weighted mean probabilities" in (export / "README.md").read_text()


def test_an_ensemble_with_a_concatenated_feature_probe_exports_as_one_graph(with_concatenated, images, tmp_path):
    export = export_model(with_concatenated, "torchscript", tmp_path / "torchscript")
    predictor = load_ensemble_dir(with_concatenated, "cpu")
    expected = predictor.predict_proba(images).to_numpy()
    assert np.abs(exported_probabilities(export, predictor, images) - expected).max() < TOLERANCE
    listed = json.loads((export / "export.json").read_text())["ensemble"]["members"]
    assert listed[1]["kind"] == "concatenated_features"
    assert listed[1]["backbones"] == ["mobilenetv2_100", "tf_efficientnet_lite0"]


def test_members_that_prepare_images_at_different_sizes_are_refused_naming_both(tmp_path):
    directory = write_ensemble(
        tmp_path / "ensemble_model",
        [(0.5, *member("mobilenetv2_100", 0, size=32)), (0.5, *member("mobilenetv2_100", 1, size=40))],
    )
    with pytest.raises(AutomlTLError, match=r"member_0 .*and member_1 .*size 32 and 40") as caught:
        export_model(directory, "onnx", tmp_path / "export")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "export").exists()


def test_an_ensemble_is_refused_in_a_native_format_naming_the_formats_that_hold_it(two_backbones, tmp_path):
    with pytest.raises(ConfigError, match=r"is an ensemble: export it with --format torchscript or onnx") as caught:
        export_model(two_backbones, "timm", tmp_path / "export")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "export").exists()


def test_an_audio_ensemble_exports_as_one_graph(tmp_path):
    """Waveforms in: the graph is checked against the ensemble's predictions on sound files of its check batch."""
    backbone = get_backbone("crepe-tiny")
    if not backbone.weights_available():
        pytest.skip(f"{backbone.weight_source} is not installed")
    options = InputOptions(clip_seconds=0.5)
    members = []
    for seed, weight in ((0, 0.5), (1, 0.5)):
        torch.manual_seed(seed)
        model = backbone.build(num_classes=len(CLASSES))
        config = {
            "backbone": backbone.describe(),
            "head": HeadSpec("linear").to_dict(),
            "classes": CLASSES,
            "input_column": "audio",
            "label_column": "label",
            "input_options": vars(options),
            "preprocessing": backbone.preprocessor(options).describe(),
        }
        members.append((weight, model.eval(), config))
    directory = tmp_path / "ensemble_model"
    save_ensemble(directory, members, {"classes": CLASSES, "input_column": "audio", "label_column": "label"})
    export = export_model(directory, "torchscript", tmp_path / "export")
    predictor = load_ensemble_dir(directory, "cpu")
    t = np.arange(8000) / 16000
    waves = [torch.from_numpy((0.4 * np.sin(2 * np.pi * f * t)).astype(np.float32)) for f in (220.0, 440.0)]
    first = predictor.members[0]
    batch = first.preprocessor.collate(first.preprocessor.encode(waves), train=False)
    with torch.no_grad():
        logits = torch.jit.load(str(export / "model.pt"))(batch)
    # the members' own models on the same waveforms, averaged as the ensemble averages them
    with torch.no_grad():
        averaged = sum(w * torch.softmax(m.model(batch), dim=1) for w, m in zip(predictor.weights, predictor.members))
    assert float((torch.softmax(logits, dim=1) - averaged).abs().max()) < TOLERANCE


def text_member(seed: int, max_length: int = 32, head: str = "linear"):
    backbone = get_backbone("all-MiniLM-L6-v2")
    if not backbone.weights_available():
        pytest.skip("offline all-MiniLM-L6-v2 is not installed (requirements-zoo.txt)")
    options = InputOptions(max_length=max_length)
    torch.manual_seed(seed)
    model = backbone.build(num_classes=len(CLASSES))
    spec = HeadSpec(kind=head)
    if head != "linear":
        model.head = build_head(spec, backbone.embedding_dim, len(CLASSES))
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(20)
    config = {
        "backbone": backbone.describe(),
        "head": spec.to_dict(),
        "classes": CLASSES,
        "input_column": "text",
        "label_column": "label",
        "input_options": vars(options),
        "preprocessing": backbone.preprocessor(options).describe(),
    }
    return model.eval(), config


def test_a_text_ensemble_exports_with_its_tokenizer_and_its_readme_code_predicts_as_the_ensemble(tmp_path):
    directory = tmp_path / "ensemble_model"
    save_ensemble(
        directory,
        [(0.5, *text_member(0)), (0.5, *text_member(1, head="mlp"))],
        {"classes": CLASSES, "input_column": "text", "label_column": "label", "temperature": 1.3},
    )
    export = export_model(directory, "torchscript", tmp_path / "export")
    predictor = load_ensemble_dir(directory, "cpu")
    texts = ["Shares fell after the company reported lower profits.", "a short one", "The match ended in a draw"]
    expected = predictor.predict_proba(pd.DataFrame({"text": texts})).to_numpy()
    (code,) = re.findall(r"```python\n(.*?)```", (export / "README.md").read_text(), flags=re.S)
    namespace = {"texts": texts}
    exec(code, namespace)  # noqa: S102 - the README's own code, as a user would run it
    info = json.loads((export / "export.json").read_text())
    got = torch.softmax(torch.as_tensor(namespace["logits"]).double() / info["temperature"], dim=1).numpy()
    assert np.abs(got - expected).max() < TOLERANCE
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"]


def test_text_members_truncating_at_different_lengths_are_refused(tmp_path):
    directory = tmp_path / "ensemble_model"
    save_ensemble(
        directory,
        [(0.5, *text_member(0, max_length=32)), (0.5, *text_member(1, max_length=64))],
        {"classes": CLASSES, "input_column": "text", "label_column": "label"},
    )
    with pytest.raises(AutomlTLError, match=r"member_0 \(all-MiniLM-L6-v2\) and member_1 .*max_length 32 and 64"):
        export_model(directory, "torchscript", tmp_path / "export")
