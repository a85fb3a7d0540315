"""Which running trials are still alive: heartbeats, and recovering the trials of dead workers.

A trial that was running when its process died (SIGKILL, the kernel's out-of-memory killer, a
lost machine) stays ``RUNNING`` in the study forever unless someone notices. Every trial
therefore records which worker runs it (host and process id) and, while it runs, a heartbeat
every :data:`HEARTBEAT_INTERVAL` seconds. Before each trial, every worker looks at the study's
running trials and takes one for dead when

* it belongs to a process on *this* host that no longer exists (found at once, so the same
  command run again right after a kill recovers the trial immediately), or
* its heartbeat is older than :data:`GRACE_PERIOD` (any host: a lost machine).

A dead trial is marked ``FAIL`` with the reason and enqueued again with the same parameters, at
most :data:`MAX_RETRIES` times (a trial that keeps killing its worker is not retried forever).
Marking it failed succeeds for one worker only, so a trial is never retried twice.

On a database storage (PostgreSQL, MySQL, SQLite) the silent trial is Optuna's to find: its own heartbeat
(:data:`OPTUNA_HEARTBEAT`, given to the storage when it is opened) is recorded while ``study.optimize`` runs
a trial and judged by the database server's clock, so the hosts' clocks need not agree; it fails a trial
silent for :data:`GRACE_PERIOD` before the next trial starts, and :func:`retry_stale_trial` then runs it
again as above. Our own heartbeat serves the journal file, which Optuna gives none. The dead process on
this host is ours to find on every storage: Optuna has no such check, and it needs no waiting.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl_tl.storage import STALE_TRIAL_ATTR_PREFIX, DatabaseHeartbeat, stale_trial_reasons
from automl_tl.strategies import current_names

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 10.0  # seconds between two heartbeats of a running trial
GRACE_PERIOD = 60.0  # a running trial silent for this long is taken for dead, whatever its host
MAX_RETRIES = 2  # times one configuration is run again after its worker died

WORKER_ATTR = "automl_tl:worker"  # system attribute: {"host": ..., "pid": ...} of the process running the trial
HEARTBEAT_ATTR = "automl_tl:heartbeat"  # system attribute: Unix time of the trial's last heartbeat
RETRY_OF_ATTR = "retry_of"  # user attribute of a retry: the number of the trial it repeats
ATTEMPT_ATTR = "attempt"  # user attribute of a retry: 2 for the first retry, 3 for the second...
FIXED_PARAMS_ATTR = "fixed_params"  # Optuna's system attribute: the parameters an enqueued trial takes


def this_worker() -> dict[str, object]:
    """The identity recorded on every trial this process runs."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) said it exists


def optuna_beats(storage: optuna.storages.BaseStorage) -> bool:
    """Whether Optuna's own heartbeat watches the storage's running trials (a database opened with one)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


class Heartbeat:
    """While in use, marks the trial as alive every ``interval`` seconds from a background thread.

    ``with Heartbeat(storage, trial_id): ...`` records this worker on the trial, then beats until the
    block ends. A failed write is logged and retried at the next beat: a storage hiccup must not
    fail the trial. On a storage that :func:`optuna_beats`, only the worker is recorded: Optuna beats.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float = HEARTBEAT_INTERVAL):
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.storage.set_trial_system_attr(self.trial_id, WORKER_ATTR, this_worker())
        if not optuna_beats(self.storage):
            self._beat()
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        try:
            self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
        except Exception as error:  # noqa: BLE001 - any storage error: try again next time
            logger.warning("could not record the heartbeat of trial id %d: %s", self.trial_id, error)

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()


def why_dead(
    trial: FrozenTrial, now: float | None = None, grace: float = GRACE_PERIOD, silence: bool = True
) -> str | None:
    """Why a running trial is taken for dead, or None while it looks alive. Without ``silence``, only its
    process's absence from this host counts (Optuna's heartbeat judges the silent ones)."""
    now = time.time() if now is None else now
    worker = trial.system_attrs.get(WORKER_ATTR)
    if (
        isinstance(worker, dict)
        and worker.get("host") == socket.gethostname()
        and not process_exists(int(worker.get("pid", -1)))
    ):
        return f"its worker (process {worker['pid']} on {worker['host']}) is gone"
    if not silence:
        return None
    last_sign = trial.system_attrs.get(HEARTBEAT_ATTR)
    if last_sign is None and trial.datetime_start is not None:
        last_sign = trial.datetime_start.timestamp()  # died before its first heartbeat
    if last_sign is not None and now - float(last_sign) > grace:
        return f"no heartbeat for {now - float(last_sign):.0f} s"
    return None


def recover_dead_trials(study: optuna.Study, grace: float = GRACE_PERIOD) -> list[int]:
    """Mark the study's dead running trials failed and enqueue each again; returns their numbers."""
    silence = not optuna_beats(study._storage)
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = why_dead(trial, grace=grace, silence=silence)
        if reason is not None and _fail_and_retry(study, trial, reason):
            dead.append(trial.number)
    return dead


def recover_trials_of(study: optuna.Study, worker: dict[str, object], reason: str) -> list[int]:
    """Mark the running trials of ``worker`` (a :func:`this_worker` identity, on any host) failed because of
    ``reason`` and enqueue each again; returns their numbers. For a process known dead elsewhere (a Ray
    worker whose actor died), without waiting for its heartbeat to go silent."""
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(WORKER_ATTR) == worker and _fail_and_retry(study, trial, reason):
            dead.append(trial.number)
    return dead


