"""Benchmark: trials per hour with 1 and 2 workers on this machine, 2 on Ray, and 4 workers on PostgreSQL.

What is measured
----------------
The same ``automl-tl search`` (the built-in digits, the offline ImageNet backbones at 32 px) with
the same wall-clock budget (``--budget`` seconds, ``--timeout``) and strategies that train the body
(``--strategies``; a linear probe on cached features takes a tenth of a second, and would measure
the storage more than the training), run with ``--workers 1`` and
``--workers 2`` on the journal file in the run directory: finished trials (complete or pruned) per
hour of wall time, from start-up to the end. The workers split the machine's cores between them.
Then the same with ``--ray`` and 2 workers (a local Ray runtime; ``--no-ray`` leaves it out): what Ray
adds per finished trial, in worker-seconds (workers x wall time / finished trials, against the 2 processes'),
and to the start of the first trial.

Then ``--workers 4`` (``--postgres-workers``) on a real PostgreSQL server (started on 127.0.0.1 by ``tests/postgres.sh``,
or ``--postgres URL``) with a trial budget (``--trials``) instead: every worker logs each trial it
ends ("trial N complete|pruned|failed"); the benchmark checks that each trial of the study was
ended by exactly one worker (none lost, none duplicated), that the leaderboard lists each trial
once, and that the best model is the best trial's.

How to run
----------
::

    python benchmarks/workers_throughput.py --overwrite          # about 10 min on 2 CPU cores
    python benchmarks/workers_throughput.py --budget 60 --trials 8 --overwrite   # a quicker look
    python benchmarks/workers_throughput.py --quick --postgres URL --output runs/bench_workers_quick --overwrite

``--quick`` is a plumbing check (20 s budgets, 120 digits, MobileNetV2 alone, 1 epoch, no warm-up, 2 trials by
one worker on PostgreSQL; each worker pays the interpreter's start-up, which ``--timeout`` counts, so it takes a
minute or more on 2 cores and its figures mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from automl_tl.errors import AutomlTLError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick_option,
    add_run_options,
    command_line,
    fill_sized_defaults,
    fresh_output,
    machine_line,
    markdown_table,
    run_main,
    size_help,
)

logger = logging.getLogger("benchmarks.workers_throughput")
REPO = Path(__file__).resolve().parent.parent
TRIAL_END = re.compile(r"automl_tl\.search\.study: trial (\d+) (complete|pruned|fail)")
#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "budget": 120.0,
        "trials": 12,
        "epochs": 2,
        "samples": 300,
        "postgres_workers": 4,
        "backbones": None,
        "warm_up": True,
    },
    # one worker on PostgreSQL: the same storage, checks and table, without two more interpreters' start-up
    "quick": {
        "budget": 20.0,
        "trials": 2,
        "epochs": 1,
        "samples": 120,
        "postgres_workers": 1,
        "backbones": ("mobilenetv2_100",),
        "warm_up": False,
    },
}


def search_command(args: argparse.Namespace, run_dir: Path, workers: int, *extra: str) -> list[str]:
    """The ``automl-tl search`` every run makes, with ``extra`` options appended."""
    backbones = ["--backbones", *args.backbones] if args.backbones else []  # none: every offline image backbone
    return [
        sys.executable,
        "-m",
        "automl_tl.cli",
        "search",
        "--dataset",
        "digits",
        "--max-samples",
        str(args.samples),
        "--image-size",
        "32",
        "--max-epochs",
        str(args.epochs),
        "--seed",
        "0",
        "--workers",
        str(workers),
        "--output",
        str(run_dir),
        "--strategies",
        *args.strategies,
        *backbones,
        *extra,
    ]


def throughput_row(args: argparse.Namespace, output: Path, env: dict, workers: int, ray: bool = False) -> dict:
    run_dir = output / f"journal-{workers}-{'ray' if ray else 'process'}-workers"
    started_at = time.time()
    started = time.perf_counter()
    result = subprocess.run(
        search_command(
            args, run_dir, workers, "--trials", "100000", "--timeout", str(args.budget), *(["--ray"] if ray else [])
        ),
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    board_path = run_dir / "leaderboard.csv"
    board = pd.read_csv(board_path) if board_path.is_file() else None
    finished = 0 if board is None else int(board["state"].isin(["COMPLETE", "PRUNED"]).sum())
    complete = 0 if board is None else int((board["state"] == "COMPLETE").sum())
    # A budget spent before any trial completed (start-up counts in --timeout; the search then exits non-zero)
    # is a figure, few trials per hour, not a failure of the benchmark; anything else that fails the search is.
    if result.returncode != 0 and (board is None or complete > 0):
        raise SystemExit(f"{workers} worker(s) failed:\n{result.stderr[-3000:]}")
    summary = run_dir / "summary.json"
    starts = sorted(t.datetime_start.timestamp() for t in _journal_trials(run_dir) if t.datetime_start is not None)
    return {
        "storage": "journal file",
        "workers": f"{workers} Ray actor(s), local runtime" if ray else f"{workers} process(es)",
        "first trial s": starts[0] - started_at if starts else None,
        "worker-s per trial": workers * seconds / finished if finished else None,
        "budget s": args.budget,
        "wall s": seconds,
        "finished trials": finished,
        "failed trials": 0 if board is None else int((board["state"] == "FAIL").sum()),
        "trials per hour": 3600 * finished / seconds,
        "best val accuracy": json.loads(summary.read_text())["val_accuracy"] if complete else None,
    }


def _journal_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study in ``run_dir``'s journal (none if there is no journal)."""
    journal = run_dir / "study.journal"
    if not journal.is_file():
        return []
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="automl_tl", storage=storage).get_trials(deepcopy=False)


