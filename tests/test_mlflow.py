"""The MLflow plugin, an observer on the search's hooks: every trial and the best model land in a real
MLflow store (the local folder store by default, SQLite by URI), and a resumed search keeps its MLflow run."""

from __future__ import annotations

import json

import pytest

from automl_tl import InputOptions, SearchConfig, run_search
from automl_tl.cli import main
from automl_tl.errors import ConfigError
from automl_tl.train.executor import Executor

mlflow = pytest.importorskip("mlflow")


def tiny_search(tracking_uri: str, n_trials: int = 3) -> SearchConfig:
    return SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=n_trials,
        seed=0,
        max_epochs=1,
        strategies=("linear_probe", "last_k"),
        max_trained_groups=1,
        heads=("linear",),
        prerank=False,
        input_options=InputOptions(image_size=32),
        tracking_uri=tracking_uri,
    )


def trial_runs(client, experiment_id: str) -> dict[int, object]:
    runs = client.search_runs([experiment_id], max_results=1000)
    return {int(r.data.tags["automl_tl.trial"]): r for r in runs if "automl_tl.trial" in r.data.tags}


def parent_runs(client, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id], max_results=1000) if "mlflow.parentRunId" not in r.data.tags]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, digits_bundle):
    """A 3-trial search logged to a local mlruns folder, then resumed to 4 trials."""
    base = tmp_path_factory.mktemp("tracked")
    store = base / "mlruns"
    run_dir = base / "run"
    first = run_search(digits_bundle, tiny_search(str(store)), run_dir, Executor(show_progress=False))
    resumed = run_search(digits_bundle, tiny_search(str(store), n_trials=4), run_dir, Executor(show_progress=False))
    client = mlflow.MlflowClient(tracking_uri=store.resolve().as_uri())
    return first, resumed, client, run_dir


def test_every_trial_is_a_nested_run_with_its_parameters_and_metrics(tracked_run):
    _, resumed, client, run_dir = tracked_run
    experiment = client.get_experiment_by_name("automl_tl")
    parents = parent_runs(client, experiment.experiment_id)
    assert len(parents) == 1, "the resumed search must log into the same MLflow run"
    trials = trial_runs(client, experiment.experiment_id)
    board = resumed.leaderboard.set_index("trial")
    assert sorted(trials) == sorted(board.index) == [0, 1, 2, 3]
    for number, run in trials.items():
        row = board.loc[number]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["state"] == row["state"]
        assert run.data.params["backbone"] == "mobilenetv2_100"
        assert run.data.params["strategy"] == row["strategy"]
        assert float(run.data.params["head_lr"]) == pytest.approx(row["head_lr"])
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(row["val_accuracy"])
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert len(history) == row["epochs_run"] and max(m.value for m in history) == pytest.approx(row["val_accuracy"])


def test_the_best_model_and_the_results_are_logged_on_the_parent_run(tracked_run):
    _, resumed, client, run_dir = tracked_run
    experiment = client.get_experiment_by_name("automl_tl")
    parent = parent_runs(client, experiment.experiment_id)[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["automl_tl.run_dir"] == str(run_dir.resolve())
    assert parent.data.tags["best_trial"] == str(resumed.best_trial)
    assert parent.data.tags["best.strategy"] == resumed.best_params["strategy"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert parent.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(summary["val_accuracy"])
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "best_model")}
    assert {"best_model/model.safetensors", "best_model/config.json", "best_model/metrics.json"} <= logged
    top = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "summary.json", "manifest.json"} <= top
    # the logged weights are the saved best model's, byte for byte
    local = client.download_artifacts(parent.info.run_id, "best_model/model.safetensors")
    assert open(local, "rb").read() == (run_dir / "best_model" / "model.safetensors").read_bytes()


def test_the_cli_logs_to_any_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "search",
            "--backbones",
            "mobilenetv2_100",
            "--trials",
            "2",
            "--max-epochs",
            "1",
            "--strategies",
            "linear_probe",
            "--heads",
            "linear",
            "--no-prerank",
            "--image-size",
            "32",
            "--max-samples",
            "200",
            "--study-name",
            "digits-job",
            "--output",
            str(tmp_path / "run"),
            "--mlflow",
            uri,
        ]
    )
    assert code == 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits-job")
    assert experiment is not None
    assert sorted(trial_runs(client, experiment.experiment_id)) == [0, 1]
    parent = parent_runs(client, experiment.experiment_id)[0]
    assert "best_model/model.safetensors" in {f.path for f in client.list_artifacts(parent.info.run_id, "best_model")}


def test_a_tracker_that_cannot_start_refuses_before_any_trial(tmp_path, digits_bundle):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(ConfigError, match="cannot log to MLflow"):
        run_search(digits_bundle, tiny_search(str(blocker / "mlruns")), tmp_path / "run", Executor(show_progress=False))
    assert not (tmp_path / "run" / "study.journal").exists()
