"""Several worker processes on one study: ``--workers N`` on one machine, ``automl-tl worker`` on any.

A study made by :class:`~automl_tl.search.Search` stores what a worker needs to join it: the
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from automl_tl.config import JOURNAL_FILE, SearchConfig
from automl_tl.data import (DEFAULT_MAX_BAD_FRACTION, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_ON_BAD_INPUT, DatasetBundle,
                            prepare_dataset)
from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.space import SearchSpace

if TYPE_CHECKING:
    from automl_tl.search import Search, SearchOutcome

logger = logging.getLogger(__name__)

#: the keys of a data source: how ``prepare_dataset`` was called, with ``data`` an absolute path
#: or ``dataset`` a registered data set's name
DATA_SOURCE_KEYS = ("data", "dataset", "label", "input_column", "seed", "max_samples", "modality", "val_fraction",
                    "test_fraction", "shots", "on_bad_input", "max_bad_fraction", "max_image_pixels", "group_column")
#: prepare_dataset's split fractions, for data sources stored before they were recorded
DEFAULT_FRACTIONS = {"val_fraction": 0.15, "test_fraction": 0.15}
#: the bad-row policy, which decides what rows a worker keeps, and its defaults (for sources stored before it)
BAD_INPUT_DEFAULTS = {"on_bad_input": DEFAULT_ON_BAD_INPUT, "max_bad_fraction": DEFAULT_MAX_BAD_FRACTION,
                      "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS}


def data_source(data: str | Path | None = None, dataset: str | None = None, label: str = "label",
                input_column: str | None = None, seed: int = 0, max_samples: int | None = None,
                modality: str | None = None, val_fraction: float = 0.15, test_fraction: float = 0.15,
                shots: int | None = None, on_bad_input: str = DEFAULT_ON_BAD_INPUT,
                max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                group_column: str | None = None) -> dict[str, Any]:
    """How to load a data set again in another process: a file or folder (made absolute), or a registered name."""
    if (data is None) == (dataset is None):
        raise ValueError("a data source is either a path or a registered data set's name")
    return {"data": None if data is None else str(Path(data).expanduser().resolve()), "dataset": dataset, "label": label,
            "input_column": input_column, "seed": seed, "max_samples": max_samples, "modality": modality,
            "val_fraction": val_fraction, "test_fraction": test_fraction, "shots": shots,
            "on_bad_input": on_bad_input, "max_bad_fraction": max_bad_fraction, "max_image_pixels": max_image_pixels,
            "group_column": group_column}


def load_data_source(source: dict[str, Any]) -> DatasetBundle:
    """The data set a :func:`data_source` describes, prepared (split) exactly as its maker did."""
    if source.get("dataset"):
        from automl_tl.registry import get_registry

        dataset = get_registry().get_dataset(source["dataset"])
        data, label, input_column = dataset.load(), dataset.label_column, dataset.input_column
    else:
        data, label, input_column = source["data"], source.get("label", "label"), source.get("input_column")
    return prepare_dataset(data, label_column=label, input_column=input_column, seed=source.get("seed", 0),
                           max_samples=source.get("max_samples"), modality=source.get("modality"),
                           shots=source.get("shots"), group_column=source.get("group_column"),
                           **{key: source.get(key, value) for key, value in DEFAULT_FRACTIONS.items()},
                           **{key: source.get(key, value) for key, value in BAD_INPUT_DEFAULTS.items()})


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def run_local_workers(search: "Search", workers: int, time_left: float | None) -> None:
    """Start ``workers`` processes of ``automl-tl worker`` on ``search``'s study and wait for them all.

    The study must exist (``search.open_study()``) and have a data source. Each worker gets its share
    of the cores and what is left of the time budget. Ctrl-C stops them all; what they finished is kept.
    """
    if search.data_source is None:
        raise ConfigError("several workers need data from a file, a folder or a registered data set "
                          "(a DataFrame in memory cannot be passed to other processes)")
    storage = search.config.storage or str((search.run_dir / JOURNAL_FILE).resolve())
    threads = threads_per_worker(workers)
    command = [sys.executable, "-m", "automl_tl.cli", "worker", "--storage", storage,
               "--study", search.config.study_name, "--output", str(search.run_dir.resolve()),
               "--threads", str(threads), "--no-finish", "--no-progress"]
    if time_left is not None:
        command += ["--timeout", f"{max(time_left, 1.0):.1f}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logger.info("starting %d workers on study %r with %d torch thread(s) each", workers, search.config.study_name,
                threads)
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
        raise AutomlTLError(f"{len(failed)} of {workers} workers failed (exit status "
                            f"{', '.join(str(code) for _, code in failed)}); their messages are above; "
                            "run the same command again to continue the study")


def join_study(storage: str, study_name: str, run_dir: str | Path | None = None, timeout: float | None = None,
               finish: bool = True, show_progress: bool | None = None) -> "SearchOutcome | None":
    """Join the study ``study_name`` in ``storage`` as one more worker, and run trials until it has enough.

    The data are loaded from the source stored with the study. ``run_dir`` (default: the study's own)
    receives the best model. With ``finish``, the worker then writes the leaderboard, the summary and
    the test metrics like ``automl-tl search`` does, and returns them.
    """
    from automl_tl.executor import Executor
    from automl_tl.feature_cache import FeatureCache
    from automl_tl.config import check_storage_url
    from automl_tl.search import Search, open_storage, saved_best_accuracy

    check_storage_url(storage)
    opened = open_storage(storage, Path("."))
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in {storage}; start one with "
                          f"'automl-tl search --storage {storage} --study-name {study_name} ...'") from None
    attrs = study.user_attrs
    if "search_config" not in attrs or "search_space" not in attrs:
        raise ConfigError(f"study {study_name!r} in {storage} was not made by 'automl-tl search' "
                          "(it has no stored settings to join)")
    if not attrs.get("data_source"):
        raise ConfigError(f"study {study_name!r} was made with data in memory; a worker can join only a study "
                          "whose data came from a file, a folder or a registered data set")
    overrides: dict[str, Any] = {"storage": storage, "study_name": study_name}
    if timeout is not None:
        overrides["timeout"] = timeout
    config = SearchConfig.from_dict({**attrs["search_config"], **overrides})
    data = load_data_source(attrs["data_source"])
    run_dir = Path(run_dir or attrs.get("run_dir") or Path("runs") / study_name)
    executor = Executor(feature_cache=FeatureCache(enabled=config.feature_cache), show_progress=show_progress)
    search = Search(data, config, run_dir, executor, data_source=attrs["data_source"])
    search.space = SearchSpace.from_dict(attrs["search_space"])
    search.start_clock()
    search.announce_start()
    joined = search.open_study()  # checks the data's fingerprint and the space against the stored ones
    logger.info("joined study %r in %s as a worker; run directory %s", study_name, storage, run_dir)
    search.optimize(joined)
    if not finish:
        return None
    if saved_best_accuracy(run_dir) is None:
        logger.info("this worker kept no model in %s (the study had its trials, or others' were better); "
                    "the study's results are where its other workers write them", run_dir)
        return None
    return search._finish(joined)
