"""Adaptation strategies and head structures in the executor: linear probe on cached features,
last-k, full fine-tuning, LP-FT, layer-wise learning-rate decay, linear and MLP heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from automl_tl import Executor, InputOptions, TrialConfig
from automl_tl.errors import ConfigError
from automl_tl.heads import HeadSpec
from automl_tl.registry import get_registry
from automl_tl.results.model_io import load_model_dir, save_model
from automl_tl.train.executor import parameter_groups, predict_logits
from automl_tl.train.feature_cache import FeatureCache

SMALL = InputOptions(image_size=32)


def config(**overrides) -> TrialConfig:
    values = dict(
        backbone="mobilenetv2_100", trained_groups=1, backbone_lr=1e-3, head_lr=1e-2, epochs=2, input_options=SMALL
    )
    return TrialConfig(**{**values, **overrides})


@pytest.fixture
def executor(tmp_path):
    return Executor(show_progress=False, feature_cache=FeatureCache(tmp_path / "features"))


def body_state(model):
    return {k: v.clone() for k, v in model.body.state_dict().items()}


@pytest.fixture
def held_out_bundle(digits_bundle):
    """The digits, every trial validated on the validation split (as on data with 30+ validation examples per
    class): what these tests look at is how each strategy trains, not how small data are cross-validated."""
    return dataclasses.replace(digits_bundle, min_validation_per_class=0)


def test_linear_probe_trains_the_head_on_cached_features_only(executor, held_out_bundle):
    digits_bundle = held_out_bundle
    backbone = get_registry().get_backbone("mobilenetv2_100")
    result = executor.fit(config(strategy="linear_probe", epochs=2, probe_passes=5), backbone, digits_bundle)
    assert executor.feature_cache.misses == 2 and executor.feature_cache.hits == 0  # train and val, once
    assert len(result.history) == 2 and result.model is None and result.has_model
    assert result.samples_seen == 2 * 5 * len(digits_bundle.train)
    model = result.final_model()
    pristine = backbone.build(num_classes=10)
    for name, tensor in pristine.body.state_dict().items():
        assert torch.equal(tensor, model.body.state_dict()[name]), name  # the body never trained
    # The cached features are exactly what the body computes: the model's validation accuracy
    # through the whole network equals the one the probe measured on features.
    preprocessor = backbone.preprocessor(SMALL)
    logits = predict_logits(
        model, preprocessor, executor.encoded(preprocessor, digits_bundle, digits_bundle.val), 64, executor.device
    )
    accuracy = (logits.argmax(1).numpy() == digits_bundle.val.labels).mean()
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1e-6)
    assert accuracy > 0.5  # pretrained features separate digits far above chance (0.1)

    again = executor.fit(config(strategy="linear_probe", epochs=2, probe_passes=5), backbone, digits_bundle)
    assert executor.feature_cache.hits == 2 and executor.feature_cache.misses == 2
    assert again.best_val_accuracy == result.best_val_accuracy  # same seed, same features: same probe


def test_without_the_cache_features_are_computed_for_every_trial(tmp_path, digits_bundle):
    executor = Executor(show_progress=False, feature_cache=FeatureCache(tmp_path, enabled=False))
    backbone = get_registry().get_backbone("mobilenetv2_100")
    for _ in range(2):
        executor.fit(config(strategy="linear_probe", epochs=1, probe_passes=1), backbone, digits_bundle)
    assert executor.feature_cache.misses == 4 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("strategy, depth, expected", [("last_k", 2, 2), ("full", 1, None), ("last_k", 0, 0)])
def test_fine_tuning_strategies_train_the_right_groups(executor, digits_bundle, strategy, depth, expected):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    pristine = backbone.build(num_classes=10)
    result = executor.fit(config(strategy=strategy, trained_groups=depth, epochs=1), backbone, digits_bundle)
    groups = result.model.layer_groups
    trained_groups = len(groups) if expected is None else expected
    trained = {name for group in groups[len(groups) - trained_groups :] for name in group}
    for name, tensor in pristine.body.named_parameters():
        changed = not torch.equal(tensor, dict(result.model.body.named_parameters())[name])
        assert changed == (name in trained), name


def test_lp_ft_starts_fine_tuning_from_the_probed_head(executor, held_out_bundle):
    digits_bundle = held_out_bundle
    backbone = get_registry().get_backbone("mobilenetv2_100")
    probe = executor.fit(config(strategy="linear_probe", epochs=1, probe_passes=10), backbone, digits_bundle)
    # At a vanishing fine-tuning rate, LP-FT is its probe: the head is carried over, and the
    # normalisation statistics stay those the probe's features were computed with.
    lp_ft = executor.fit(config(strategy="lp_ft", epochs=1, probe_passes=10, backbone_lr=1e-8), backbone, digits_bundle)
    assert lp_ft.extra["probe_val_accuracy"] == pytest.approx(probe.best_val_accuracy)
    assert lp_ft.best_val_accuracy == pytest.approx(probe.best_val_accuracy, abs=1.5 / len(digits_bundle.val))
    scratch = executor.fit(
        config(strategy="last_k", trained_groups=1, epochs=1, backbone_lr=1e-8, head_lr=1e-8), backbone, digits_bundle
    )
    assert scratch.best_val_accuracy < probe.best_val_accuracy - 0.3  # a random head is near chance


def test_layer_wise_learning_rate_decay():
    model = get_registry().get_backbone("mobilenetv2_100").build(num_classes=3, pretrained=False)
    model.set_trained_groups(3)
    groups = parameter_groups(model, config(backbone_lr=1e-3, head_lr=5e-2, layer_decay=0.5))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert {lr_of[id(p)] for p in model.head.parameters()} == {5e-2}
    body = dict(model.body.named_parameters())
    for distance, names in enumerate(reversed(model.layer_groups[-3:])):
        assert {lr_of[id(body[n])] for n in names} == {1e-3 * 0.5**distance}
    frozen = [body[n] for group in model.layer_groups[:-3] for n in group]
    assert not any(id(p) in lr_of for p in frozen)


@pytest.mark.parametrize("strategy", ["linear_probe", "last_k"])
def test_mlp_head_is_trained_saved_and_loaded(executor, digits_bundle, tmp_path, strategy):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    head = HeadSpec(kind="mlp", hidden=48, dropout=0.2)
    result = executor.fit(config(strategy=strategy, head=head, epochs=1), backbone, digits_bundle)
    model = result.final_model()
    assert [type(m).__name__ for m in model.head] == ["Linear", "GELU", "Dropout", "Linear"]
    assert model.head[0].out_features == 48 and model.head[2].p == 0.2
    save_model(
        model,
        tmp_path / "model",
        {
            "backbone": backbone.describe(),
            "head": head.to_dict(),
            "classes": digits_bundle.classes,
            "input_column": "image",
            "input_options": {"image_size": 32},
            "preprocessing": backbone.preprocessor(SMALL).describe(),
        },
    )
    loaded = load_model_dir(tmp_path / "model", executor.device)
    preprocessor = backbone.preprocessor(SMALL)
    items = executor.encoded(preprocessor, digits_bundle, digits_bundle.test)
    torch.testing.assert_close(
        predict_logits(loaded.model, preprocessor, items, 64, executor.device),
        predict_logits(model, preprocessor, items, 64, executor.device),
    )


def test_trial_config_refuses_unknown_choices():
    with pytest.raises(ConfigError, match="unknown strategy 'freeze_all'"):
        config(strategy="freeze_all")
    with pytest.raises(ConfigError, match="decay must be in"):
        config(layer_decay=1.5)
    with pytest.raises(ValueError, match="unknown head kind 'transformer'"):
        HeadSpec(kind="transformer")


def test_validation_past_the_deadline_is_not_counted(executor, digits_bundle):
    import time

    from automl_tl.train.device import DeadlineReached

    backbone = get_registry().get_backbone("mobilenetv2_100")
    model = backbone.build(num_classes=10)
    preprocessor = backbone.preprocessor(SMALL)
    items = executor.encoded(preprocessor, digits_bundle, digits_bundle.val)
    with pytest.raises(DeadlineReached, match="prediction stopped after 0 of"):
        predict_logits(model, preprocessor, items, 8, executor.device, deadline=time.monotonic() - 1)
    assert predict_logits(model, preprocessor, items, 8, executor.device, deadline=time.monotonic() + 60).shape == (
        len(items),
        10,
    )


def test_a_batch_that_would_end_past_the_deadline_is_not_begun(executor, digits_bundle):
    import time

    from automl_tl.train.device import DeadlineReached, batched_inference

    backbone = get_registry().get_backbone("mobilenetv2_100")
    model = backbone.build(num_classes=10).eval()
    preprocessor = backbone.preprocessor(SMALL)
    items = executor.encoded(preprocessor, digits_bundle, digits_bundle.val)

    def slow_forward(batch):  # a batch that takes half a second, as a large backbone's would
        time.sleep(0.5)
        return model(batch)

    started = time.monotonic()
    # the second batch would begin at about 0.5 s and, as long as the first, end past the deadline at 0.8 s
    with pytest.raises(DeadlineReached, match=f"prediction stopped after 8 of {len(items)}"):
        batched_inference(slow_forward, preprocessor, items, 8, executor.device, started + 0.8, what="prediction")
