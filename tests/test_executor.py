"""The shared fine-tuning loop: freezing by depth, the schedule, callbacks, budgets, costs."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from automl_tl import Executor, InputOptions, TrialConfig
from automl_tl.registry import get_registry
from automl_tl.train.executor import (
    STOP_CALLBACK,
    STOP_COMPLETED,
    STOP_EARLY,
    STOP_TIME,
    WarmupCosine,
    parameter_groups,
)

OFFLINE_IMAGE_BACKBONES = ["mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
SMALL = InputOptions(image_size=32)


def config(**overrides) -> TrialConfig:
    values = dict(
        backbone="mobilenetv2_100", trained_groups=1, backbone_lr=1e-3, head_lr=1e-2, epochs=2, input_options=SMALL
    )
    return TrialConfig(**{**values, **overrides})


@pytest.mark.parametrize("name", OFFLINE_IMAGE_BACKBONES)
def test_trained_groups_train_exactly_the_last_groups(name):
    model = get_registry().get_backbone(name).build(num_classes=3, pretrained=False)
    n = model.num_groups
    assert n >= 4
    for depth in (0, 1, n // 2, n, n + 3):
        model.set_trained_groups(depth)
        model.zero_grad(set_to_none=True)
        model.train()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        expected = {f"body.{p}" for group in model.layer_groups[max(n - depth, 0) :] for p in group}
        expected |= {"head.weight", "head.bias"}
        assert with_grad == expected, f"depth {depth}"


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics():
    model = get_registry().get_backbone("mobilenetv2_100").build(num_classes=3, pretrained=False)
    model.set_trained_groups(1)
    model.train()
    trained = {p for p in model.layer_groups[-1]}
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model(torch.randn(4, 3, 32, 32))
    for module_name, module in model.body.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            is_trained = f"{module_name}.weight" in trained
            assert module.training == is_trained, module_name
            stats_changed = not torch.equal(before[f"body.{module_name}.running_mean"], module.running_mean)
            assert stats_changed == is_trained, module_name


def test_warmup_then_cosine_schedule():
    factor = WarmupCosine(total_steps=100, warmup_fraction=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5, abs=0.01)
    assert factor(99) < 0.01
    assert all(factor(s) >= factor(s + 1) for s in range(10, 99))


def test_head_and_body_get_their_own_learning_rates_and_no_decay_on_norms():
    model = get_registry().get_backbone("mobilenetv2_100").build(num_classes=3, pretrained=False)
    model.set_trained_groups(2)
    groups = parameter_groups(model, config(trained_groups=2, backbone_lr=1e-4, head_lr=5e-2))
    head_ids = {id(p) for p in model.head.parameters()}
    for group in groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == (5e-2 if in_head == {True} else 1e-4)
        assert group["weight_decay"] == (0.0 if all(p.ndim < 2 for p in group["params"]) else 0.01)
    counted = sum(len(g["params"]) for g in groups)
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)


def test_fit_trains_only_unfrozen_weights_and_records_cost(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    pretrained = backbone.build(num_classes=10).state_dict()
    seen_epochs = []
    result = Executor(show_progress=False).fit(
        config(), backbone, digits_bundle, on_epoch=lambda e, acc: seen_epochs.append((e, acc)) and False
    )
    assert result.stop_reason == STOP_COMPLETED
    assert [e for e, _ in seen_epochs] == [1, 2]
    assert [r.val_accuracy for r in result.history] == [acc for _, acc in seen_epochs]
    assert result.samples_seen == 2 * len(digits_bundle.train)
    assert result.seconds > 0 and result.cpu_seconds > 0
    assert result.best_val_accuracy > 0.3
    last_group = {f"body.{n}" for n in result.model.layer_groups[-1]}
    for name, tensor in result.model.state_dict().items():
        if name.startswith("body.") and name.endswith("weight"):
            changed = not torch.equal(tensor, pretrained[name])
            assert changed == (name in last_group), name


def test_callback_can_stop_a_trial(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    result = Executor(show_progress=False).fit(config(epochs=3), backbone, digits_bundle, on_epoch=lambda e, a: True)
    assert result.stop_reason == STOP_CALLBACK
    assert len(result.history) == 1 and result.model is not None


def test_deadline_stops_within_the_epoch(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    result = Executor(show_progress=False).fit(config(), backbone, digits_bundle, deadline=time.monotonic() - 1)
    assert result.stop_reason == STOP_TIME
    assert result.history == [] and result.model is None and result.samples_seen == 0


def test_early_stopping_when_validation_stops_improving(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    # Learning rates so small that accuracy cannot change: patience 2 stops after epoch 3 of 6.
    frozen = config(trained_groups=0, head_lr=1e-12, backbone_lr=1e-12, epochs=6, early_stopping_patience=2)
    result = Executor(show_progress=False).fit(frozen, backbone, digits_bundle)
    assert result.stop_reason == STOP_EARLY
    assert len(result.history) == 3 and result.best_epoch == 1


def test_encodings_are_computed_once_and_shared_between_trials(digits_bundle):
    executor = Executor(show_progress=False)
    backbone = get_registry().get_backbone("mobilenetv2_100")
    preprocessor = backbone.preprocessor(SMALL)
    first = executor.encoded(preprocessor, digits_bundle, digits_bundle.train)
    again = executor.encoded(backbone.preprocessor(SMALL), digits_bundle, digits_bundle.train)
    assert again is first
    other_size = executor.encoded(
        backbone.preprocessor(InputOptions(image_size=48)), digits_bundle, digits_bundle.train
    )
    assert other_size is not first and other_size[0].shape == (3, 48, 48)


def test_cpu_inference_embeds_large_images_channels_last_in_chunks_of_eight_and_gets_the_same_rows(digits_frame):
    from automl_tl.train.device import CPU_IMAGE_CHUNK, batched_inference, move_to, on_device
    from automl_tl.train.feature_cache import pretrained_model

    backbone = get_registry().get_backbone("mobilenetv2_100")
    cpu = torch.device("cpu")
    model = pretrained_model(backbone, cpu)
    assert model.body.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)  # on_device's layout
    large, small = (backbone.preprocessor(InputOptions(image_size=size)) for size in (128, 32))
    images = list(digits_frame["image"][:20])
    seen: list[tuple[int, bool]] = []

    def embed(batch: torch.Tensor) -> torch.Tensor:
        seen.append((len(batch), batch.is_contiguous(memory_format=torch.channels_last)))
        return model.embed(batch)

    with torch.no_grad():
        chunked = batched_inference(embed, large, large.encode(images), 64, cpu)
        one_by_one = torch.cat(
            [model.embed(move_to(large.collate([item], train=False), cpu)) for item in large.encode(images)]
        )
        assert seen == [(CPU_IMAGE_CHUNK, True), (CPU_IMAGE_CHUNK, True), (20 - 2 * CPU_IMAGE_CHUNK, True)]
        assert torch.allclose(chunked, one_by_one, atol=1e-4)
        seen.clear()
        batched_inference(embed, small, small.encode(images), 64, cpu)  # small images: one batch, as asked
        assert seen == [(20, True)]
    text = on_device(get_registry().get_backbone("all-MiniLM-L6-v2").build(num_classes=2), cpu)
    assert all(p.is_contiguous() for p in text.parameters())  # nothing 4-D: a text model is left as it is
