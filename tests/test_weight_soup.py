"""A fine-tuning trial's greedy weight soup of its best epochs (automl_tl.train.weight_soup)."""

from __future__ import annotations

import time

import pytest
import torch

from automl_tl import Executor, InputOptions, TrialConfig
from automl_tl.registry import get_registry
from automl_tl.train.executor import FITTED_ON_TRAIN_AND_VAL, accuracy, predict_logits
from automl_tl.train.weight_soup import NO_TIME, NOT_BETTER, Checkpoints, average_states, changing_state_keys

SMALL = InputOptions(image_size=32)
WATCHED = "head.weight"  # a trained tensor, to compare with each epoch's


class EpochWatchingExecutor(Executor):
    """The real executor, holding on to the model it builds so that a test can copy its weights after each epoch."""

    def _build(self, backbone, config, num_classes):
        self.built = super()._build(backbone, config, num_classes)
        return self.built


def config(**overrides) -> TrialConfig:
    values = dict(
        backbone="mobilenetv2_100",
        trained_groups=1,
        backbone_lr=1e-3,
        head_lr=1e-2,
        epochs=4,
        early_stopping_patience=10,
        input_options=SMALL,
    )
    return TrialConfig(**{**values, **overrides})


def revalidated(result, backbone, data) -> torch.Tensor:
    preprocessor = backbone.preprocessor(SMALL)
    items = Executor(show_progress=False).encoded(preprocessor, data, data.val)
    return predict_logits(result.model, preprocessor, items, 16, torch.device("cpu"))


def test_a_fine_tune_keeps_the_average_of_its_best_epochs_when_it_validates_better(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    executor = EpochWatchingExecutor(show_progress=False)
    by_epoch: dict[int, torch.Tensor] = {}

    def watch(epoch: int, score: float) -> bool:
        by_epoch[epoch] = executor.built.state_dict()[WATCHED].detach().clone()
        return False

    # ten epochs: accuracy plateaus from the fifth, and averaging the fifth with a later one validates no worse
    result = executor.fit(config(epochs=10), backbone, digits_bundle, on_epoch=watch)
    soup = result.extra["weight_soup"]
    assert len(result.history) == 10 and "ingredients" in soup, soup
    ingredients = soup["ingredients"]
    assert len(ingredients) >= 2 and ingredients[0] == max(result.history, key=lambda r: r.rank_key).epoch
    assert soup["best_single"] == max(r.val_score for r in result.history)
    assert soup["val_score"] >= soup["best_single"]
    mean = torch.stack([by_epoch[epoch] for epoch in ingredients]).mean(dim=0)
    torch.testing.assert_close(result.model.state_dict()[WATCHED], mean)
    # the trial's score is the soup's, and the saved model validates as reported
    assert result.best_record is result.soup_record and result.best_score == soup["val_score"]
    assert result.best_epoch == ingredients[0]  # the refit trains as long as without the soup
    logits = revalidated(result, backbone, digits_bundle)
    assert accuracy(logits, digits_bundle.val.labels) == pytest.approx(result.best_val_accuracy)
    torch.testing.assert_close(logits, result.best_record.val_logits, atol=1e-4, rtol=1e-4)
    assert [r.epoch for r in result.history] == list(range(1, 11))  # the epochs' own records are untouched


def test_a_rejected_soup_leaves_the_best_epoch(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    executor = EpochWatchingExecutor(show_progress=False)
    by_epoch: dict[int, torch.Tensor] = {}

    def watch(epoch: int, score: float) -> bool:
        by_epoch[epoch] = executor.built.state_dict()[WATCHED].detach().clone()
        return False

    # four epochs, each much better than the one before: averaging in an earlier one validates worse
    result = executor.fit(config(), backbone, digits_bundle, on_epoch=watch)
    soup = result.extra["weight_soup"]
    assert soup["reason"] == NOT_BETTER and result.soup_record is None
    torch.testing.assert_close(result.model.state_dict()[WATCHED], by_epoch[result.best_epoch])


def test_a_refit_makes_no_soup(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    result = Executor(show_progress=False).fit(config(epochs=3), backbone, digits_bundle, refit=True)
    assert result.extra["fitted_on"] == FITTED_ON_TRAIN_AND_VAL
    assert "weight_soup" not in result.extra and result.soup_record is None


def test_no_soup_when_the_deadline_leaves_no_time_to_validate_one(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    deadline = time.monotonic() + 9
    # left of the budget after the last epoch: less than a validation pass takes (0.05 s on a fast 2-core machine,
    # where CI once measured 0.050 s against a margin of 0.06; up to 0.3 s on a slow one)
    margin = 0.02

    def use_up_the_budget(epoch: int, score: float) -> bool:
        if epoch == 3:
            time.sleep(max(0.0, deadline - time.monotonic() - margin))
        return False

    result = Executor(show_progress=False).fit(
        # (64-pixel inputs: a validation pass takes longer than ``margin``)
        config(epochs=3, input_options=InputOptions(image_size=64)),
        backbone,
        digits_bundle,
        on_epoch=use_up_the_budget,
        deadline=deadline,
    )
    assert len(result.history) == 3, result.extra
    assert max(r.val_seconds for r in result.history) > margin
    assert result.extra["weight_soup"]["reason"] == NO_TIME
    assert result.extra["weight_soup"]["validated"] == 0  # none was begun, to be cut short or to end late
    assert result.soup_record is None and result.best_record in result.history


def test_checkpoints_keep_the_best_epochs_and_average_batch_norm_statistics_but_not_counters():
    norm = torch.nn.BatchNorm1d(2)
    checkpoints = Checkpoints(changing_state_keys(norm), rank=lambda score: score)
    for score in (0.2, 0.9, 0.5, 0.7):
        with torch.no_grad():
            norm.weight.fill_(score)
        norm.running_mean.fill_(10 * score)
        norm.num_batches_tracked.fill_(int(100 * score))
        checkpoints.offer(score, norm)
    assert [score for score, _ in checkpoints.kept] == [0.9, 0.7, 0.5]  # SOUP_CHECKPOINTS of them, best first
    soup = average_states([state for _, state in checkpoints.kept[:2]])
    torch.testing.assert_close(soup["weight"], torch.full((2,), 0.8))
    torch.testing.assert_close(soup["running_mean"], torch.full((2,), 8.0))
    assert soup["num_batches_tracked"].item() == 90  # the best's
    assert soup["weight"].device.type == "cpu"


def test_the_model_card_says_which_epochs_the_weights_average():
    from automl_tl.results.model_card import _model_section

    trial = TrialConfig("mobilenetv2_100", 1, 1e-3, 1e-2, 10).to_dict()
    souped = "\n".join(_model_section({"trial_config": trial, "best_epoch": 10, "soup_epochs": [5, 10]}, None))
    assert "weights averaged over epochs 5, 10 (a greedy weight soup) of 10" in souped
    single = "\n".join(_model_section({"trial_config": trial, "best_epoch": 5, "soup_epochs": None}, None))
    assert "best epoch 5 of 10" in single and "averaged" not in single
