"""Trials on a Ray cluster: ``automl-tl search --ray [ADDRESS]``.

The search prepares the study as always (pre-ranking, the feature cache), then starts ``workers`` Ray actors,
each asking Ray for :class:`TrialResources` (a GPU each where the cluster has GPUs: Ray sets
``CUDA_VISIBLE_DEVICES``, and the executor uses the device it is given). An actor is one more worker of the
study (:func:`~automl_tl.search.study.prepare_worker`: it loads the data from the source stored with the study
and refuses them if their fingerprint differs), and runs one trial per call, so that the driver follows each.
The study stays in Optuna's storage, the one record: the journal file on one machine, a database (PostgreSQL)
on a cluster of several; resume, the report and the dashboard read it as they read any study.

Failures are what they are without Ray:

* an actor (its process, or its node) that dies mid-trial: its trial is marked failed (interrupted) and run
  again with the same parameters, at most twice (:func:`~automl_tl.search.liveness.recover_trials_of`), and
  another actor takes its place;
* a trial out of memory: the executor retries it at half the batch size, on the same resources;
* the driver killed: its actors die with it (Ray ends the actors of a job whose driver is gone), and the same
  command run again resumes the study in a fresh Ray job.

Each actor keeps its trials' models in a folder of its own, on its own node; after a trial that beats the
study's best, it sends that model's files to the driver, which alone writes ``RUN_DIR/best_model`` (and each
trial's validation predictions, for the ensemble): one best model, without a shared file system. Before each
trial the actor is given the config of the driver's best model, so that it ranks its trial against the
study's best and keeps back the time that the end of the search needs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.files import write_json_atomic
from automl_tl.layout import BEST_MODEL_DIR, CONFIG_FILE, JOURNAL_FILE
from automl_tl.options import LOG_DATE_FORMAT, LOG_FORMAT, RAY_INSTALL_HINT, RAY_LOCAL
from automl_tl.search.best_model import (
    install_model_files,
    install_trial_predictions,
    model_files,
    saved_best,
    saved_best_config,
    trial_prediction_files,
)
from automl_tl.search.liveness import MAX_RETRIES, recover_trials_of, this_worker
from automl_tl.search.workers import check_data_source
from automl_tl.storage import journal_path

if TYPE_CHECKING:
    import optuna

    from automl_tl.search.study import Search

logger = logging.getLogger(__name__)

#: seconds between two looks at the actors, and how long an actor Ray cannot place may wait past the deadline
POLL_SECONDS = 2.0
UNPLACED_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class TrialResources:
    """What each trial asks Ray for: CPU cores (its torch threads too) and GPUs (a fraction shares one)."""

    cpus: float = 1.0
    gpus: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "TrialResources":
        """``cpu=N,gpu=M`` (either may be left out: 1 core, no GPU), as ``--trial-resources`` takes it."""
        values = {"cpu": 1.0, "gpu": 0.0}
        for part in filter(None, (piece.strip() for piece in text.split(","))):
            match = re.fullmatch(r"(cpu|gpu)\s*=\s*([0-9]*\.?[0-9]+)", part)
            if match is None:
                raise ConfigError(f"--trial-resources takes cpu=N,gpu=M (for example cpu=4,gpu=1), not {part!r}")
            values[match.group(1)] = float(match.group(2))
        if values["cpu"] <= 0:
            raise ConfigError(f"--trial-resources: a trial needs more than 0 CPUs, got cpu={values['cpu']:g}")
        if values["gpu"] > 1 and not values["gpu"].is_integer():
            raise ConfigError(f"--trial-resources: more than one GPU must be a whole number, got gpu={values['gpu']:g}")
        return cls(cpus=values["cpu"], gpus=values["gpu"])

    def describe(self) -> str:
        return f"cpu={self.cpus:g},gpu={self.gpus:g}"

    @property
    def threads(self) -> int:
        """Torch threads for a trial: its whole cores, at least one."""
        return max(1, int(self.cpus))


@dataclass(frozen=True)
class RaySettings:
    """Where trials run on Ray: ``address`` ``"local"`` starts a Ray runtime on this machine; ``"auto"`` or
    ``ray://host:10001`` joins a cluster. ``resources`` None: :func:`default_trial_resources`."""

    address: str = RAY_LOCAL
    resources: TrialResources | None = None


