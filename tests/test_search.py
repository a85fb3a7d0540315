"""End to end: the Optuna search prunes, keeps the best model, resumes, and the model predicts."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import optuna
import pandas as pd
import pytest

import automl_tl
from automl_tl import InputOptions, SearchConfig, hookimpl, prepare_dataset, run_search
from automl_tl.errors import ConfigError
from automl_tl.plugins import get_plugin_manager
from automl_tl.train.executor import (
    STOP_COMPLETED,
    STOP_EARLY,
    STOP_OVER_BUDGET,
    STOP_TIME,
    Executor,
)

BACKBONES = ("mobilenetv2_100", "tf_efficientnet_lite0")


def small_search(**overrides) -> SearchConfig:
    # Fine-tuning strategies only: linear probes are never pruned, and this search must prune.
    values = dict(
        backbones=BACKBONES,
        n_trials=6,
        seed=0,
        min_epochs=1,
        max_epochs=3,
        max_trained_groups=2,
        strategies=("last_k", "lp_ft"),
        input_options=InputOptions(image_size=32),
    )
    return SearchConfig(**{**values, **overrides})


class _Observer:
    """Records what each lifecycle hook was called with, in order."""

    def __init__(self):
        self.results = []
        self.events = []

    @hookimpl
    def search_started(self, run_dir, study_name, config):
        self.events.append(("started", run_dir, study_name, config))

    @hookimpl
    def trial_finished(self, result):
        self.results.append(result)
        self.events.append(("trial", result.trial_number))

    @hookimpl
    def search_finished(self, outcome):
        self.events.append(("finished", outcome))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, digits_bundle):
    """One search shared by the tests below, with an observer plugin on the lifecycle hooks."""
    run_dir = tmp_path_factory.mktemp("run")
    observer = _Observer()
    get_plugin_manager().register(observer, name="observer")
    try:
        outcome = run_search(digits_bundle, small_search(), run_dir, Executor(show_progress=False))
    finally:
        get_plugin_manager().unregister(name="observer")
    return outcome, observer


def test_search_prunes_and_keeps_the_best_model(finished_run):
    outcome, _ = finished_run
    board = outcome.leaderboard
    states = board["state"].value_counts().to_dict()
    assert states.get("PRUNED", 0) >= 1, board
    assert states.get("COMPLETE", 0) >= 1
    assert len(board) == 6
    complete = board[board.state == "COMPLETE"]
    best_row = complete.sort_values("val_accuracy", ascending=False).iloc[0]
    assert outcome.best_trial == best_row.trial
    assert outcome.best_val_accuracy == pytest.approx(best_row.val_accuracy)
    assert set(board["backbone"]) <= set(BACKBONES)
    assert board["trained_groups"].between(0, 2).all()

    run_dir = outcome.run_dir
    on_disk = pd.read_csv(run_dir / "leaderboard.csv")
    assert list(on_disk["trial"]) == list(board["trial"])
    header = (run_dir / "leaderboard.md").read_text().splitlines()[0]
    assert header.startswith("|") and "trial" in header and "val_accuracy" in header
    config = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert config["trial"] == outcome.best_trial
    assert config["backbone"]["weight_source"].startswith("offline package")
    assert config["classes"] == list(range(10))
    assert config["preprocessing"]["size"] == 32
    metrics = json.loads((run_dir / "best_model" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == outcome.test_metrics["accuracy"] > 0.3  # chance is 0.1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_trial"] == outcome.best_trial and summary["total_cpu_seconds"] > 0


def test_hook_trial_finished(finished_run):
    outcome, observer = finished_run
    assert [r.trial_number for r in observer.results] == sorted(outcome.leaderboard["trial"])
    by_state = {r.trial_number: r.state for r in observer.results}
    assert by_state == dict(zip(outcome.leaderboard["trial"], outcome.leaderboard["state"]))
    assert all(r.history for r in observer.results)


def test_hook_search_started(finished_run):
    outcome, observer = finished_run
    kind, run_dir, study_name, config = observer.events[0]  # before any trial
    assert (kind, run_dir, study_name) == ("started", outcome.run_dir, "automl_tl")
    assert config.n_trials == 6 and config.backbones == BACKBONES
    assert [e[0] for e in observer.events].count("started") == 1


def test_hook_search_finished(finished_run):
    outcome, observer = finished_run
    assert observer.events[-1] == ("finished", outcome)  # once, after the last trial
    assert [e[0] for e in observer.events].count("finished") == 1
    assert (outcome.run_dir / "summary.json").is_file() and (outcome.run_dir / "best_model").is_dir()


def test_load_and_predict(finished_run, digits_bundle):
    outcome, _ = finished_run
    predictor = automl_tl.load(outcome.run_dir)
    frame = pd.DataFrame({"image": digits_bundle.test.inputs})
    probabilities = predictor.predict_proba(frame)
    assert list(probabilities.columns) == [str(c) for c in range(10)]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    predicted = predictor.predict(frame)
    truth = np.array(digits_bundle.classes)[digits_bundle.test.labels]
    assert (predicted == truth).mean() == pytest.approx(outcome.test_metrics["accuracy"])
    assert list(predictor.predict(digits_bundle.test.inputs[:3])) == list(predicted[:3])


def test_rerun_resumes_instead_of_starting_over(tmp_path, digits_bundle):
    executor = Executor(show_progress=False)
    first = run_search(digits_bundle, small_search(n_trials=2, pruner="none"), tmp_path, executor)
    first_params = [t.params for t in first.study.trials]
    second = run_search(digits_bundle, small_search(n_trials=3, pruner="none"), tmp_path, executor)
    trials = second.study.trials
    assert len(trials) == 3
    assert [t.params for t in trials[:2]] == first_params
    again = run_search(digits_bundle, small_search(n_trials=3, pruner="none"), tmp_path, executor)
    assert len(again.study.trials) == 3  # budget already reached: nothing new runs
    assert again.best_trial == second.best_trial


def test_resume_refuses_other_data_or_space(tmp_path, digits_bundle, digits_frame):
    executor = Executor(show_progress=False)
    run_search(digits_bundle, small_search(n_trials=1, max_epochs=1), tmp_path, executor)
    with pytest.raises(ConfigError, match="another search space.*backbones"):
        run_search(
            digits_bundle, small_search(n_trials=2, max_epochs=1, backbones=("mobilenetv2_100",)), tmp_path, executor
        )
    other = prepare_dataset(digits_frame, input_column="image", seed=1)
    with pytest.raises(ConfigError, match="other data"):
        run_search(other, small_search(n_trials=2, max_epochs=1), tmp_path, executor)


def test_timeout_is_a_hard_budget(tmp_path, digits_bundle):
    started = time.monotonic()
    outcome = run_search(
        digits_bundle,
        small_search(n_trials=100, timeout=6, pruner="none", max_epochs=3),
        tmp_path,
        Executor(show_progress=False),
    )
    elapsed = time.monotonic() - started
    assert len(outcome.leaderboard) < 100
    # Kept to within about one epoch (~1 s here) plus start-up and the final test evaluation.
    assert elapsed < 6 + 15
    # Every trial stopped for a reason of the budget's or its own, none failed. A trial started near the deadline
    # is stopped after its first batches when one epoch would not fit what is left (over budget): whether one is
    # depends on the machine's speed.
    stopped_cleanly = [STOP_COMPLETED, STOP_EARLY, STOP_TIME, STOP_OVER_BUDGET, None]
    assert outcome.leaderboard["stop_reason"].isin(stopped_cleanly).all()


def test_storage_file_lives_in_the_run_directory(finished_run):
    outcome, _ = finished_run
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(outcome.run_dir / "study.journal"))
    )
    study = optuna.load_study(study_name="automl_tl", storage=storage)
    assert len(study.trials) == 6


def test_the_run_manifest_says_how_the_results_were_made(finished_run):
    from importlib import metadata

    outcome, _ = finished_run
    manifest = json.loads((outcome.run_dir / "manifest.json").read_text())
    assert manifest["packages"]["torch"] == metadata.version("torch")
    assert manifest["packages"]["optuna"] == metadata.version("optuna")
    assert manifest["data"]["fingerprint"] == outcome.study.user_attrs["data_fingerprint"]
    assert manifest["seeds"]["search"] == small_search().seed
    searched = {entry["name"]: entry for entry in manifest["backbones"]}
    assert set(searched) == set(outcome.study.user_attrs["search_space"]["backbones"])
    for entry in searched.values():
        assert entry["weight_source"] and entry["weights_sha256_prefix"]  # the probes hashed their weights
    assert manifest["hardware"]["cpu_count"] == os.cpu_count()


def test_results_get_the_usual_permissions_not_tempfiles_private_ones(finished_run):
    """Files written aside and renamed into place keep the umask's permissions, so a team can read them."""
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    run_dir = finished_run[0].run_dir
    for name in (
        "leaderboard.csv",
        "summary.json",
        "report.html",
        "best_model/model.safetensors",
        "best_model/config.json",
    ):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((run_dir / "best_model").stat().st_mode) == 0o777 & ~umask