def _fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark the running ``trial`` failed (interrupted, for ``reason``) and enqueue it again unless it was run too
    often; whether this process was the one that failed it."""
    storage = study._storage  # (and trial._trial_id: Optuna has no public way to fail another process's trial)
    retried, note = _retry_note(trial)
    try:  # the reason first: a finished trial takes no more attributes
        storage.set_trial_user_attr(trial._trial_id, "error", f"interrupted: {reason}; {note}")
        storage.set_trial_user_attr(trial._trial_id, "stop_reason", "interrupted")
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False  # another worker recovered it first (or it just finished after all)
    if retried:
        _run_again(study, trial)
    logger.warning("trial %d was interrupted (%s); %s", trial.number, reason, note)
    return True


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial, grace_period: float = GRACE_PERIOD) -> None:
    """Optuna's heartbeat failed ``trial`` (silent for ``grace_period`` seconds, the storage's): keep the reason
    in the study (the failed trial takes no more attributes) and run it again, as :func:`recover_dead_trials`
    does."""
    retried, note = _retry_note(trial)
    reason = f"no heartbeat for over {grace_period:.0f} s (Optuna's heartbeat)"
    study.set_user_attr(f"{STALE_TRIAL_ATTR_PREFIX}{trial.number}", f"interrupted: {reason}; {note}")
    if retried:
        _run_again(study, trial)
    logger.warning("trial %d was interrupted (%s); %s", trial.number, reason, note)


#: given to a database storage by every process that runs trials (see :func:`automl_tl.storage.open_storage`)
OPTUNA_HEARTBEAT = DatabaseHeartbeat(
    int(HEARTBEAT_INTERVAL), int(GRACE_PERIOD), functools.partial(retry_stale_trial, grace_period=GRACE_PERIOD)
)


def _retry_note(trial: FrozenTrial) -> tuple[bool, str]:
    """Whether an interrupted trial is run again (at most :data:`MAX_RETRIES` times), and the words saying so."""
    attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1))
    if attempt <= MAX_RETRIES:
        return True, "run again as a new trial"
    return False, f"not run again: it was attempt {attempt}"


def _run_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue an interrupted trial again with the same parameters, marked as its retry."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k in (WARM_START_ATTR,)}
    attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1))
    study.enqueue_trial(  # (a trial of an earlier version's: under today's names, which the space draws)
        current_names(trial.params),
        user_attrs={**attrs, RETRY_OF_ATTR: trial.number, ATTEMPT_ATTR: attempt + 1},
    )


def rename_waiting_trials(study: optuna.Study) -> None:
    """Give today's names (:func:`~automl_tl.strategies.current_names`) to the fixed parameters of the study's
    waiting trials: a retry that an earlier version enqueued holds the old ones, which no parameter drawn now
    would take (its trial would draw a new value instead of repeating the old)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        fixed = trial.system_attrs.get(FIXED_PARAMS_ATTR)
        if isinstance(fixed, dict) and current_names(fixed) != fixed:
            try:  # study._storage, trial._trial_id: Optuna has no public way to change a waiting trial
                study._storage.set_trial_system_attr(trial._trial_id, FIXED_PARAMS_ATTR, current_names(fixed))
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # another worker started it meanwhile


SLOT_ATTR = "slot"  # user attribute: the trial's place in an uninterrupted run (see trial_slot)
#: marks a warm start: a trial whose parameters were fixed in advance (see automl_tl.search.sampling)
WARM_START_ATTR = "warm_start"


def trial_slot(study: optuna.Study, trial: FrozenTrial) -> int:
    """The trial's place in the run as if no worker had ever died: its number, less the interrupted
    trials before it; a retry takes the slot of the trial it repeats.

    Seeds come from the slot, not the number, so that a resumed run draws and trains exactly as an
    uninterrupted one would have.
    """
    if SLOT_ATTR in trial.user_attrs:
        return int(trial.user_attrs[SLOT_ATTR])
    trials = study.get_trials(deepcopy=False)
    repeated = trial.user_attrs.get(RETRY_OF_ATTR)
    if repeated is not None and repeated < len(trials):
        return trial_slot(study, trials[repeated])
    interrupted = interrupted_trials(study, trials[: trial.number])
    return trial.number - len(interrupted)


def interrupted_trials(study: optuna.Study, trials: list[FrozenTrial]) -> set[int]:
    """The numbers of those of ``trials`` (the study's) that were failed because their worker died, by
    :func:`recover_dead_trials` or by Optuna's heartbeat (:func:`retry_stale_trial`): their retries stand in."""
    stale = stale_trial_reasons(study)
    return {
        t.number
        for t in trials
        if t.state == TrialState.FAIL and (t.user_attrs.get("stop_reason") == "interrupted" or t.number in stale)
    }


class _StudyWithoutInterrupted:
    """The study as a pruner should see it: without interrupted trials, whose retries stand in for them."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str) -> object:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        interrupted = interrupted_trials(self._study, trials)
        return [t for t in trials if t.number not in interrupted]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class InterruptionBlindPruner(optuna.pruners.BasePruner):
    """``pruner`` deciding as if no worker had died.

    An interrupted trial may have reached a rung of successive halving before its worker died; its
    retry reaches the same rung with the same value. Counted twice, that value would change the bar
    for everyone, and a resumed search would prune other trials than an uninterrupted one. (Not used
    with Hyperband, which reads the study afresh in each bracket and which samplers recognise by type:
    there an interrupted trial's rungs still count.)
    """

    def __init__(self, pruner: optuna.pruners.BasePruner):
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.pruner.prune(_StudyWithoutInterrupted(study), trial)  # type: ignore[arg-type]
