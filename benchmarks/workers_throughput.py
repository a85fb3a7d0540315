"""Benchmark: trials per hour with 1 and 2 workers on this machine, and 4 workers on PostgreSQL.

What is measured
----------------
The same ``automl-tl search`` (the built-in digits, the offline ImageNet backbones at 32 px) with
the same wall-clock budget (``--budget`` seconds, ``--timeout``) and strategies that train the body
(``--strategies``; a linear probe on cached features takes a tenth of a second, and would measure
the storage more than the training), run with ``--workers 1`` and
``--workers 2`` on the journal file in the run directory: finished trials (complete or pruned) per
hour of wall time, from start-up to the end. The workers split the machine's cores between them.

Then ``--workers 4`` on a real PostgreSQL server (started on 127.0.0.1 by ``tests/postgres.sh``,
or ``--postgres URL``) with a trial budget (``--trials``) instead: every worker logs each trial it
ends ("trial N complete|pruned|failed"); the benchmark checks that each trial of the study was
ended by exactly one worker (none lost, none duplicated), that the leaderboard lists each trial
once, and that the best model is the best trial's.

How to run
----------
::

    python benchmarks/workers_throughput.py --overwrite          # about 10 min on 2 CPU cores
    python benchmarks/workers_throughput.py --budget 60 --trials 8 --overwrite   # a quicker look
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_run_options, command_line, fresh_output, machine_line, markdown_table)

logger = logging.getLogger("benchmarks.workers_throughput")
REPO = Path(__file__).resolve().parent.parent
TRIAL_END = re.compile(r"automl_tl\.search: trial (\d+) (complete|pruned|fail)")


def search_command(args: argparse.Namespace, run_dir: Path, workers: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "automl_tl.cli", "search", "--dataset", "digits", "--max-samples",
            str(args.samples), "--image-size", "32", "--max-epochs", str(args.epochs), "--seed", "0",
            "--workers", str(workers), "--output", str(run_dir), "--strategies", *args.strategies, *extra]


def throughput_row(args: argparse.Namespace, output: Path, env: dict, workers: int) -> dict:
    run_dir = output / f"journal-{workers}-workers"
    started = time.perf_counter()
    result = subprocess.run(search_command(args, run_dir, workers, "--trials", "100000", "--timeout",
                                           str(args.budget)), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{workers} worker(s) failed:\n{result.stderr[-3000:]}")
    board = pd.read_csv(run_dir / "leaderboard.csv")
    finished = int(board["state"].isin(["COMPLETE", "PRUNED"]).sum())
    return {"storage": "journal file", "workers": workers, "budget s": args.budget, "wall s": seconds,
            "finished trials": finished, "failed trials": int((board["state"] == "FAIL").sum()),
            "trials per hour": 3600 * finished / seconds,
            "best val accuracy": json.loads((run_dir / "summary.json").read_text())["val_accuracy"]}


def start_postgres() -> tuple[str, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tempfile.mkdtemp(prefix="automl_tl-bench-postgres-")
    url = subprocess.run(["bash", str(REPO / "tests" / "postgres.sh"), "start", state, str(port)],
                         check=True, capture_output=True, text=True).stdout.strip()
    return url, state


def postgres_row(args: argparse.Namespace, output: Path, env: dict, url: str) -> tuple[dict, list[str]]:
    run_dir = output / "postgres-4-workers"
    study_name = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    result = subprocess.run(search_command(args, run_dir, 4, "--trials", str(args.trials), "--storage", url,
                                           "--study-name", study_name), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"4 workers on PostgreSQL failed:\n{result.stderr[-3000:]}")
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
    workers = {t.system_attrs.get("automl_tl:worker", {}).get("pid") for t in trials}
    checks = [
        f"trials in the study: {len(trials)}; ended by a worker: {sum(ended.values())} "
        f"(by {len(workers)} worker processes)",
        f"lost (in the study, ended by no worker): {lost or 'none'}; ended twice: {duplicated or 'none'}; "
        f"ended but not in the study: {unknown or 'none'}",
        f"leaderboard rows: {len(board)}, each trial once: {'yes' if sorted(board['trial']) == sorted(t.number for t in trials) else 'NO'}",
        f"best model: trial {saved}; best trial of the study: {best} ({'same' if saved == best else 'DIFFERENT'})",
    ]
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    row = {"storage": "PostgreSQL", "workers": 4, "budget s": None, "wall s": seconds, "finished trials": finished,
           "failed trials": sum(t.state == TrialState.FAIL for t in trials),
           "trials per hour": 3600 * finished / seconds, "best val accuracy": study.trials[best].value}
    return row, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=120.0, help="wall seconds of the 1- and 2-worker runs")
    parser.add_argument("--trials", type=int, default=12, help="trials of the 4-worker PostgreSQL run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=300, help="digits used (stratified)")
    parser.add_argument("--strategies", nargs="+", default=["last_k", "full", "lp_ft"],
                        help="strategies searched (default: those that train the body, where throughput matters; "
                             "linear probes on cached features take a tenth of a second)")
    parser.add_argument("--postgres", help="a PostgreSQL URL to use (default: start one on 127.0.0.1)")
    add_run_options(parser, "runs/bench_workers", "delete earlier results in OUTPUT first")
    args = parser.parse_args()
    output = fresh_output(args)
    cache = output / "features"
    env = {**os.environ, "AUTOML_TL_FEATURE_CACHE": str(cache.resolve()), "HF_HUB_OFFLINE": "1"}
    # Fill the feature cache once, untimed, so neither timed run pays for it alone.
    subprocess.run(search_command(args, output / "warm-up", 1, "--trials", "1"), env=env, check=True,
                   capture_output=True)

    rows = [throughput_row(args, output, env, workers) for workers in (1, 2)]
    url, state = (args.postgres, None) if args.postgres else start_postgres()
    try:
        row, checks = postgres_row(args, output, env, url)
        rows.append(row)
    finally:
        if state is not None:
            subprocess.run(["bash", str(REPO / "tests" / "postgres.sh"), "stop", state], capture_output=True)

    table = markdown_table(rows, {"budget s": "{:.0f}", "wall s": "{:.1f}", "trials per hour": "{:.0f}",
                                  "best val accuracy": "{:.4f}"})
    speedup = rows[1]["trials per hour"] / rows[0]["trials per hour"]
    text = "\n".join([
        f"command: {command_line()}", machine_line("cpu"), "",
        f"search: digits ({args.samples}) at 32 px, every offline image backbone, strategies "
        f"{' '.join(args.strategies)}, {args.epochs} epochs per trial; "
        "wall time from the command's start to its end (start-up, every worker's imports, the final evaluation)",
        "", table, "", f"- 2 workers vs 1: {speedup:.2f}x the trials per hour", *[f"- {c}" for c in checks], ""])
    print(text)
    (output / "results.md").write_text(text)


if __name__ == "__main__":
    main()
