"""Jobs that survive: a search killed with SIGKILL resumes where it was, dead workers' trials are run
again, and several workers share one study on a real PostgreSQL server without losing or doubling a trial.

The end-to-end cases run the real command line in subprocesses on the built-in digits (120 of them,
32 px, MobileNetV2 with its offline ImageNet weights).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl_tl.results.report import leaderboard
from automl_tl.search.liveness import (
    ATTEMPT_ATTR,
    GRACE_PERIOD,
    HEARTBEAT_ATTR,
    MAX_RETRIES,
    OPTUNA_HEARTBEAT,
    RETRY_OF_ATTR,
    WORKER_ATTR,
    Heartbeat,
    interrupted_trials,
    optuna_beats,
    recover_dead_trials,
    retry_stale_trial,
    trial_slot,
)
from automl_tl.storage import DatabaseHeartbeat, open_storage

SEARCH = [
    "search",
    "--dataset",
    "digits",
    "--max-samples",
    "120",
    "--backbones",
    "mobilenetv2_100",
    "--image-size",
    "32",
    "--no-prerank",
    "--seed",
    "3",
]


def cli(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "automl_tl.cli", *map(str, args)]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


def journal_study(run_dir: Path) -> optuna.Study:
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))
    )
    return optuna.load_study(study_name="automl_tl", storage=storage)


def best_of(study: optuna.Study) -> int:
    """The best finished trial as the search keeps it: highest value, then lowest validation loss, then lowest
    number (a tie in accuracy on a few validation examples is common)."""
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return min(finished, key=lambda t: (-t.value, t.user_attrs.get("best_val_loss", math.inf), t.number)).number


# ---------------------------------------------------------------- recovering dead trials


def _study_with_running_trial(tmp_path: Path, worker: dict, heartbeat: float) -> tuple[optuna.Study, int]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal"))
    )
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker)
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, heartbeat)
    return study, trial.number


def test_a_trial_of_a_dead_process_on_this_host_is_failed_and_enqueued_again(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a real process id that no longer exists
    study, number = _study_with_running_trial(tmp_path, {"host": socket.gethostname(), "pid": dead.pid}, time.time())
    assert recover_dead_trials(study) == [number]
    trials = study.get_trials()
    assert trials[number].state == TrialState.FAIL
    assert trials[number].user_attrs["error"].startswith("interrupted: its worker (process")
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert len(retries) == 1
    assert retries[0].user_attrs[RETRY_OF_ATTR] == number and retries[0].user_attrs[ATTEMPT_ATTR] == 2
    assert recover_dead_trials(study) == []  # recovered once only


def test_a_silent_trial_elsewhere_is_recovered_only_after_the_grace_period(tmp_path):
    study, number = _study_with_running_trial(tmp_path, {"host": "another-machine", "pid": 1}, time.time())
    assert recover_dead_trials(study) == []  # beating recently: alive
    assert study.get_trials()[number].state == TrialState.RUNNING
    study, number = _study_with_running_trial(
        tmp_path / "old", {"host": "another-machine", "pid": 1}, time.time() - GRACE_PERIOD - 5
    )
    assert recover_dead_trials(study) == [number]
    assert "no heartbeat for" in study.get_trials()[number].user_attrs["error"]


def test_a_trial_that_keeps_killing_its_worker_is_not_retried_forever(tmp_path):
    study, number = _study_with_running_trial(tmp_path, {"host": "another-machine", "pid": 1}, 0.0)
    study._storage.set_trial_user_attr(study.get_trials()[number]._trial_id, ATTEMPT_ATTR, MAX_RETRIES + 1)
    assert recover_dead_trials(study) == [number]
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    assert "not run again" in study.get_trials()[number].user_attrs["error"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_on_postgresql_optunas_heartbeat_fails_a_silent_trial_and_it_is_run_again(postgres_url, tmp_path):
    """On a database, a trial gone silent on another machine is Optuna's to find (by the server's clock): our
    own check leaves it alone, Optuna fails it before the next trial, and it is run again as ours would."""
    seconds = DatabaseHeartbeat(
        interval=1, grace_period=2, on_stale_trial=functools.partial(retry_stale_trial, grace_period=2)
    )
    storage = open_storage(postgres_url, tmp_path, heartbeat=seconds)
    study = optuna.create_study(storage=storage, study_name=f"stale-{uuid.uuid4().hex[:8]}", direction="maximize")
    assert optuna_beats(study._storage)
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study.tell(study.ask(space), 0.5)  # trial 0 finished; trial 1 will go silent
    trial = study.ask(space)
    with Heartbeat(study._storage, trial._trial_id):  # on a database only the worker is recorded: Optuna beats
        pass
    assert HEARTBEAT_ATTR not in study.get_trials()[trial.number].system_attrs
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "another-machine", "pid": 1})
    study._storage.record_heartbeat(trial._trial_id)  # it beat once, then its machine was lost
    assert recover_dead_trials(study, grace=0.0) == []  # silence is not ours to judge here
    time.sleep(seconds.grace_period + 1.5)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)  # what study.optimize does before each trial
    failed = study.get_trials()[trial.number]
    assert failed.state == TrialState.FAIL
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs[RETRY_OF_ATTR] == trial.number and retry.user_attrs[ATTEMPT_ATTR] == 2
    assert retry.system_attrs["fixed_params"] == trial.params
    # the leaderboard says why, and the retry takes the slot (the seed) of the trial it repeats
    row = leaderboard(study).set_index("trial").loc[trial.number]
    assert row["stop_reason"] == "interrupted"
    assert row["error"] == "interrupted: no heartbeat for over 2 s (Optuna's heartbeat); run again as a new trial"
    assert interrupted_trials(study, study.get_trials()) == {trial.number}
    assert study.ask(space).number == retry.number  # the retry runs next
    after = study.ask(space)
    trials = study.get_trials()
    assert trial_slot(study, trials[retry.number]) == trial_slot(study, failed) == 1
    assert trial_slot(study, trials[after.number]) == 2  # the interrupted trial does not count


def test_every_process_that_runs_trials_opens_a_database_with_optunas_heartbeat(postgres_url, tmp_path):
    assert optuna_beats(open_storage(postgres_url, tmp_path, heartbeat=OPTUNA_HEARTBEAT))
    assert (OPTUNA_HEARTBEAT.interval, OPTUNA_HEARTBEAT.grace_period) == (10, GRACE_PERIOD)
    assert not optuna_beats(open_storage(postgres_url, tmp_path))  # a reader (the report) beats for no one
    journal = open_storage(None, tmp_path, heartbeat=OPTUNA_HEARTBEAT)
    assert not optuna_beats(journal)  # Optuna has no heartbeat for a journal file: ours serves it


# ---------------------------------------------------------------- kill -9, then the same command again


def test_a_search_killed_with_sigkill_resumes_and_loses_no_finished_trial(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SEARCH, "--output", run_dir, "--trials", "5", "--max-epochs", "2", "--strategies", "last_k", "full"]
    process = subprocess.Popen(
        cli(*args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    before: dict[int, float] = {}
    killed_trial = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            if not (run_dir / "study.journal").exists():
                continue
            trials = journal_study(run_dir).get_trials()
            complete = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
            running = [t for t in trials if t.state == TrialState.RUNNING and HEARTBEAT_ATTR in t.system_attrs]
            if complete and running:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                before, killed_trial = complete, running[0]
                break
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert killed_trial is not None, f"never saw a finished and a running trial at once:\n{process.stderr.read()}"
    assert journal_study(run_dir).get_trials()[killed_trial.number].state == TrialState.RUNNING

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    study = journal_study(run_dir)
    trials = study.get_trials()
    # every trial finished before the kill is kept as it was
    for number, value in before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].value == value
    # the interrupted trial is failed with the reason, and run again with the same parameters
    assert trials[killed_trial.number].state == TrialState.FAIL
    assert trials[killed_trial.number].user_attrs["error"].startswith("interrupted")
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == killed_trial.number]
    assert len(retries) == 1 and retries[0].params == killed_trial.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # the search went on to its budget, and the best model on disk is whole and is the best trial's
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 5
    config = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert config["trial"] == best_of(study)
    assert json.loads((run_dir / "summary.json").read_text())["best_trial"] == best_of(study)
    # every trial trained with the seed of its place in an uninterrupted run (the retry with the one it repeats)
    for trial in trials:
        slot = trial.number - (trial.number > killed_trial.number)
        assert trial.user_attrs["slot"] == (killed_trial.number if trial in retries else slot)
    assert config["trial_config"]["seed"] == 3 + study.trials[config["trial"]].user_attrs["slot"]


# ---------------------------------------------------------------- several workers


def test_four_workers_on_postgresql_record_every_trial_once(tmp_path, postgres_url):
    study_name = f"workers-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    result = run_cli(
        *SEARCH,
        "--output",
        run_dir,
        "--storage",
        postgres_url,
        "--study-name",
        study_name,
        "--workers",
        "4",
        "--trials",
        "6",
        "--max-epochs",
        "1",
        "--strategies",
        "linear_probe",
        "last_k",
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # the study stops at its budget: 6 trials, plus at most one in flight at each of the other 3 workers
    assert 6 <= len(finished) <= 6 + 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # each trial recorded once, none lost
    workers = {t.system_attrs[WORKER_ATTR]["pid"] for t in finished}
    assert len(workers) >= 2, "the trials were not shared among the workers"
    assert os.getpid() not in workers  # the command itself only prepared the study and waited
    # the leaderboard lists each trial exactly once, and the best model is the best trial's
    import pandas as pd

    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert sorted(board["trial"]) == numbers
    config = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert config["trial"] == best_of(study)
    assert config["val_accuracy"] == pytest.approx(study.trials[best_of(study)].value)
    # every worker's trials beat through Optuna's heartbeat (recorded in its own table), none through ours
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        beaten = connection.execute(
            sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id = ANY(:ids)"),
            {"ids": [t._trial_id for t in finished]},
        ).scalars()
        assert set(beaten) == {t._trial_id for t in finished}
    engine.dispose()
    assert not [t for t in finished if HEARTBEAT_ATTR in t.system_attrs]


def test_a_worker_refuses_a_study_it_cannot_join(tmp_path, capsys):
    from automl_tl.cli import main

    journal = tmp_path / "empty.journal"
    assert main(["worker", "--storage", str(journal), "--study", "nope"]) == 2
    assert "no study 'nope' in" in capsys.readouterr().err
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(storage=storage, study_name="foreign")
    assert main(["worker", "--storage", str(journal), "--study", "foreign"]) == 2
    assert "was not made by 'automl-tl search'" in capsys.readouterr().err
    assert main(["worker", "--storage", "mysql:/", "--study", "foreign"]) == 2
    assert "malformed storage URL" in capsys.readouterr().err


# ---------------------------------------------------------------- determinism and repairs


def test_a_fresh_sampler_draws_what_the_first_one_would_have_for_the_same_slot(tmp_path):
    """What a process killed and started again relies on: draws depend on history and slot only."""
    from automl_tl.search.sampling import SlotSeededSampler

    def make(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=2, multivariate=True)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        return -((x - 1) ** 2) + (kind == "b")

    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "a.journal"))
    )
    first = optuna.create_study(
        storage=storage, study_name="a", direction="maximize", sampler=SlotSeededSampler(make, seed=7)
    )
    first.optimize(objective, n_trials=6)
    uninterrupted = [t.params for t in first.trials]
    # a second study: the same first four trials, then a "new process" (a new sampler object) goes on
    other = optuna.create_study(
        storage=storage, study_name="b", direction="maximize", sampler=SlotSeededSampler(make, seed=7)
    )
    other.optimize(objective, n_trials=4)
    resumed = optuna.load_study(study_name="b", storage=storage, sampler=SlotSeededSampler(make, seed=7))
    resumed.optimize(objective, n_trials=2)
    assert [t.params for t in resumed.trials] == uninterrupted
    # and the draws really depend on the seed (the check above could not pass by accident)
    third = optuna.create_study(direction="maximize", sampler=SlotSeededSampler(make, seed=8))
    third.optimize(objective, n_trials=6)
    assert [t.params for t in third.trials] != uninterrupted


def test_a_save_cut_between_its_renames_is_repaired(tmp_path):
    from automl_tl.results.model_io import repair_interrupted_save

    best = tmp_path / "best_model"
    old = tmp_path / ".best_model-old"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"weights")
    (old / "config.json").write_text("{}")
    staging = tmp_path / ".best_model-abc123"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    repair_interrupted_save(best)
    assert (best / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]


def test_search_settings_survive_the_study_storage():
    from automl_tl.config import SearchConfig
    from automl_tl.inputs import InputOptions

    config = SearchConfig(
        backbones=("a", "b*"),
        n_trials=7,
        timeout=30.0,
        strategies=("last_k", "lp_ft"),
        backbone_lr_range=(1e-5, 1e-3),
        input_options=InputOptions(image_size=64),
    )
    stored = json.loads(json.dumps(config.to_dict()))
    assert SearchConfig.from_dict(stored) == config
