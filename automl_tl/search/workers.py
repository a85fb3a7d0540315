"""Several worker processes on one study: ``--workers N`` on one machine, ``automl-tl worker`` on any.

A study made by :class:`~automl_tl.search.study.Search` stores what a worker needs to join it: the
search settings, the search space, the data's source (a file, a folder or a registered data set;
never the data themselves) with the data's fingerprint, and the run directory. A worker loads the
data again, refuses them if their fingerprint differs, and runs trials until the study as a whole
has enough (:meth:`Search.optimize`). Every worker reads the same storage, so every trial is
recorded once, whichever worker ran it; the best model is kept under a file lock in the run
directory, so workers on one machine (or on machines sharing that directory) keep one best model.

Torch threads are divided among the workers of one machine: N workers on C cores get C // N each.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.layout import JOURNAL_FILE

if TYPE_CHECKING:
    from automl_tl.search.study import Search

logger = logging.getLogger(__name__)


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def check_data_source(search: "Search", who: str) -> None:
    """Refuse data that other processes cannot load again: ``who`` (several workers, trials on Ray) needs
    data from a file, a folder or a registered data set."""
    if search.data_source is None:
        raise ConfigError(
            f"{who} need data from a file, a folder or a registered data set "
            "(a DataFrame in memory cannot be passed to other processes)"
        )


def run_local_workers(search: "Search", workers: int, time_left: float | None) -> None:
    """Start ``workers`` processes of ``automl-tl worker`` on ``search``'s study and wait for them all.

    The study must exist (``search.open_study()``) and have a data source. Each worker gets its share
    of the cores and what is left of the time budget. Ctrl-C stops them all; what they finished is kept.
    """
    check_data_source(search, "several workers")
    storage = search.config.storage or str((search.run_dir / JOURNAL_FILE).resolve())
    threads = threads_per_worker(workers)
    command = [
        sys.executable,
        "-m",
        "automl_tl.cli",
        "worker",
        "--storage",
        storage,
        "--study",
        search.config.study_name,
        "--output",
        str(search.run_dir.resolve()),
        "--threads",
        str(threads),
        "--no-finish",
        "--no-progress",
    ]
    if time_left is not None:
        command += ["--timeout", f"{max(time_left, 1.0):.1f}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logger.info(
        "starting %d workers on study %r with %d torch thread(s) each", workers, search.config.study_name, threads
    )
    processes = [subprocess.Popen(command, env=env) for _ in range(workers)]
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        for process in processes:  # they got the Ctrl-C too; make sure none lingers
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            process.wait()
        raise
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    if failed:
        raise AutomlTLError(
            f"{len(failed)} of {workers} workers failed (exit status "
            f"{', '.join(str(code) for _, code in failed)}); their messages are above; "
            "run the same command again to continue the study"
        )
