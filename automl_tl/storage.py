"""The study journal on disk: which files are ours, what a crash tore, and what is corrupt.

An Optuna journal holds one JSON object per line, each an operation on the studies (``op_code``); the
first record creates a study (``op_code`` 0). Optuna itself appends to whatever file it is given and,
reading a bad line, raises a bare ``JSONDecodeError``. So before a journal is opened:

* a file that exists but is not a journal (its first record is no Optuna "create study") is refused
  and left untouched: ``--storage notes.log`` never appends to a user's own file;
* a last record cut short (no newline at its end: what a full disk, or a process killed mid-write,
  leaves) is set aside: the whole file is first copied to ``NAME.torn-<UTC time>``, then the torn bytes
  are cut off, so that the next record starts on a line of its own. Optuna's readers skip an
  unterminated last line, so no process ever acted on that record;
* any other bad line (in the middle, or a whole last line that is not a record) is refused in one line
  that says how to start anew: such a journal cannot be trusted to say what the study holds.

Every refusal is a :class:`~automl_tl.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import FrozenTrial

from automl_tl.config import is_journal_path
from automl_tl.errors import ConfigError, first_line
from automl_tl.layout import JOURNAL_FILE

logger = logging.getLogger(__name__)

#: Optuna's operation code of the record that creates a study: the first record of every journal
CREATE_STUDY_OP = 0
#: how every journal Optuna writes begins (``json.dumps`` with compact separators, ``op_code`` first)
_JOURNAL_START = b'{"op_code":0,'
#: suffix of the copy kept of a journal before its torn last record is cut off
TORN_SUFFIX = ".torn-"


@dataclass(frozen=True)
class JournalState:
    """What :func:`inspect_journal` found: the file's size, and where an unterminated last record begins
    (None when the file ends with a complete line)."""

    size: int
    torn_at: int | None


def journal_path(storage: str | None, run_dir: Path | None) -> Path | None:
    """The journal file a storage option names: ``run_dir``'s own without one (None if ``run_dir`` is None too),
    the path itself for a ``*.journal`` / ``*.log`` path, None for a database URL."""
    if storage is None:
        return None if run_dir is None else Path(run_dir) / JOURNAL_FILE
    return Path(storage) if is_journal_path(storage) else None


def _record(line: bytes) -> dict[str, Any] | None:
    """The journal operation on ``line`` (without its newline), or None if it is not one."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        return None
    op_code = record.get("op_code") if isinstance(record, dict) else None
    return record if isinstance(op_code, int) and not isinstance(op_code, bool) else None


def _start_anew(path: Path) -> str:
    return (
        f"move it aside or remove it to start a new search, or use another --output (or --storage) "
        f"for a new study; {path} itself is left as it is"
    )


def inspect_journal(path: Path | None) -> JournalState | None:
    """Check the journal at ``path`` without changing it; None when there is no file there yet (or no path).

    Refused (:class:`~automl_tl.errors.ConfigError`, one line): a file that is not an Optuna journal (or
    not a regular file), and a journal with a bad record anywhere but an unterminated last line.
    """
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study journal {path} is not a regular file; expected an Optuna journal file (*.journal)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the study journal {path}: {exc.strerror}") from None
    if not data:
        return JournalState(0, None)  # what Optuna creates before its first record: ours, and empty
    lines = data.split(b"\n")
    # split() leaves b"" after a final newline; anything else there is an unterminated (torn) record
    tail = lines.pop()
    first = lines[0] if lines else tail
    complete_first = bool(lines)
    if complete_first:
        record = _record(first)
        ours = record is not None and record["op_code"] == CREATE_STUDY_OP and "study_name" in record
    else:  # the only line, torn: ours if it is how a journal begins, as far as it goes
        ours = first.startswith(_JOURNAL_START) or _JOURNAL_START.startswith(first)
    if not ours:
        raise ConfigError(
            f"{path} is not an Optuna journal (its first line is not a study's record), so it is "
            "not used as the study's storage and not written to; give a new file (*.journal), "
            "or a journal a search made"
        )
    for number, line in enumerate(lines[1:], start=2):
        if _record(line) is None:
            shown = line[:60].decode("utf-8", "replace")
            raise ConfigError(
                f"study journal {path} is corrupt at line {number} of {len(lines) + bool(tail)} "
                f"(not an Optuna record: {shown!r}); {_start_anew(path)}"
            )
    return JournalState(len(data), len(data) - len(tail) if tail else None)