def start_postgres() -> tuple[str, str]:
    """A throw-away PostgreSQL server on 127.0.0.1 (``tests/postgres.sh``): its URL and its state folder."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tempfile.mkdtemp(prefix="automl_tl-bench-postgres-")
    started = subprocess.run(
        ["bash", str(REPO / "tests" / "postgres.sh"), "start", state, str(port)], capture_output=True, text=True
    )
    if started.returncode != 0:
        last = (started.stderr.strip().splitlines() or [f"exit status {started.returncode}"])[-1]
        raise AutomlTLError(
            f"could not start a PostgreSQL server ({last}); install Debian's postgresql "
            "(./setup.sh does, as root) or pass --postgres URL"
        )
    return started.stdout.strip(), state


def postgres_row(args: argparse.Namespace, output: Path, env: dict, url: str) -> tuple[dict, list[str]]:
    workers = args.postgres_workers
    run_dir = output / f"postgres-{workers}-workers"
    study_name = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    result = subprocess.run(
        search_command(
            args, run_dir, workers, "--trials", str(args.trials), "--storage", url, "--study-name", study_name
        ),
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{workers} workers on PostgreSQL failed:\n{result.stderr[-3000:]}")
    ended = collections.Counter(int(m.group(1)) for m in TRIAL_END.finditer(result.stderr))
    study = optuna.load_study(study_name=study_name, storage=url)
    trials = study.get_trials(deepcopy=False)
    in_study = {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lost = sorted(in_study - set(ended))
    duplicated = sorted(n for n, count in ended.items() if count > 1)
    unknown = sorted(set(ended) - in_study)
    board = pd.read_csv(run_dir / "leaderboard.csv")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: (-t.value, t.number)).number
    saved = json.loads((run_dir / "best_model" / "config.json").read_text())["trial"]
    pids = {t.system_attrs.get("automl_tl:worker", {}).get("pid") for t in trials}
    checks = [
        f"trials in the study: {len(trials)}; ended by a worker: {sum(ended.values())} "
        f"(by {len(pids)} worker processes)",
        f"lost (in the study, ended by no worker): {lost or 'none'}; ended twice: {duplicated or 'none'}; "
        f"ended but not in the study: {unknown or 'none'}",
        f"leaderboard rows: {len(board)}, each trial once: {'yes' if sorted(board['trial']) == sorted(t.number for t in trials) else 'NO'}",
        f"best model: trial {saved}; best trial of the study: {best} ({'same' if saved == best else 'DIFFERENT'})",
    ]
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    row = {
        "storage": "PostgreSQL",
        "workers": f"{workers} process(es)",
        "first trial s": None,
        "worker-s per trial": workers * seconds / finished if finished else None,
        "budget s": None,
        "wall s": seconds,
        "finished trials": finished,
        "failed trials": sum(t.state == TrialState.FAIL for t in trials),
        "trials per hour": 3600 * finished / seconds,
        "best val accuracy": study.trials[best].value,
    }
    return row, checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget", type=float, default=None, help=f"wall seconds of the 1- and 2-worker runs {sized('budget')}"
    )
    parser.add_argument("--trials", type=int, default=None, help=f"trials of the PostgreSQL run {sized('trials')}")
    parser.add_argument(
        "--postgres-workers", type=int, default=None, help=f"workers of the PostgreSQL run {sized('postgres_workers')}"
    )
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per trial {sized('epochs')}")
    parser.add_argument("--samples", type=int, default=None, help=f"digits used (stratified) {sized('samples')}")
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=None,
        help=f"image backbones searched {sized('backbones')} (all: every offline one)",
    )
    parser.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"fill the feature cache with an untimed search first {sized('warm_up')}",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=["last_k", "full", "lp_ft"],
        help="strategies searched (default: those that train the body, where throughput matters; "
        "linear probes on cached features take a tenth of a second)",
    )
    parser.add_argument("--postgres", help="a PostgreSQL URL to use (default: start one on 127.0.0.1)")
    parser.add_argument(
        "--ray",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run 2 workers as Ray actors (--ray: a local Ray runtime), at the same budget (default: yes)",
    )
    add_quick_option(parser, SIZES)
    add_run_options(parser, "runs/bench_workers", "delete earlier results in OUTPUT first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = fresh_output(args)
    cache = output / "features"
    env = {**os.environ, "AUTOML_TL_FEATURE_CACHE": str(cache.resolve()), "HF_HUB_OFFLINE": "1"}
    if args.warm_up:  # fill the feature cache once, untimed, so neither timed run pays for it alone
        subprocess.run(
            search_command(args, output / "warm-up", 1, "--trials", "1"), env=env, check=True, capture_output=True
        )

    rows = [throughput_row(args, output, env, workers) for workers in (1, 2)]
    if args.ray:
        rows.append(throughput_row(args, output, env, 2, ray=True))
    url, state = (args.postgres, None) if args.postgres else start_postgres()
    try:
        row, checks = postgres_row(args, output, env, url)
        rows.append(row)
    finally:
        if state is not None:
            subprocess.run(["bash", str(REPO / "tests" / "postgres.sh"), "stop", state], capture_output=True)

    table = markdown_table(
        rows,
        {
            "first trial s": "{:.1f}",
            "worker-s per trial": "{:.1f}",
            "budget s": "{:.0f}",
            "wall s": "{:.1f}",
            "trials per hour": "{:.0f}",
            "best val accuracy": "{:.4f}",
        },
    )
    ray_lines = []
    if args.ray and rows[1]["worker-s per trial"] and rows[2]["worker-s per trial"]:
        ray_lines = [
            f"- Ray vs 2 processes: {rows[2]['trials per hour'] / rows[1]['trials per hour']:.2f}x the trials per "
            f"hour; Ray's overhead: {rows[2]['worker-s per trial'] - rows[1]['worker-s per trial']:+.1f} "
            "worker-seconds per finished trial (the start-up of the runtime and its actors included), "
            f"{rows[2]['first trial s'] - rows[1]['first trial s']:+.1f} s to the first trial"
        ]
    # (a budget shorter than the start-up can leave one worker with no finished trial)
    speedup = rows[1]["trials per hour"] / rows[0]["trials per hour"] if rows[0]["trials per hour"] else math.nan
    text = "\n".join(
        [
            f"command: {command_line()}",
            machine_line("cpu"),
            "",
            f"search: digits ({args.samples}) at 32 px, "
            f"{' '.join(args.backbones) if args.backbones else 'every offline image backbone'}, strategies "
            f"{' '.join(args.strategies)}, {args.epochs} epochs per trial"
            f"{'' if args.warm_up else ' (no warm-up: the feature cache starts empty)'}; "
            "wall time from the command's start to its end (start-up, every worker's imports, the final evaluation)",
            "",
            table,
            "",
            f"- 2 workers vs 1: {speedup:.2f}x the trials per hour",
            *ray_lines,
            *[f"- {c}" for c in checks],
            "",
        ]
    )
    print(text)
    (output / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    run_main(main)
