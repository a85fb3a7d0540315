"""Transferability pre-ranking in the search: the ranking on real features, warm-start trials in rank
order, top-k, the report with Kendall tau, per-trial budgets, and the sampler choice."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from automl_tl import InputOptions, SearchConfig, search
from automl_tl.backbone import Backbone
from automl_tl.errors import ConfigError
from automl_tl.executor import Executor
from automl_tl.feature_cache import FeatureCache
from automl_tl.ranking import rank_backbones
from automl_tl.registry import get_registry

SMALL = InputOptions(image_size=32)
BACKBONES = ("mobilenetv2_100", "tf_efficientnet_lite0")


class Blind(Backbone):
    """A real architecture whose weights are all zero: its features carry no information about the input."""

    def __init__(self, real: Backbone):
        self.real, self.name, self.modality = real, f"{real.name}-blind", real.modality

    weight_source = "all zeros"

    @property
    def embedding_dim(self) -> int:
        return self.real.embedding_dim

    def build(self, num_classes: int, pretrained: bool = True):
        model = self.real.build(num_classes, pretrained=False)
        for parameter in model.body.parameters():
            parameter.data.zero_()
        return model

    def preprocessor(self, options):
        return self.real.preprocessor(options)


@pytest.fixture
def executor(tmp_path):
    return Executor(show_progress=False, feature_cache=FeatureCache(tmp_path / "features"))


def config(**overrides) -> SearchConfig:
    values = dict(backbones=BACKBONES, n_trials=4, seed=0, max_epochs=1, max_freeze_depth=1, input_options=SMALL)
    return SearchConfig(**{**values, **overrides})


def test_ranking_scores_each_backbone_on_its_cached_training_features(executor, digits_bundle):
    real = get_registry().get_backbone("tf_efficientnet_lite0")
    ranking = rank_backbones([Blind(real), real], digits_bundle, executor, SMALL)
    assert list(ranking["backbone"]) == ["tf_efficientnet_lite0", "tf_efficientnet_lite0-blind"]
    assert list(ranking["rank"]) == [1, 2]
    informed, blind = ranking.iloc[0], ranking.iloc[1]
    for score in ("logme", "h_score", "knn_accuracy"):
        assert informed[score] > blind[score], score
    assert informed["knn_accuracy"] > 0.5  # real digits, real ImageNet features; chance is 0.1
    # The scores are those of the cached features: asking again computes nothing.
    misses = executor.feature_cache.misses
    again = rank_backbones([real], digits_bundle, executor, SMALL)
    assert executor.feature_cache.misses == misses
    assert again.iloc[0]["logme"] == informed["logme"]


def test_search_tries_the_best_ranked_backbones_first_and_reports_the_ranking(tmp_path, digits_bundle, executor):
    outcome = search(digits_bundle, config(n_trials=6, strategies=("linear_probe", "lp_ft", "nearest_centroid")),
                     tmp_path / "run", executor)
    ranking = pd.read_csv(tmp_path / "run" / "transferability.csv")
    assert set(ranking["backbone"]) == set(BACKBONES)
    assert ranking["logme"].is_monotonic_decreasing
    trials = outcome.study.trials
    # Warm starts, cheapest first: a nearest centroid and then a probe of each backbone in rank order, then a
    # fine-tuning of the best-ranked one.
    order = list(ranking["backbone"])
    assert [t.params["backbone"] for t in trials[:5]] == [*order, *order, order[0]]
    assert [t.params["strategy"] for t in trials[:5]] == ["nearest_centroid"] * 2 + ["linear_probe"] * 2 + ["lp_ft"]
    assert all(t.user_attrs.get("warm_start") for t in trials[:5]) and not trials[5].user_attrs.get("warm_start")
    # Each backbone's best fine-tuned accuracy sits next to its scores, with the rank correlation.
    assert ranking["best_val_accuracy"].notna().all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["transferability"]["ranking"] == list(ranking["backbone"])
    assert set(summary["transferability"]["kendall_tau"]) == {"logme", "h_score", "knn_accuracy"}
    assert all(tau in (-1.0, 1.0) for tau in summary["transferability"]["kendall_tau"].values())  # two backbones
    assert "Kendall tau" in (tmp_path / "run" / "transferability.md").read_text()
    # The features the probes trained on were the ranking's: two backbones x (train, val) computed once.
    assert executor.feature_cache.misses == 4


def test_top_k_searches_only_the_best_ranked(tmp_path, digits_bundle, executor):
    outcome = search(digits_bundle, config(n_trials=3, top_k=1), tmp_path / "run", executor)
    top = outcome.transferability["ranking"][0]
    assert set(outcome.leaderboard["backbone"]) == {top}
    stored = outcome.study.user_attrs["search_space"]["backbones"]
    assert stored == [top]


def test_without_prerank_no_ranking_and_no_warm_starts(tmp_path, digits_bundle, executor):
    outcome = search(digits_bundle, config(n_trials=2, prerank=False, sampler="random"), tmp_path / "run", executor)
    assert outcome.transferability is None and not (tmp_path / "run" / "transferability.csv").exists()
    assert not any(t.user_attrs.get("warm_start") for t in outcome.study.trials)
    assert executor.feature_cache.misses + executor.feature_cache.hits <= 4  # only what probes asked for


def test_trial_timeout_is_a_hard_budget_per_trial(tmp_path, digits_bundle, executor):
    started = time.monotonic()
    outcome = search(digits_bundle, config(n_trials=2, max_epochs=50, trial_timeout=6, prerank=False,
                                           strategies=("full",), max_freeze_depth=None, pruner="none"),
                     tmp_path / "run", executor)
    board = outcome.leaderboard
    assert (board["stop_reason"] == "time_budget").all()
    assert (board["seconds"] < 6 + 3).all()  # the deadline is checked every batch
    assert time.monotonic() - started < 60


def test_config_refuses_bad_choices():
    with pytest.raises(ConfigError, match="unknown strategy 'freeze'"):
        config(strategies=("freeze",))
    with pytest.raises(ConfigError, match="unknown head 'attention'"):
        config(heads=("attention",))
    with pytest.raises(ConfigError, match="top k needs the transferability pre-ranking"):
        config(top_k=1, prerank=False)
    with pytest.raises(ConfigError, match="trial timeout must be a positive"):
        config(trial_timeout=0)
    with pytest.raises(ConfigError, match="unknown sampler 'grid'"):
        config(sampler="grid")
