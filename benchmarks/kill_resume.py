"""Benchmark: searches killed with SIGKILL at random moments, each resumed by running the same command again.

What is measured
----------------
One uninterrupted ``automl-tl search`` (the reference), then ``--runs`` copies of the same command,
each in its own run directory, each killed with SIGKILL at a random moment (uniform between
``--earliest`` seconds and 90 % of the reference's wall time, so kills land in start-up, pre-ranking,
trials and the final evaluation alike) and then run again, unchanged, to the end. For every run:

* **finished trials lost**: trials that were COMPLETE or PRUNED in the study right after the kill and
  are not, with the same value, after the resume (goal: 0 in every run);
* whether the trial running at the kill was marked failed ("interrupted") and run again;
* **same best trial as the reference**: the resumed run's best model has the reference's parameters
  and validation accuracy (a resumed search draws and trains what an uninterrupted one would have:
  the sampler and each trial's training are seeded by the trial's slot, not by the process).

All runs share one feature cache (as a user's runs do), filled by the reference run. The table goes
to stdout and ``OUTPUT/results.md``.

How to run
----------
::

    OMP_NUM_THREADS=2 python benchmarks/kill_resume.py --overwrite              # 10 runs, about 15 min
    OMP_NUM_THREADS=2 python benchmarks/kill_resume.py --runs 2 --trials 4 --overwrite   # a short look
    python benchmarks/kill_resume.py --quick --output runs/bench_kill_resume_quick --overwrite   # plumbing check

``--quick``: one killed run, 2 trials of 1 epoch on 120 digits with MobileNetV2 alone (three commands, each
paying the interpreter's start-up: well under a minute on an idle machine; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

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

logger = logging.getLogger("benchmarks.kill_resume")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "runs": 10,
        "trials": 12,
        "epochs": 3,
        "samples": 800,
        "backbones": ("mobilenetv2_100", "tf_efficientnet_lite0"),
    },
    "quick": {"runs": 1, "trials": 2, "epochs": 1, "samples": 120, "backbones": ("mobilenetv2_100",)},
}


def search_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "automl_tl.cli",
        "search",
        "--dataset",
        "digits",
        "--max-samples",
        str(args.samples),
        "--backbones",
        *args.backbones,
        "--image-size",
        "32",
        "--trials",
        str(args.trials),
        "--max-epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--output",
        str(run_dir),
    ]


def load_study(run_dir: Path) -> optuna.Study | None:
    journal = run_dir / "study.journal"
    if not journal.exists():
        return None
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name="automl_tl", storage=storage)
    except KeyError:
        return None


def finished_values(study: optuna.Study | None) -> dict[int, tuple[str, float | None]]:
    if study is None:
        return {}
    return {
        t.number: (t.state.name, t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("best_val_accuracy"))
        for t in study.get_trials(deepcopy=False, states=FINISHED)
    }


def best_model(run_dir: Path) -> tuple[dict, float]:
    config = json.loads((run_dir / "best_model" / "config.json").read_text())
    return config["trial_config"], config["val_accuracy"]


def same_configuration(a: dict, b: dict) -> bool:
    """Equal trial settings, the seed aside (it is the slot's, and equal too when the draws are)."""
    keys = ("backbone", "strategy", "trained_groups", "backbone_lr", "layer_decay", "head_lr", "head", "seed")
    return all(a.get(k) == b.get(k) for k in keys)


def phase_at(study: optuna.Study | None, run_dir: Path) -> str:
    """What the killed run was doing, read from what it left."""
    if study is None:
        return "start-up (no study yet)"
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        return f"trial {running[0].number} running"
    if (run_dir / "summary.json").exists():
        return "finished"
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    return "pre-ranking" if done == 0 else f"between trials / finishing ({done} done)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help=f"killed and resumed runs {size_help(SIZES, 'runs')}")
    parser.add_argument("--trials", type=int, default=None, help=f"trials of each search {size_help(SIZES, 'trials')}")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per trial {size_help(SIZES, 'epochs')}")
    parser.add_argument(
        "--samples", type=int, default=None, help=f"digits used (stratified) {size_help(SIZES, 'samples')}"
    )
    parser.add_argument("--backbones", nargs="+", default=None, help=f"image backbones {size_help(SIZES, 'backbones')}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--earliest", type=float, default=3.0, help="earliest kill, seconds after the start")
    parser.add_argument("--kill-seed", type=int, default=1, help="seed of the random kill moments")
    add_quick_option(parser, SIZES)
    add_run_options(parser, "runs/bench_kill_resume", "delete earlier results in OUTPUT first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = fresh_output(args)
    env = {**os.environ, "AUTOML_TL_FEATURE_CACHE": str((output / "features").resolve()), "HF_HUB_OFFLINE": "1"}

    reference_dir = output / "reference"
    started = time.perf_counter()
    subprocess.run(search_command(args, reference_dir), env=env, check=True, capture_output=True)
    reference_seconds = time.perf_counter() - started
    reference_config, reference_accuracy = best_model(reference_dir)
    logger.info(
        "reference run: %.1f s, best %s %s val %.4f",
        reference_seconds,
        reference_config["backbone"],
        reference_config["strategy"],
        reference_accuracy,
    )

    moments = random.Random(args.kill_seed)
    rows = []
    for run in range(1, args.runs + 1):
        run_dir = output / f"run{run:02d}"
        kill_after = moments.uniform(args.earliest, 0.9 * reference_seconds)
        process = subprocess.Popen(
            search_command(args, run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            process.wait(timeout=kill_after)
            killed = False  # it finished first
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            killed = True
        study = load_study(run_dir)
        phase = phase_at(study, run_dir) if killed else "finished before the kill"
        before = finished_values(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))] if study else []

        resume_started = time.perf_counter()
        resumed = subprocess.run(search_command(args, run_dir), env=env, capture_output=True, text=True)
        resume_seconds = time.perf_counter() - resume_started
        if resumed.returncode != 0:
            logger.error("run %d: the resumed search failed:\n%s", run, resumed.stderr[-2000:])
        after_study = load_study(run_dir)
        after = finished_values(after_study)
        lost = sum(1 for number, value in before.items() if after.get(number) != value)
        retried = "-"
        if running and after_study is not None:
            trials = after_study.get_trials(deepcopy=False)
            interrupted = trials[running[0]]
            retries = [t for t in trials if t.user_attrs.get("retry_of") == running[0]]
            retried = "yes" if interrupted.state == TrialState.FAIL and retries else "no"
        config, accuracy = best_model(run_dir) if resumed.returncode == 0 else ({}, None)
        same = (
            resumed.returncode == 0 and same_configuration(config, reference_config) and accuracy == reference_accuracy
        )
        rows.append(
            {
                "run": run,
                "killed after s": kill_after if killed else None,
                "phase at the kill": phase,
                "finished before": len(before),
                "lost": lost,
                "interrupted trial retried": retried,
                "resume s": resume_seconds,
                "exit": resumed.returncode,
                "best val accuracy": accuracy,
                "same best as uninterrupted": "yes" if same else "no",
            }
        )
        logger.info("run %d: %s", run, rows[-1])

    table = markdown_table(rows, {"killed after s": "{:.1f}", "resume s": "{:.1f}", "best val accuracy": "{:.4f}"})
    lost_total = sum(r["lost"] for r in rows)
    same_total = sum(r["same best as uninterrupted"] == "yes" for r in rows)
    text = "\n".join(
        [
            f"command: {command_line()}",
            machine_line("cpu"),
            "",
            f"search: digits ({args.samples}), {', '.join(args.backbones)} at 32 px, {args.trials} trials, "
            f"{args.epochs} epochs, seed {args.seed}; uninterrupted reference: {reference_seconds:.1f} s wall, best "
            f"{reference_config['backbone']} / {reference_config['strategy']}, val accuracy {reference_accuracy:.4f}",
            "",
            table,
            "",
            f"- finished trials lost: {lost_total} in {len(rows)} runs (goal: 0)",
            f"- resumed runs whose best model is the uninterrupted run's (same configuration and validation "
            f"accuracy): {same_total} of {len(rows)}",
            "",
        ]
    )
    print(text)
    (output / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    run_main(main)
