"""Trials on a real Ray cluster: a head started on this machine (tests/ray_head.sh; .ci/run starts one beside
the PostgreSQL server), the study in PostgreSQL, the real command line in a subprocess on 120 digits at 32 px.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from test_workers import SEARCH, best_of, cli

from automl_tl.search.liveness import RETRY_OF_ATTR, WORKER_ATTR
from automl_tl.search.ray_trials import TrialResources, default_trial_resources

pytest.importorskip("ray")


def _running_trial_of_a_worker(
    study: optuna.Study, driver_pid: int, min_seconds: float
) -> optuna.trial.FrozenTrial | None:
    """A trial a Ray worker (not the driver) has been running for ``min_seconds``."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_ATTR)
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        if worker and worker["pid"] != driver_pid and time.time() - started >= min_seconds:
            return trial
    return None


def test_two_ray_workers_on_postgresql_record_every_trial_once_and_retry_the_one_whose_worker_was_killed(
    tmp_path, postgres_url, ray_address
):
    study_name = f"ray-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    command = cli(
        *SEARCH,
        "--output",
        run_dir,
        "--storage",
        postgres_url,
        "--study-name",
        study_name,
        "--ray",
        ray_address,
        "--workers",
        "2",
        "--trials",
        "4",
        "--max-epochs",
        "2",
        "--strategies",
        "last_k",
        "--no-ensemble",
    )
    scratch_before = set(Path(tempfile.gettempdir()).glob("automl_tl-ray-trials-*"))
    driver = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"},
    )
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name=study_name, storage=postgres_url)
            except KeyError:
                continue  # not made yet
            trial = _running_trial_of_a_worker(study, driver.pid, min_seconds=1.0)
            if trial is not None:
                os.kill(trial.system_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)
                killed = trial
        output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output[-3000:]
    assert killed is not None, f"no trial ran long enough on a Ray worker to be killed:\n{output[-3000:]}"

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each trial recorded once, none lost
    # the killed trial is failed as interrupted, and run again once with the same parameters
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [killed.number]
    assert failed[0].user_attrs["stop_reason"] == "interrupted"
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == failed[0].params  # (the killed one as stored: it had drawn them all)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(finished) <= 4 + 1  # the budget, plus at most one in flight at the other worker
    workers = {t.system_attrs[WORKER_ATTR]["pid"] for t in finished}
    assert len(workers) >= 2 and driver.pid not in workers  # the trials ran on Ray workers, not in the driver
    # the driver alone wrote the results: the leaderboard lists each trial once, the best model is the best trial's
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert sorted(board["trial"]) == [t.number for t in trials]
    config = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert config["trial"] == best_of(study)
    assert config["val_score"] == pytest.approx(study.trials[best_of(study)].value)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    for trial in complete:  # every complete trial's validation predictions reached the driver, for the ensemble
        assert (run_dir / "trial_predictions" / f"trial_{trial.number:05d}.npy").is_file()
    assert "died" in output and f"trial {killed.number} was interrupted" in output
    # every actor's own folder is gone, the killed one's too (the driver deletes it: same machine here)
    assert set(Path(tempfile.gettempdir()).glob("automl_tl-ray-trials-*")) <= scratch_before


def test_ray_not_installed_is_one_line_that_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"  # what an environment without Ray imports
        "from automl_tl.cli import main\n"
        f"sys.exit(main({[*SEARCH, '--output', str(tmp_path / 'run'), '--trials', '1', '--ray']!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'automl_tl[ray]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the data were read


def test_trial_resources_are_read_as_given_and_refused_in_one_line_otherwise():
    assert TrialResources.parse("cpu=4,gpu=1") == TrialResources(cpus=4, gpus=1)
    assert TrialResources.parse("gpu=0.5") == TrialResources(cpus=1, gpus=0.5)
    for bad in ("cpu=0", "cores=2", "gpu=1.5", "cpu=two"):
        with pytest.raises(Exception, match="--trial-resources") as error:
            TrialResources.parse(bad)
        assert "\n" not in str(error.value)
    # a GPU per trial where the cluster has GPUs; the cores shared among the workers
    assert default_trial_resources({"CPU": 16.0, "GPU": 4.0}, workers=4) == TrialResources(cpus=4, gpus=1)
    assert default_trial_resources({"CPU": 2.0}, workers=2) == TrialResources(cpus=1, gpus=0)
    assert default_trial_resources({"CPU": 2.0}, workers=4) == TrialResources(cpus=1, gpus=0)


def test_trial_resources_without_ray_are_refused(tmp_path):
    from automl_tl.cli import main

    assert main([*SEARCH, "--output", str(tmp_path / "run"), "--trial-resources", "cpu=1"]) == 2
    assert not (tmp_path / "run").exists()
