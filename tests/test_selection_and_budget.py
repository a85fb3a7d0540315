"""Every label used and the budget kept: the selection metric, cross-validated cheap trials on small
validation splits, ties broken by validation loss, the refit on training + validation, a timeout that covers
the whole search, and no waiting trials left behind."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from automl_tl import InputOptions, SearchConfig, prepare_dataset, run_search
from automl_tl.config import TrialConfig
from automl_tl.data.bundle import AUTO_TEST_MIN_EXAMPLES, resolve_test_fraction
from automl_tl.metrics import class_weights, default_metric, metric_value, signed, uses_class_weights
from automl_tl.registry import get_registry
from automl_tl.results.report import leaderboard
from automl_tl.train.device import frozen_heap
from automl_tl.train.executor import (
    FITTED_ON_TRAIN_AND_VAL,
    STOP_OVER_BUDGET,
    STOP_TIME,
    VALIDATED_BY_CROSS_VALIDATION,
    Executor,
    cheaper_trial,
)
from automl_tl.train.feature_cache import FeatureCache

SMALL = InputOptions(image_size=32)


@pytest.fixture
def executor(tmp_path):
    return Executor(show_progress=False, feature_cache=FeatureCache(tmp_path / "features"))


def trial_config(**overrides) -> TrialConfig:
    values = dict(
        backbone="mobilenetv2_100", trained_groups=1, backbone_lr=1e-3, head_lr=1e-2, epochs=2, input_options=SMALL
    )
    return TrialConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def imbalanced_frame(digits_frame):
    """Digits 0-2 of the real digits set, 24 zeros against 6 ones and 6 twos: imbalanced 4 to 1."""
    parts = [digits_frame[digits_frame.label == 0]]
    parts += [digits_frame[digits_frame.label == k].head(6) for k in (1, 2)]
    return pd.concat(parts).reset_index(drop=True)


# ---------------------------------------------------------------- metrics


def test_imbalanced_labels_default_to_balanced_accuracy_and_class_weights():
    balanced, skewed = np.repeat([0, 1, 2], 10), np.repeat([0, 1, 2], [30, 10, 9])
    assert default_metric(balanced, 3) == "accuracy" and not uses_class_weights("accuracy", balanced, 3)
    assert default_metric(skewed, 3) == "balanced_accuracy"
    assert uses_class_weights("balanced_accuracy", skewed, 3)
    assert not uses_class_weights("accuracy", skewed, 3)  # asked for accuracy: the frequent classes count more
    weights = class_weights(skewed, 3)
    assert torch.allclose(weights * torch.tensor([30.0, 10.0, 9.0]), torch.full((3,), 49 / 3))


def test_log_loss_is_minimised_and_the_others_maximised():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    labels = np.array([0, 1, 1])
    assert metric_value("accuracy", logits, labels) == pytest.approx(2 / 3)
    assert metric_value("balanced_accuracy", logits, labels) == pytest.approx(0.75)
    loss = metric_value("log_loss", logits, labels)
    assert loss > 0 and signed("log_loss", loss) == -loss and signed("macro_f1", 0.5) == 0.5


def test_ties_in_score_go_to_the_lower_validation_loss_not_the_first_trial(tmp_path):
    study = optuna.create_study(direction="maximize")
    for number, loss in enumerate((0.9, 0.3, 0.6)):  # the same accuracy, three losses
        study.add_trial(
            optuna.trial.create_trial(
                params={"backbone": "b"},
                distributions={"backbone": optuna.distributions.CategoricalDistribution(["b"])},
                value=0.8,
                user_attrs={
                    "best_val_accuracy": 0.8,
                    "best_val_score": 0.8,
                    "best_val_loss": loss,
                    "metric": "accuracy",
                },
            )
        )
    assert leaderboard(study)["trial"].tolist() == [1, 2, 0]


# ---------------------------------------------------------------- every label used


def test_test_part_is_held_out_only_from_two_thousand_labelled_examples():
    assert resolve_test_fraction(None, AUTO_TEST_MIN_EXAMPLES - 1) == 0.0
    assert resolve_test_fraction(None, AUTO_TEST_MIN_EXAMPLES) == 0.15
    assert resolve_test_fraction(0.3, 10) == 0.3


def test_cheap_trials_on_a_small_validation_split_are_cross_validated_and_fitted_on_every_label(
    executor, digits_bundle
):
    assert digits_bundle.small_validation  # 3-4 validation digits per class
    backbone = get_registry().get_backbone("mobilenetv2_100")
    every = len(digits_bundle.train) + len(digits_bundle.val)
    for strategy in ("linear_probe", "logistic_regression", "nearest_centroid"):
        result = executor.fit(trial_config(strategy=strategy, probe_passes=3), backbone, digits_bundle)
        assert result.extra["validation"] == VALIDATED_BY_CROSS_VALIDATION, strategy
        assert result.extra["fitted_on"] == FITTED_ON_TRAIN_AND_VAL, strategy
        assert 0.3 < result.best_val_accuracy <= 1.0, strategy
        model = result.final_model()
        assert model is not None
    # the probe's final head learnt from every labelled example, for as many epochs as scored best
    assert result.samples_seen == every  # nearest centroid: one pass over all of them
    held_out = dataclasses.replace(digits_bundle, min_validation_per_class=0)
    result = executor.fit(trial_config(strategy="logistic_regression"), backbone, held_out)
    assert result.extra["validation"] == "holdout" and "fitted_on" not in result.extra
    assert result.samples_seen == len(digits_bundle.train)


def test_a_refit_trains_on_training_and_validation_for_the_given_epochs(executor, digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    result = executor.fit(trial_config(strategy="last_k", epochs=2), backbone, digits_bundle, refit=True)
    every = len(digits_bundle.train) + len(digits_bundle.val)
    assert result.samples_seen == 2 * every and len(result.history) == 2
    assert result.extra["fitted_on"] == FITTED_ON_TRAIN_AND_VAL and result.model is not None
    assert all(math.isnan(r.val_loss) for r in result.history)  # nothing was held out to validate on


def test_search_refits_the_best_configuration_and_says_which_model_was_tested(tmp_path, digits_frame):
    data = prepare_dataset(digits_frame, label_column="label", input_column="image", seed=0, test_fraction=0.2)
    config = SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=2,
        max_epochs=2,
        strategies=("last_k",),
        max_trained_groups=1,
        prerank=False,
        input_options=SMALL,
    )
    outcome = run_search(data, config, tmp_path / "refit", Executor(show_progress=False))
    saved = json.loads((tmp_path / "refit" / "best_model" / "config.json").read_text())
    metrics = json.loads((tmp_path / "refit" / "best_model" / "metrics.json").read_text())
    assert saved["fitted_on"] == FITTED_ON_TRAIN_AND_VAL and saved["refit_epochs"] == saved["best_epoch"]
    assert metrics["model"]["fitted_on"] == FITTED_ON_TRAIN_AND_VAL and "refitted" in metrics["model"]["refit"]
    assert metrics["test"]["examples"] == len(data.test) and outcome.test_metrics is not None
    # the validation figures are the trial's, measured before the refit saw the validation split
    assert metrics["validation"]["accuracy"] == pytest.approx(outcome.best_val_accuracy)
    card = (tmp_path / "refit" / "MODEL_CARD.md").read_text()
    assert "training + validation" in card

    kept = run_search(data, dataclasses.replace(config, refit=False), tmp_path / "kept", Executor(show_progress=False))
    saved = json.loads((tmp_path / "kept" / "best_model" / "config.json").read_text())
    assert saved["fitted_on"] == "train" and kept.best_params == outcome.best_params


def test_imbalanced_data_are_selected_by_balanced_accuracy_with_a_class_weighted_loss(tmp_path, imbalanced_frame):
    data = prepare_dataset(imbalanced_frame, label_column="label", input_column="image", seed=0)
    config = SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=2,
        strategies=("logistic_regression",),
        prerank=False,
        input_options=SMALL,
    )
    run_search(data, config, tmp_path / "run", Executor(show_progress=False))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metric"] == "balanced_accuracy" and summary["class_weighted_loss"] is True
    assert summary["metric_chosen"] == "default for the data"
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    complete = board[board.state == "COMPLETE"]
    assert (complete["val_score"] == summary["val_score"]).any()
    assert summary["validation"]["balanced_accuracy"] == pytest.approx(summary["val_score"])
    # asked for outright, the metric is the user's: plain loss
    run_search(data, dataclasses.replace(config, metric="log_loss"), tmp_path / "loss", Executor(show_progress=False))
    summary = json.loads((tmp_path / "loss" / "summary.json").read_text())
    assert summary["metric"] == "log_loss" and summary["class_weighted_loss"] is False
    board = pd.read_csv(tmp_path / "loss" / "leaderboard.csv").dropna(subset=["val_score"])
    assert board["val_score"].is_monotonic_increasing  # the lowest log loss first


# ---------------------------------------------------------------- the budget


def test_a_fine_tuning_epoch_that_cannot_end_in_time_stops_after_its_first_batches(executor, digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    # 170 single-image steps of full fine-tuning at 224 px: far more than the 10 s given
    config = trial_config(strategy="full", epochs=1, batch_size=1, input_options=InputOptions(image_size=224))
    budget = 10.0
    started = time.monotonic()
    result = executor.fit(config, backbone, digits_bundle, deadline=started + budget)
    # measured, not run: then the cheaper configurations, a smaller image first, each stopped the same way
    assert result.extra["adapted"][0].startswith("image size 224 -> 112 (one epoch would have taken about")
    if result.has_model:  # a smaller image (or fewer layers) fitted what was left
        assert result.config.input_options.image_size < 224 or result.config.strategy == "last_k"
    else:
        assert result.stop_reason in (STOP_OVER_BUDGET, STOP_TIME)
        assert result.samples_seen <= 3 * (2 + 2)  # a few batches an attempt, never a whole epoch
    assert time.monotonic() - started < budget + 5.0


def test_a_trial_whose_epochs_do_not_all_fit_is_replanned_to_fewer_epochs(executor, digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    config = trial_config(strategy="last_k", trained_groups=0, epochs=60, early_stopping_patience=60, batch_size=16)
    budget = 12.0
    started = time.monotonic()
    result = executor.fit(config, backbone, digits_bundle, deadline=started + budget)
    elapsed = time.monotonic() - started
    assert result.has_model
    fitted = result.extra["epochs_fitted"]
    assert 1 <= fitted < 60 and result.config.epochs == fitted  # the result says what ran
    assert result.extra["adapted"] == [
        f"epochs 60 -> {fitted} (one takes about {result.extra['projected_epoch_seconds']:.0f}s)"
    ]
    # the whole (shorter) schedule ran: no epoch was cut off by the deadline
    assert result.stop_reason != STOP_TIME and len(result.history) == fitted
    assert elapsed < budget + 5.0


def test_a_trial_over_budget_at_its_image_size_runs_at_a_smaller_one(executor, digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    for size in (160, 80, 40):  # encoded beforehand, as an earlier trial would have: the attempts cost their steps
        for split in (digits_bundle.train, digits_bundle.val):
            executor.encoded(backbone.preprocessor(InputOptions(image_size=size)), digits_bundle, split)
    small = trial_config(strategy="full", epochs=1, batch_size=16, input_options=InputOptions(image_size=40))
    epoch = executor.fit(small, backbone, digits_bundle).history[0]
    one_epoch_at_40 = epoch.train_seconds + epoch.val_seconds
    # 160 px has 16 times the pixels of 40 px (an epoch costs 4 times more or so on a CPU, where the small sizes
    # pay their overheads): it cannot fit the time of 3.5 epochs at 40 px, and each smaller attempt costs a second.
    # Inside a frozen heap, as in a search: the test process's heap (every earlier test's objects) would make the
    # trial's garbage collection cost a second of its own.
    with frozen_heap():
        started = time.monotonic()
        result = executor.fit(
            dataclasses.replace(small, input_options=InputOptions(image_size=160)),
            backbone,
            digits_bundle,
            deadline=started + 3.5 * one_epoch_at_40,
        )
        elapsed = time.monotonic() - started
    assert result.extra["adapted"][0].startswith("image size 160 -> 80 (one epoch would have taken about")
    if result.has_model:  # 80 px fitted (or 40 px, after 80 px was over budget too)
        assert result.stop_reason != STOP_OVER_BUDGET and len(result.history) == 1
        assert result.config.input_options.image_size == {1: 80, 2: 40}[len(result.extra["adapted"])]
    else:  # the machine was slower than measured: 80 px and 40 px were over budget too, and said so
        assert result.extra["adapted"][1].startswith("image size 80 -> 40")
    assert result.seconds == pytest.approx(elapsed, abs=0.5)  # every attempt counts in the trial's cost
    assert elapsed < 3.5 * one_epoch_at_40 + 2.0


def test_a_search_collects_garbage_without_walking_the_objects_from_before_it(tmp_path, digits_frame):
    data = prepare_dataset(digits_frame, label_column="label", input_column="image", seed=0, test_fraction=0.2)
    config = SearchConfig(
        backbones=("mobilenetv2_100",), strategies=("full",), n_trials=1, max_epochs=1, input_options=SMALL
    )
    frozen_at_collections: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            frozen_at_collections.append(gc.get_freeze_count())

    gc.callbacks.append(record)
    try:
        outcome = run_search(data, config, tmp_path / "run", Executor(show_progress=False))
    finally:
        gc.callbacks.remove(record)
    assert outcome.best_params["strategy"] == "full"
    # the trial's and the refit's collections (the body trained: its optimizer is freed) skip the frozen objects
    assert sum(count > 0 for count in frozen_at_collections) >= 2
    assert gc.get_freeze_count() == 0  # handed back to the collector once the search ends


def test_a_heap_frozen_by_the_caller_stays_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        # Objects made after the caller froze the heap: freezing it again would add them all to the count.
        # (A frozen object that dies leaves the count, so it may fall by a few: it must not grow or empty.)
        made_after = [[index] for index in range(10_000)]
        with frozen_heap():
            assert frozen - 1_000 < gc.get_freeze_count() <= frozen
        assert frozen - 1_000 < gc.get_freeze_count() <= frozen
        del made_after
    finally:
        gc.unfreeze()
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_cheaper_trials_shrink_the_input_first_then_the_trained_layers():
    images = get_registry().get_backbone("mobilenetv2_100")
    config = trial_config(strategy="full", input_options=InputOptions(image_size=64))
    cheaper, change = cheaper_trial(config, images, layer_groups=8)
    assert cheaper.input_options.image_size == 32 and change == "image size 64 -> 32"
    assert cheaper.strategy == "full"
    # below 32 px no smaller image is offered: half the trained layer groups instead
    cheaper, change = cheaper_trial(cheaper, images, layer_groups=8)
    assert (cheaper.strategy, cheaper.trained_groups, change) == ("last_k", 4, "8 -> 4 trained layer groups")
    assert cheaper_trial(trial_config(strategy="lp_ft", trained_groups=1), images, layer_groups=8) is None
    assert cheaper_trial(trial_config(strategy="linear_probe"), images, layer_groups=8) is None
    text = get_registry().get_backbone("all-MiniLM-L6-v2")
    cheaper, change = cheaper_trial(
        trial_config(backbone="all-MiniLM-L6-v2", strategy="lp_ft", trained_groups=2, input_options=InputOptions()),
        text,
        layer_groups=7,
    )
    assert cheaper.input_options.max_length == 128 and change == "max length 256 -> 128 tokens"


def test_the_timeout_covers_the_whole_search_and_leaves_no_waiting_trials(tmp_path, digits_frame):
    data = prepare_dataset(digits_frame, label_column="label", input_column="image", seed=0, test_fraction=0.2)
    budget = 25.0
    config = SearchConfig(
        backbones=("mobilenetv2_100", "tf_efficientnet_lite0"),
        n_trials=None,
        timeout=budget,
        max_epochs=2,
        input_options=SMALL,
    )
    started = time.monotonic()
    outcome = run_search(data, config, tmp_path / "run", Executor(show_progress=False))
    elapsed = time.monotonic() - started
    # at most one batch and one save past the budget (a loaded machine gets a few seconds' grace)
    assert elapsed <= budget + 5.0
    states = {t.state for t in outcome.study.trials}
    assert optuna.trial.TrialState.WAITING not in states
    # without a number of trials, the search runs until the budget, not to a default count
    finished = [
        t for t in outcome.study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) >= 4
    assert outcome.study.trials[0].user_attrs.get("warm_start")


def test_a_refit_whose_training_loss_ends_far_above_its_trials_is_not_kept(tmp_path, digits_frame):
    """A refit validates nothing: a fine-tune that diverged on training + validation (at a learning rate its trial
    survived) must not replace the trial's model. Checked on the loss both fits report on the data they learnt."""
    from automl_tl.search.study import Search

    data = prepare_dataset(digits_frame, label_column="label", input_column="image", seed=0, test_fraction=0)
    config = SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=1,
        max_epochs=2,
        strategies=("last_k",),
        max_trained_groups=1,
        prerank=False,
        refit=False,
        ensemble=False,
        input_options=SMALL,
    )
    run_dir = tmp_path / "run"
    run_search(data, config, run_dir, Executor(show_progress=False))
    saved_path = run_dir / "best_model" / "config.json"
    saved = json.loads(saved_path.read_text())
    assert saved["fitted_on"] == "train" and saved["train_loss"] > 0
    search = Search(data, dataclasses.replace(config, refit=True), run_dir, Executor(show_progress=False))
    # as if the trial had fitted its data almost perfectly: the refit's honest loss is then far above it
    saved_path.write_text(json.dumps({**saved, "train_loss": 1e-4}))
    outcome = search._refit_best()
    assert outcome.startswith("not kept") and "diverged" in outcome
    assert json.loads(saved_path.read_text())["fitted_on"] == "train"  # the trial's model stays
    # with the trial's own loss, the same refit is kept
    saved_path.write_text(json.dumps(saved))
    assert search._refit_best().startswith("refitted")
    assert json.loads(saved_path.read_text())["fitted_on"] == FITTED_ON_TRAIN_AND_VAL