def repair_journal(path: Path) -> Path | None:
    """Check the journal at ``path`` (see :func:`inspect_journal`) and cut off a torn last record, after
    copying the whole file beside it; returns the copy's path (None when there was nothing to repair).

    Runs under Optuna's own lock of the journal, so that no worker appends while it is cut.
    """
    path = Path(path)
    state = inspect_journal(path)  # refuses before the lock: a foreign file gets no lock file beside it
    if state is None or state.torn_at is None:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        state = inspect_journal(path)  # again, now that no one else writes
        if state is None or state.torn_at is None:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}")
        counter = 1
        while backup.exists():  # two repairs in one second: keep both copies
            backup = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}-{counter}")
            counter += 1
        try:
            shutil.copy2(path, backup)
            with open(path, "r+b") as file:
                file.truncate(state.torn_at)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            raise ConfigError(
                f"study journal {path} ends with a torn record (the disk may have been full), and it "
                f"cannot be repaired: {exc.strerror}; free some space and run again"
            ) from None
    finally:
        lock.release()
    logger.warning(
        "study journal %s ended with a torn record (%d bytes, cut short: the disk may have been full, "
        "or a process was killed while writing); it was cut off and the journal as it was is kept in %s",
        path,
        state.size - state.torn_at,
        backup,
    )
    return backup


#: study user attribute ``PREFIX + str(trial number)``: why Optuna's heartbeat failed that trial, and what was
#: done (a trial failed takes no more attributes of its own, so the study keeps the reason)
STALE_TRIAL_ATTR_PREFIX = "interrupted_trial:"


def stale_trial_reasons(study: optuna.Study) -> dict[int, str]:
    """Trial number -> why Optuna's heartbeat failed it and what was done (see :data:`STALE_TRIAL_ATTR_PREFIX`)."""
    return {
        int(key.removeprefix(STALE_TRIAL_ATTR_PREFIX)): str(reason)
        for key, reason in study.user_attrs.items()
        if key.startswith(STALE_TRIAL_ATTR_PREFIX)
    }


@dataclass(frozen=True)
class DatabaseHeartbeat:
    """Optuna's own trial heartbeat, for a database storage (a journal file has none): while a trial runs,
    ``study.optimize`` records a heartbeat every ``interval`` seconds; a running trial silent for
    ``grace_period`` seconds (by the database server's clock) is failed before the next trial starts, and
    ``on_stale_trial(study, failed_trial)`` is called."""

    interval: int
    grace_period: int
    on_stale_trial: Callable[[optuna.Study, FrozenTrial], None]


def open_storage(
    url: str | None, run_dir: Path, repair: bool = True, heartbeat: DatabaseHeartbeat | None = None
) -> optuna.storages.BaseStorage:
    """The study storage: a journal file in ``run_dir`` by default, or a database URL.

    A journal is checked first (:mod:`automl_tl.storage`): a file that is not an Optuna journal, or one with a
    corrupt record, is refused untouched; with ``repair``, a torn last record is cut off (after a copy is kept),
    so that appends start on a line of their own. Without ``repair`` (readers such as the report) the file is
    never changed: Optuna's reader skips a torn last line by itself. A database storage takes ``heartbeat``,
    if given (processes that run trials: a reader needs none).
    """
    path = journal_path(url, run_dir)
    if path is not None:
        repair_journal(path) if repair else inspect_journal(path)
        try:
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as exc:
            raise ConfigError(f"cannot open the study journal {path}: {exc.strerror}") from None
        return optuna.storages.journal.JournalStorage(backend)
    try:
        if heartbeat is None:
            return optuna.storages.RDBStorage(url)
        with warnings.catch_warnings():  # Optuna calls its heartbeat experimental: it is what we use, knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=heartbeat.on_stale_trial,
            )
    except Exception as exc:  # noqa: BLE001 - driver missing, server down, bad credentials: all the user's to fix
        raise ConfigError(f"cannot open the study storage {mask_password(url)}: {first_line(exc)}") from None


def mask_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)
