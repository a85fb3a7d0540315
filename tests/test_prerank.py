"""Transferability pre-ranking in the search: the ranking on real features, warm-start trials in rank
order, top-k, the report with Kendall tau, per-trial budgets, and the sampler choice; its own budget
(costs measured first, features cheapest first, a share of the deadline) and its stratified sample."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pytest
from torch import nn

from automl_tl import InputOptions, SearchConfig, run_search
from automl_tl.backbone import Backbone
from automl_tl.errors import ConfigError
from automl_tl.rank.ranking import PRERANK_SAMPLE_SIZE, rank_backbones, searchable_backbones, stratified_sample
from automl_tl.registry import get_registry
from automl_tl.search.study import Search
from automl_tl.strategies import FROZEN_BODY_STRATEGIES
from automl_tl.train.executor import Executor
from automl_tl.train.feature_cache import FeatureCache

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


class AtSize(Backbone):
    """A real backbone that always takes its inputs at one size (as one pretrained at that size would)."""

    def __init__(self, real: Backbone, size: int):
        self.real, self.size, self.name, self.modality = real, size, f"{real.name}@{size}", real.modality

    @property
    def weight_source(self) -> str:
        return self.real.weight_source

    @property
    def embedding_dim(self) -> int:
        return self.real.embedding_dim

    def build(self, num_classes: int, pretrained: bool = True):
        return self.real.build(num_classes, pretrained)

    def weights_fingerprint(self) -> str:
        return self.real.weights_fingerprint()

    def preprocessor(self, options):
        return self.real.preprocessor(InputOptions(image_size=self.size))


class Sleepy(nn.Module):
    """A body that also waits ``seconds`` per example: a model far too slow for the budget, on any machine."""

    def __init__(self, body: nn.Module, seconds: float):
        super().__init__()
        self.body, self.seconds = body, seconds

    def forward(self, batch):
        time.sleep(self.seconds * len(batch))
        return self.body(batch)


class Slow(AtSize):
    def __init__(self, real: Backbone, seconds_per_example: float):
        super().__init__(real, 32)
        self.name, self.seconds = f"{real.name}-slow", seconds_per_example

    def build(self, num_classes: int, pretrained: bool = True):
        model = self.real.build(num_classes, pretrained)
        model.body = Sleepy(model.body, self.seconds)
        model.layer_groups = [[f"body.{name}" for name in group] for group in model.layer_groups]
        return model


@pytest.fixture
def executor(tmp_path):
    return Executor(show_progress=False, feature_cache=FeatureCache(tmp_path / "features"))


def config(**overrides) -> SearchConfig:
    values = dict(backbones=BACKBONES, n_trials=4, seed=0, max_epochs=1, max_trained_groups=1, input_options=SMALL)
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
    outcome = run_search(
        digits_bundle,
        config(n_trials=6, strategies=("linear_probe", "lp_ft", "nearest_centroid")),
        tmp_path / "run",
        executor,
    )
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
    # The features the probes trained on were the ranking's: two backbones x (train, val) computed once; then
    # the test split's, of each frozen-body model the kept model holds (its members when it is an ensemble).
    kept = summary["ensemble"]["members"] if summary["ensemble"]["kept"] else [summary["best_params"]]
    tested = {m["backbone"] for m in kept if m["strategy"] in FROZEN_BODY_STRATEGIES}
    tested.update(b for m in kept for b in m.get("backbones", ()))  # a probe on concatenated features: each one's
    assert executor.feature_cache.misses == 4 + len(tested)


def test_top_k_searches_only_the_best_ranked(tmp_path, digits_bundle, executor):
    outcome = run_search(digits_bundle, config(n_trials=3, top_k=1), tmp_path / "run", executor)
    top = outcome.transferability["ranking"][0]
    assert set(outcome.leaderboard["backbone"]) == {top}
    stored = outcome.study.user_attrs["search_space"]["backbones"]
    assert stored == [top]


def test_without_prerank_no_ranking_and_no_warm_starts(tmp_path, digits_bundle, executor):
    outcome = run_search(digits_bundle, config(n_trials=2, prerank=False, sampler="random"), tmp_path / "run", executor)
    assert outcome.transferability is None and not (tmp_path / "run" / "transferability.csv").exists()
    assert not any(t.user_attrs.get("warm_start") for t in outcome.study.trials)
    assert executor.feature_cache.misses + executor.feature_cache.hits <= 4  # only what probes asked for


def test_trial_timeout_is_a_hard_budget_per_trial(tmp_path, digits_bundle, executor):
    started = time.monotonic()
    outcome = run_search(
        digits_bundle,
        config(
            n_trials=2,
            max_epochs=50,
            trial_timeout=6,
            prerank=False,
            strategies=("full",),
            max_trained_groups=None,
            pruner="none",
        ),
        tmp_path / "run",
        executor,
    )
    board = outcome.leaderboard
    # 50 epochs do not fit in 6 s: each trial is re-planned to the epochs that do, and says so
    assert board["adapted"].str.match(r"epochs 50 -> \d+ \(one takes about").all()
    assert (board["seconds"] < 6 + 3).all()  # the deadline is checked every batch
    # the saved model says it too: its config holds the epochs that ran, its card what was given up
    saved = json.loads((tmp_path / "run" / "best_model" / "config.json").read_text())
    assert saved["trial_config"]["epochs"] < 50 and saved["adapted"][0].startswith("epochs 50 -> ")
    assert "**Given up for the budget.**" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
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


def test_the_sample_is_stratified_seeded_and_capped():
    labels = np.repeat([0, 1, 2, 3], [900, 300, 5, 1])
    sample = stratified_sample(labels, 100, seed=0)
    assert len(sample) == 100 and len(set(sample)) == 100 and (np.diff(sample) > 0).all()
    counts = np.bincount(labels[sample], minlength=4)
    assert counts.tolist() == [74, 24, 1, 1]  # in proportion (largest remainders), and no class lost
    assert (stratified_sample(labels, 100, seed=0) == sample).all()
    assert (stratified_sample(labels, 100, seed=1) != sample).any()
    assert len(stratified_sample(labels, 3)) == 4  # every class kept, even beyond the cap
    assert (stratified_sample(labels, 5000) == np.arange(len(labels))).all()  # small data: all of it
    assert PRERANK_SAMPLE_SIZE == 1000


def test_large_data_is_ranked_on_a_sample_whose_features_the_probes_reuse(executor, digits_bundle, caplog):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    ranking = rank_backbones([backbone], digits_bundle, executor, SMALL, sample_size=50)
    assert ranking.loc[0, "scored_examples"] == 50 and ranking.loc[0, "rank"] == 1
    assert ranking.loc[0, "seconds_per_example"] > 0 and ranking.loc[0, "estimated_seconds"] > 0
    assert not list(executor.feature_cache.root.rglob("*[0-9a-f].npy"))  # only the sample's rows so far
    assert len(list(executor.feature_cache.root.rglob("*.part.npz"))) == 1
    with caplog.at_level(logging.INFO, logger="automl_tl.train.feature_cache"):
        every = executor.features(backbone, SMALL, digits_bundle, digits_bundle.train)
    rest = len(digits_bundle.train) - 50
    assert f"features of {rest} samples" in caplog.text  # the probe computes only the rows not yet there
    assert not list(executor.feature_cache.root.rglob("*.part.npz"))
    again = rank_backbones([backbone], digits_bundle, executor, SMALL, sample_size=50)
    assert again.loc[0, "logme"] == pytest.approx(ranking.loc[0, "logme"], rel=1e-4)  # the same rows, now cached
    assert again.loc[0, "estimated_seconds"] == 0 and executor.feature_cache.misses == 2
    assert every.shape == (len(digits_bundle.train), backbone.embedding_dim)


def test_features_are_computed_cheapest_first(executor, digits_bundle, caplog):
    registry = get_registry()
    large = AtSize(registry.get_backbone("tf_efficientnet_lite2"), 128)
    small = AtSize(registry.get_backbone("mobilenetv2_100"), 32)
    with caplog.at_level(logging.INFO, logger="automl_tl.rank.ranking"):
        ranking = rank_backbones([large, small], digits_bundle, executor, SMALL, sample_size=40)
    computed = [record.args[0] for record in caplog.records if record.msg.startswith("pre-ranking: features of")]
    assert computed == [small.name, large.name]
    cost = ranking.set_index("backbone")["seconds_per_example"]
    assert cost[small.name] < cost[large.name]
    assert ranking["rank"].notna().all() and ranking["skipped"].isna().all()


def test_a_deadline_that_leaves_no_time_ranks_nothing_and_says_why(executor, digits_bundle):
    backbones = [get_registry().get_backbone(name) for name in BACKBONES]
    started = time.monotonic()
    ranking = rank_backbones(backbones, digits_bundle, executor, SMALL, deadline=started)
    assert time.monotonic() - started < 5
    assert ranking["rank"].isna().all() and ranking[["logme", "seconds_per_example"]].isna().all().all()
    assert (ranking["skipped"] == "no time left to measure its cost").all()
    assert executor.feature_cache.misses == 0 and not list(executor.feature_cache.root.rglob("*.np*"))
    assert searchable_backbones(ranking) == [BACKBONES[0]]  # the search keeps one backbone to try


def test_a_backbone_too_slow_for_the_share_is_measured_left_out_and_not_searched(tmp_path, executor, digits_bundle):
    real = get_registry().get_backbone("mobilenetv2_100")
    slow = Slow(real, seconds_per_example=0.5)  # 84 s for the 168 training examples: never fits the 18 s share
    run = Search(digits_bundle, config(timeout=60), tmp_path / "run", executor)
    run.backbones = {slow.name: slow, real.name: real}
    run.start_clock()
    started = time.monotonic()
    space = run.prepare()
    assert time.monotonic() - started < 0.3 * 60  # within its share of the budget
    assert list(space.backbones) == [real.name]
    ranking = run.ranking.set_index("backbone")
    assert ranking.loc[real.name, "rank"] == 1 and pd.isna(ranking.loc[slow.name, "rank"])
    assert ranking.loc[slow.name, "seconds_per_example"] >= 0.5  # measured, on the warm-up batch at least
    assert ranking.loc[slow.name, "estimated_seconds"] > 0.5 * len(digits_bundle.train)
    assert "estimated at" in ranking.loc[slow.name, "skipped"] and pd.isna(ranking.loc[slow.name, "logme"])


def test_a_resumed_study_keeps_its_backbones_when_the_pre_ranking_fits_more(tmp_path, executor, digits_bundle):
    real = get_registry().get_backbone("mobilenetv2_100")
    # 8.4 s for the 168 training examples: well past the 6 s share of a 20 s budget, whatever the machine's load
    slow = Slow(real, seconds_per_example=0.05)

    def opened(**overrides):
        run = Search(digits_bundle, config(**overrides), tmp_path / "run", executor)
        run.backbones = {slow.name: slow, real.name: real}
        run.start_clock()
        return run, run.open_study()

    first, study = opened(timeout=20)
    assert list(first.space.backbones) == [real.name]
    again, resumed = opened(timeout=None)  # "raise --timeout and run the same command again": every one fits
    assert again.ranking["rank"].notna().all()  # this run ranked both...
    assert list(again.space.backbones) == [real.name]  # ...and the study goes on with the one it was made with
    assert resumed.user_attrs["search_space"] == study.user_attrs["search_space"]
