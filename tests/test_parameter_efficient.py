"""Parameter-efficient strategies: BitFit (the body's biases only) and norm-only tuning (its normalisation layers
only), for every offline backbone kind; what trains, what a saved model holds, and how the search offers them."""

from __future__ import annotations

import dataclasses
import os

import optuna
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach a model hub

from cli_helpers import TINY_SEARCH, run_main  # noqa: E402
from test_cli import write_image_folder  # noqa: E402

from automl_tl import Executor, InputOptions, TrialConfig  # noqa: E402
from automl_tl.config import SearchConfig  # noqa: E402
from automl_tl.registry import get_registry  # noqa: E402
from automl_tl.results.model_io import load_model_dir, save_model  # noqa: E402
from automl_tl.search.space import SearchSpace, suggest_trial_config  # noqa: E402
from automl_tl.strategies import DEFAULT_STRATEGIES, get_strategy, used_parameters  # noqa: E402
from automl_tl.train.executor import (  # noqa: E402
    StrategyNotApplicable,
    parameter_groups,
    predict_logits,
    set_trained_body,
)
from automl_tl.train.feature_cache import FeatureCache  # noqa: E402

SMALL = InputOptions(image_size=32)
NORM_TYPES = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)


def config(**overrides) -> TrialConfig:
    values = dict(
        backbone="mobilenetv2_100", trained_groups=1, backbone_lr=1e-2, head_lr=1e-2, epochs=1, input_options=SMALL
    )
    return TrialConfig(**{**values, **overrides})


@pytest.fixture
def executor(tmp_path):
    return Executor(show_progress=False, feature_cache=FeatureCache(tmp_path / "features"))


@pytest.fixture
def held_out_bundle(digits_bundle):
    return dataclasses.replace(digits_bundle, min_validation_per_class=0)


def norm_names(model) -> set[str]:
    """The body's normalisation parameters, found by module type (not by the code under test)."""
    return {
        f"{prefix}.{name}"
        for prefix, module in model.body.named_modules()
        if isinstance(module, NORM_TYPES)
        for name, _ in module.named_parameters(recurse=False)
    }


def changed_entries(pristine, trained) -> set[str]:
    """The names of the body's state-dict entries (parameters and buffers) that training changed."""
    before, after = pristine.body.state_dict(), trained.body.state_dict()
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name].to(tensor.device))}


def statistics_of_trained_norms(model, trained: set[str]) -> set[str]:
    """The running statistics of the batch norms whose parameters are in ``trained``."""
    return {
        f"{prefix}.{buffer}"
        for prefix, module in model.body.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and f"{prefix}.weight" in trained
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }


def save_and_reload(model, backbone, bundle, folder):
    save_model(
        model,
        folder,
        {
            "backbone": backbone.describe(),
            "head": {"kind": "linear"},
            "classes": bundle.classes,
            "input_column": "image",
            "input_options": {"image_size": 32},
            "preprocessing": backbone.preprocessor(SMALL).describe(),
        },
    )
    return load_model_dir(folder, torch.device("cpu"))


@pytest.mark.parametrize("name", ["mobilenetv2_100", "tf_efficientnet_lite0"])
def test_bitfit_changes_only_the_biases_and_the_head(executor, held_out_bundle, tmp_path, name):
    backbone = get_registry().get_backbone(name)
    pristine = backbone.build(num_classes=10)
    result = executor.fit(config(backbone=name, strategy="bitfit"), backbone, held_out_bundle)
    model = result.final_model()
    biases = {n for n, _ in pristine.body.named_parameters() if n.endswith("bias")}
    assert biases and changed_entries(pristine, model) == biases  # no weight, no running statistic moved
    loaded = save_and_reload(model, backbone, held_out_bundle, tmp_path / "model")
    preprocessor = backbone.preprocessor(SMALL)
    items = executor.encoded(preprocessor, held_out_bundle, held_out_bundle.val)
    expected = predict_logits(model, preprocessor, items, 64, executor.device)
    assert torch.allclose(
        predict_logits(loaded.model, preprocessor, items, 64, torch.device("cpu")), expected, atol=1e-5
    )


def test_norm_only_changes_only_the_norms_and_their_statistics(executor, held_out_bundle, tmp_path):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    pristine = backbone.build(num_classes=10)
    result = executor.fit(config(strategy="norm_only"), backbone, held_out_bundle)
    model = result.final_model()
    norms = norm_names(pristine)
    assert norms and changed_entries(pristine, model) == norms | statistics_of_trained_norms(pristine, norms)
    loaded = save_and_reload(model, backbone, held_out_bundle, tmp_path / "model")
    preprocessor = backbone.preprocessor(SMALL)
    items = executor.encoded(preprocessor, held_out_bundle, held_out_bundle.val)
    expected = predict_logits(model, preprocessor, items, 64, executor.device)
    assert torch.allclose(
        predict_logits(loaded.model, preprocessor, items, 64, torch.device("cpu")), expected, atol=1e-5
    )