def default_trial_resources(cluster: dict[str, float], workers: int) -> TrialResources:
    """One GPU per trial where the cluster has GPUs; the cores shared among ``workers`` trials at once."""
    cpus = float(max(1, int(cluster.get("CPU", 1.0) // max(workers, 1))))
    return TrialResources(cpus=cpus, gpus=1.0 if cluster.get("GPU", 0.0) >= 1 else 0.0)


def check_ray_installed() -> None:
    """Refuse ``--ray`` at once, before any data is read, where Ray is not installed (without importing it)."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except ValueError:  # a module entry without a spec: as good as absent
        found = False
    if not found:
        raise ConfigError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}")


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`~automl_tl.errors.ConfigError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


class TrialWorker:
    """A Ray actor's body: one worker of the study, running one trial per :meth:`next_trial` call."""

    def start(
        self,
        storage: str,
        study_name: str,
        deadline: float | None,
        threads: int,
        prepare: Callable[..., tuple["Search", "optuna.Study"]],
        log_level: int = logging.INFO,
    ) -> dict[str, object]:
        """Join the study (``prepare`` is :func:`~automl_tl.search.study.prepare_worker`) with the time left
        until ``deadline`` (Unix time); returns this worker's identity (``worker``, as its trials record it) and
        its own folder (``scratch``). Its log lines (at the driver's ``log_level``) are printed by Ray among the
        driver's."""
        import optuna
        import torch

        logging.basicConfig(level=log_level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial says more
        torch.set_num_threads(threads)
        self.scratch = Path(tempfile.mkdtemp(prefix="automl_tl-ray-trials-"))
        timeout = None if deadline is None else max(deadline - time.time(), 1.0)
        try:
            self.search, self.study = prepare(storage, study_name, self.scratch, timeout, False)
        except BaseException:
            self.close()
            raise
        self.search.begin_trials(self.study)
        self._sent_predictions: set[str] = set()
        return {"worker": this_worker(), "scratch": str(self.scratch)}

    def next_trial(self, best_config: dict[str, Any] | None) -> dict[str, Any]:
        """Run one trial, ranked against ``best_config`` (the driver's best model's); returns whether this worker
        wants to run more, the trial's validation predictions, and its model's files when it is the new best."""
        self._mirror_best(best_config)
        before = saved_best(self.scratch)
        more = self.search.run_trials(self.study, max_trials=1)
        after = saved_best(self.scratch)
        predictions = trial_prediction_files(self.scratch, self._sent_predictions)
        self._sent_predictions.update(predictions)
        return {
            "more": more,
            "predictions": predictions,
            "model": model_files(self.scratch) if after != before else None,
        }

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _mirror_best(self, best_config: dict[str, Any] | None) -> None:
        """Make this worker's best model, as far as it needs it (its config), the driver's."""
        if best_config == saved_best_config(self.scratch):
            return
        shutil.rmtree(self.scratch / BEST_MODEL_DIR, ignore_errors=True)
        if best_config is not None:
            write_json_atomic(self.scratch / BEST_MODEL_DIR / CONFIG_FILE, best_config)


@dataclass
class _Actor:
    handle: Any
    number: int
    #: the process, as its trials record it (None until it joined the study)
    identity: dict[str, object] | None = None
    #: its own folder, on its own machine
    scratch: Path | None = None


def run_ray_workers(
    search: "Search",
    study: "optuna.Study",
    workers: int,
    time_left: float | None,
    settings: RaySettings,
    prepare: Callable[..., tuple["Search", "optuna.Study"]],
) -> None:
    """Run ``search``'s trials on Ray, ``workers`` at once, until the study has its trials or ``time_left``
    (seconds) runs out; the best model and the trials' predictions end up in ``search.run_dir``."""
    check_data_source(search, "trials on Ray")
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    try:
        storage = _storage_for_cluster(search, ray)
        cluster = ray.cluster_resources()
        resources = settings.resources or default_trial_resources(cluster, workers)
        _check_placeable(ray, resources)
        logger.info(
            "running up to %d trial(s) at once on Ray (%s), each with %s",
            workers,
            "a local runtime" if settings.address == RAY_LOCAL else settings.address,
            resources.describe(),
        )
        _ActorPool(ray, search, study, storage, resources, time_left, prepare).run(workers)
    finally:
        if started_here:
            ray.shutdown()


def _storage_for_cluster(search: "Search", ray: Any) -> str:
    """The storage URL the actors open; a journal file only where every node is this machine."""
    journal = journal_path(search.config.storage, search.run_dir)
    if journal is None:
        return search.config.storage
    hosts = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    if len(hosts) > 1:
        raise ConfigError(
            f"the Ray cluster has {len(hosts)} machines, and the study's journal file {journal} is on this one only; "
            "give the study a database that every machine reaches: --storage postgresql://USER:PASSWORD@HOST/DB"
        )
    return str((search.run_dir / JOURNAL_FILE).resolve() if search.config.storage is None else journal.resolve())


def _check_placeable(ray: Any, resources: TrialResources) -> None:
    """Refuse trial resources that no node of the cluster has (Ray would wait for them forever)."""
    for node in ray.nodes():
        have = node.get("Resources", {})
        if node.get("Alive") and have.get("CPU", 0) >= resources.cpus and have.get("GPU", 0) >= resources.gpus:
            return
    biggest = max(
        (f"cpu={n['Resources'].get('CPU', 0):g},gpu={n['Resources'].get('GPU', 0):g}" for n in ray.nodes()),
        default="none",
    )
    raise ConfigError(
        f"--trial-resources {resources.describe()}: no machine of the Ray cluster has that much "
        f"(the largest has {biggest})"
    )


class _ActorPool:
    """The driver's side: start the actors, hand each its next trial, keep what they send, replace the dead."""

    def __init__(
        self,
        ray: Any,
        search: "Search",
        study: "optuna.Study",
        storage: str,
        resources: TrialResources,
        time_left: float | None,
        prepare: Callable[..., tuple["Search", "optuna.Study"]],
    ):
        self.ray = ray
        self.search = search
        self.study = study
        self.storage = storage
        self.resources = resources
        self.prepare = prepare
        self.deadline = None if time_left is None else time.time() + time_left
        self.actor_class = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_restarts=0)(TrialWorker)
        self.pending: dict[Any, tuple[_Actor, str]] = {}  # object ref -> (actor, "start" | "trial" | "close")
        self.started = 0

    def run(self, workers: int) -> None:
        replacements = workers * (MAX_RETRIES + 1)  # an actor that keeps dying ends the search, not loops it
        for _ in range(workers):
            self._start_actor()
        try:
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_SECONDS)
                if not ready:
                    self._drop_unplaced_actors()
                    continue
                actor, step = self.pending.pop(ready[0])
                try:
                    value = self.ray.get(ready[0])
                except self.ray.exceptions.RayActorError as error:
                    if step == "close":
                        continue
                    self._actor_died(actor, error)
                    if replacements > 0 and self._time_left() > 0:
                        replacements -= 1
                        self._start_actor()
                    continue
                except self.ray.exceptions.RayTaskError as error:
                    raise _task_error(error) from None
                self._advance(actor, step, value)
        finally:
            for actor, _ in list(self.pending.values()):
                self.ray.kill(actor.handle)
            self.pending.clear()

    def _start_actor(self) -> None:
        self.started += 1
        actor = _Actor(self.actor_class.remote(), self.started)
        ref = actor.handle.start.remote(
            self.storage,
            self.search.config.study_name,
            self.deadline,
            self.resources.threads,
            self.prepare,
            logging.getLogger("automl_tl").getEffectiveLevel(),
        )
        self.pending[ref] = (actor, "start")

    def _advance(self, actor: _Actor, step: str, value: Any) -> None:
        if step == "start":
            actor.identity, actor.scratch = value["worker"], Path(value["scratch"])
        elif step == "trial":
            self._keep(value)
            if not value["more"]:
                self.pending[actor.handle.close.remote()] = (actor, "close")
                return
        elif step == "close":
            self.ray.kill(actor.handle)
            return
        self.pending[actor.handle.next_trial.remote(saved_best_config(self.search.run_dir))] = (actor, "trial")

    def _keep(self, value: dict[str, Any]) -> None:
        install_trial_predictions(self.search.run_dir, value["predictions"])
        if value["model"] is not None and install_model_files(self.search.run_dir, value["model"]):
            trial = json.loads(value["model"][CONFIG_FILE])["trial"]
            logger.info("trial %d is the best so far: its model is in %s", trial, self.search.run_dir / BEST_MODEL_DIR)

    def _actor_died(self, actor: _Actor, error: Exception) -> None:
        where = (
            "before it joined the study"
            if actor.identity is None
            else f"(process {actor.identity['pid']} on {actor.identity['host']})"
        )
        logger.warning("Ray worker %d died %s: %s", actor.number, where, str(error).splitlines()[0])
        if actor.identity is not None:
            recover_trials_of(self.study, actor.identity, f"its Ray worker {where} died")
            if actor.identity["host"] == socket.gethostname():  # its folder, which it could not delete itself
                shutil.rmtree(actor.scratch, ignore_errors=True)

    def _time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def _drop_unplaced_actors(self) -> None:
        """Past the deadline, give up on actors Ray has not been able to start (no free resources)."""
        if self._time_left() > -UNPLACED_GRACE_SECONDS:
            return
        for ref, (actor, step) in list(self.pending.items()):
            if step == "start":
                logger.warning("Ray could not start worker %d before the budget ran out; giving up on it", actor.number)
                self.ray.kill(actor.handle)
                del self.pending[ref]


def _task_error(error: Exception) -> Exception:
    """What the driver raises for an exception raised inside an actor: ours as it is (a refusal of the data,
    say: one line), anything else as an error that keeps the actor's traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, AutomlTLError):
        return cause
    return AutomlTLError(f"a Ray worker failed: {error}")