def test_one_rate_for_the_body_without_layer_decay():
    model = get_registry().get_backbone("mobilenetv2_100").build(num_classes=3, pretrained=False)
    trial = config(strategy="bitfit", backbone_lr=1e-3, head_lr=5e-2, layer_decay=0.5)
    set_trained_body(model, trial)
    lr_of = {id(p): g["lr"] for g in parameter_groups(model, trial) for p in g["params"]}
    trained = [p for p in model.body.parameters() if p.requires_grad]
    assert {lr_of[id(p)] for p in trained} == {1e-3} and len(lr_of) == len(trained) + 2  # + the head's two
    assert "layer_decay" not in used_parameters({"strategy": "bitfit", "layer_decay": 0.5, "backbone_lr": 1e-3})


def _text_and_audio_backbones():
    registry = get_registry()
    chosen = [registry.get_backbone("all-MiniLM-L6-v2"), registry.get_backbone("crepe-tiny")]
    return [b for b in chosen if b.weights_available()]


@pytest.mark.parametrize("backbone", _text_and_audio_backbones(), ids=lambda b: b.name)
@pytest.mark.parametrize("strategy", ["bitfit", "norm_only"])
def test_text_and_audio_bodies_get_gradients_in_the_chosen_parameters_only(backbone, strategy):
    torch.manual_seed(0)
    model = backbone.build(num_classes=3, pretrained=False)
    set_trained_body(model, config(backbone=backbone.name, strategy=strategy))
    model.train()
    if backbone.modality == "text":
        preprocessor = backbone.preprocessor(InputOptions(max_length=16))
        batch = preprocessor.collate(preprocessor.encode(["short text", "a somewhat longer text to pad"]), True)
    else:
        batch = torch.sin(torch.linspace(0, 600 * 3.1416, backbone.sample_rate // 4))[None].repeat(2, 1)
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 2])).backward()
    with_grad = {n for n, p in model.body.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if strategy == "bitfit":
        expected = {n for n, _ in model.body.named_parameters() if n.endswith("bias")}
    else:
        expected = norm_names(model)
    assert expected and with_grad == expected
    assert all(p.grad is not None for p in model.head.parameters())


def test_a_body_without_norms_is_not_norm_tuned():
    backbone = get_registry().get_backbone("ge2e-speaker")  # an LSTM: biases (bias_ih, bias_hh) but no norm layer
    model = backbone.build(num_classes=3, pretrained=False)
    set_trained_body(model, config(backbone="ge2e-speaker", strategy="bitfit"))
    trained = {n for n, p in model.body.named_parameters() if p.requires_grad}
    assert trained and all("bias" in n for n in trained) and any("bias_hh" in n for n in trained)
    with pytest.raises(StrategyNotApplicable, match="ge2e-speaker has no normalisation layers for norm_only"):
        set_trained_body(model, config(backbone="ge2e-speaker", strategy="norm_only"))


def test_the_search_space_draws_them_only_when_asked_for():
    assert "bitfit" not in DEFAULT_STRATEGIES and "norm_only" not in DEFAULT_STRATEGIES
    asked = SearchConfig(backbones=("mobilenetv2_100",), strategies=("bitfit", "norm_only", "last_k"))
    space = SearchSpace.from_config(asked, ["mobilenetv2_100"], 7, "image")
    assert space.strategies == ("bitfit", "norm_only", "last_k")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {suggest_trial_config(study.ask(), space, asked).strategy for _ in range(30)}
    assert drawn == {"bitfit", "norm_only", "last_k"}
    # A cap on the trained layer groups rules out what trains some of every group, as it does full fine-tuning.
    capped = SearchSpace.from_config(dataclasses.replace(asked, max_trained_groups=2), ["mobilenetv2_100"], 7, "image")
    assert capped.strategies == ("last_k",)
    assert get_strategy("bitfit").trained_depth(2, 7) == 7


def test_strategies_from_the_command_line(tmp_path, digits_frame, capsys):
    data_dir = tmp_path / "digits"
    write_image_folder(data_dir, digits_frame, per_class=12)
    flags = list(TINY_SEARCH)
    at = flags.index("--strategies")
    flags[at + 1 : at + 2] = ["bitfit", "norm_only"]
    flags[flags.index("--trials") + 1] = "2"
    code, err = run_main(["search", "--data", data_dir, *flags, "--output", tmp_path / "run"], capsys)
    assert code == 0, err
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert set(board["strategy"]) <= {"bitfit", "norm_only"} and len(board) == 2
    assert "layer_decay" not in board.columns or board["layer_decay"].isna().all()
    from automl_tl.results.model_card import render_model_card

    card = render_model_card(tmp_path / "run")
    assert any(get_strategy(name).description in card for name in ("bitfit", "norm_only"))


# ---------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def bbc_bundle():
    from automl_tl.data.bundle import prepare_dataset
    from automl_tl.errors import AutomlTLError
    from automl_tl_datasets.text import load_bbc_news

    try:
        frame = load_bbc_news()
    except AutomlTLError as exc:
        pytest.skip(str(exc))
    frame = frame.groupby("label", group_keys=False).head(12).reset_index(drop=True)
    bundle = prepare_dataset(frame, label_column="label", input_column="text", seed=0)
    return dataclasses.replace(bundle, min_validation_per_class=0)


TEXT = InputOptions(max_length=32)


def minilm():
    backbone = get_registry().get_backbone("all-MiniLM-L6-v2")
    if not backbone.weights_available():
        pytest.skip("offline MiniLM not installed")
    return backbone


def lora_config(**overrides) -> TrialConfig:
    values = dict(backbone="all-MiniLM-L6-v2", strategy="lora", lora_rank=4, input_options=TEXT, batch_size=16)
    return config(**{**values, "backbone_lr": 1e-3, **overrides})


def test_lora_trains_the_adapters_and_the_head_only():
    backbone = minilm()
    model = backbone.build(num_classes=3)
    set_trained_body(model, lora_config(), backbone.lora_targets)
    model.train()
    preprocessor = backbone.preprocessor(TEXT)
    batch = preprocessor.collate(preprocessor.encode(["short text", "a somewhat longer text to pad"]), True)
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 2])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    adapters = {n for n in with_grad if n.startswith("body.")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == with_grad
    assert with_grad - adapters == {f"head.{n}" for n, _ in model.head.named_parameters()}
    assert len(adapters) == 6 * 2 * 2  # A and B beside the query and value of each of the 6 layers
    assert all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert all(".attention.self.query." in n or ".attention.self.value." in n for n in adapters)


def test_a_lora_trial_hands_on_a_merged_plain_model(executor, bbc_bundle, tmp_path):
    backbone = minilm()
    pristine = backbone.build(num_classes=len(bbc_bundle.classes))
    result = executor.fit(lora_config(), backbone, bbc_bundle)
    model = result.final_model()
    assert set(model.state_dict()) == set(pristine.state_dict())  # no adapter left: the backbone's own names
    changed = changed_entries(pristine, model)
    assert changed and all(n.endswith(("query.weight", "value.weight")) for n in changed)  # the adapters, merged
    save_model(
        model,
        tmp_path / "model",
        {
            "backbone": backbone.describe(),
            "head": {"kind": "linear"},
            "classes": bbc_bundle.classes,
            "input_column": "text",
            "input_options": {"max_length": 32},
            "preprocessing": backbone.preprocessor(TEXT).describe(),
        },
    )
    loaded = load_model_dir(tmp_path / "model", torch.device("cpu"))
    preprocessor = backbone.preprocessor(TEXT)
    items = executor.encoded(preprocessor, bbc_bundle, bbc_bundle.val)
    expected = predict_logits(model, preprocessor, items, 32, executor.device)
    assert torch.allclose(
        predict_logits(loaded.model, preprocessor, items, 32, torch.device("cpu")), expected, atol=1e-5
    )


def test_a_lora_trial_s_weight_soup_averages_the_adapters_before_they_are_merged(executor, bbc_bundle):
    backbone = minilm()
    # rates at which the best epochs disagree a little: this seed's soup of two of them validates no worse
    trial = lora_config(epochs=5, backbone_lr=5e-3, head_lr=3e-2, early_stopping_patience=9)
    result = executor.fit(trial, backbone, bbc_bundle)
    soup = result.extra["weight_soup"]
    assert len(soup.get("ingredients", [])) >= 2, soup
    model = result.final_model()
    assert not any("lora_" in name for name in model.state_dict())
    # the merged model predicts the validation split as the averaged adapters were scored
    preprocessor = backbone.preprocessor(TEXT)
    items = executor.encoded(preprocessor, bbc_bundle, bbc_bundle.val)
    logits = predict_logits(model, preprocessor, items, 32, executor.device)
    assert result.best_record is result.soup_record
    torch.testing.assert_close(logits, result.soup_record.val_logits, atol=1e-4, rtol=1e-4)


def test_lora_is_not_run_on_a_backbone_without_targets(executor, held_out_bundle):
    assert get_registry().get_backbone("mobilenetv2_100").lora_targets == ()
    with pytest.raises(StrategyNotApplicable, match="mobilenetv2_100 offers no layers for LoRA"):
        executor.fit(config(strategy="lora"), get_registry().get_backbone("mobilenetv2_100"), held_out_bundle)


def test_the_search_draws_lora_parameters_for_lora_trials_only():
    asked = SearchConfig(backbones=("all-MiniLM-L6-v2",), strategies=("lora", "last_k"))
    space = SearchSpace.from_config(asked, ["all-MiniLM-L6-v2"], 7, "text")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(20):
        trial = study.ask()
        drawn.append((suggest_trial_config(trial, space, asked), trial.params))
    lora = [(c, p) for c, p in drawn if c.strategy == "lora"]
    assert lora and len(lora) < len(drawn)
    assert {c.lora_rank for c, _ in lora} <= {4, 8, 16} and all(0 <= c.lora_dropout <= 0.2 for c, _ in lora)
    assert all("lora_rank" in p for _, p in lora) and not any(
        "lora_rank" in p for c, p in drawn if c.strategy != "lora"
    )
    shown = used_parameters(lora[0][1])
    assert {"lora_rank", "lora_alpha", "lora_dropout", "backbone_lr"} <= set(shown) and "layer_decay" not in shown


def test_the_search_prunes_lora_of_a_backbone_without_targets_with_its_reason(tmp_path, digits_bundle):
    from automl_tl import SearchConfig as Search
    from automl_tl import run_search

    search = Search(
        backbones=("mobilenetv2_100",),
        strategies=("lora",),
        n_trials=2,
        max_epochs=1,
        heads=("linear",),
        input_options=SMALL,
        prerank=False,
        refit=False,
        ensemble=False,
        calibrate=False,
    )
    with pytest.raises(Exception) as raised:
        run_search(digits_bundle, search, tmp_path / "run")
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert list(board["strategy"]) == ["lora", "lora"] and set(board["state"]) == {"PRUNED"}
    assert all("not applicable: mobilenetv2_100 offers no layers for LoRA" in str(e) for e in board["error"])
    message = str(raised.value)
    assert "strategies asked for have nothing to train" in message and "offers no layers for LoRA" in message


def test_lora_of_a_timm_vision_transformer_adapts_its_qkv():
    from automl_tl_timm import TimmBackbone

    vit = TimmBackbone("vit_tiny_patch16_224", weights="none")  # no offline ViT: its architecture, random weights
    assert vit.lora_targets == ("qkv",) and TimmBackbone("mobilenetv2_100", weights="none").lora_targets == ()
    model = vit.build(num_classes=3, pretrained=False)
    set_trained_body(model, config(backbone=vit.name, strategy="lora"), vit.lora_targets)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([0, 2])).backward()
    with_grad = {n for n, p in model.body.named_parameters() if p.grad is not None}
    assert len(with_grad) == 12 * 2 and all(".attn.qkv.lora_" in n for n in with_grad)  # 12 blocks, A and B


def test_lora_of_a_transformers_audio_encoder_adapts_its_query_and_value(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from automl_tl_audio.hf_audio import TransformersAudioBackbone

    tiny = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(tiny).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path)
    backbone = TransformersAudioBackbone("test/wav2vec2", tmp_path)
    model = backbone.build(num_classes=4)
    pristine = {name: tensor.clone() for name, tensor in model.body.state_dict().items()}
    set_trained_body(model, config(backbone=backbone.name, strategy="lora", lora_rank=2), backbone.lora_targets)
    batch = backbone.preprocessor(InputOptions(clip_seconds=0.5)).collate([torch.randn(12000)] * 2, train=True)
    optimizer = torch.optim.AdamW(parameter_groups(model, config(strategy="lora", backbone_lr=1e-2)))
    model.train()
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 2])).backward()
    with_grad = {n for n, p in model.body.named_parameters() if p.grad is not None}
    assert len(with_grad) == 2 * 2 * 2 and all(".q_proj.lora_" in n or ".v_proj.lora_" in n for n in with_grad)
    optimizer.step()
    with torch.no_grad():
        adapted = model.eval()(batch)
    from automl_tl.train.lora import merge_adapters

    merge_adapters(model)
    assert set(model.body.state_dict()) == set(pristine)
    changed = {n for n, t in model.body.state_dict().items() if not torch.equal(t, pristine[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), adapted, atol=1e-5, rtol=1e-4)
