"""Benchmark: the search with everything it can choose, against the search without its accuracy tools, the oracle
frozen-feature probe and AutoGluon MultiModal, at equal wall-clock budgets, over seeds (issue 14).

What is measured
----------------
Real tasks across the three modalities, written to files as ``hands_off.py --clean`` writes them (its collections:
``fashion-mnist`` and ``digits`` images, ``bbc-news`` texts, ``spoken-digits`` audio by voices never heard in
training), then a share of the training rows (``--unlabelled``, default 20 %) has its label blanked: every system
learns from the same labelled rows, and the engine also sees the unlabelled ones, as a real collection carries them.
For every task, budget B (``--budgets``) and seed (``--seeds``: the samples, the splits and each system's seed),
in order, never two things at once:

* **search**: ``automl-tl search --data train.csv --label label --timeout B --seed S`` with its defaults
  (ensembles, calibration and every strategy it knows), then ``automl-tl predict`` on the test set.
* **search-plain**: the same with :data:`PLAIN_OPTIONS` (no ensemble, no calibration, and whatever else the
  defaults add since issue 14, switched off): the search as it was before them.
* **probe**: logistic regression on the frozen features of every installed backbone of the modality, fitted on
  the labelled training rows (``hands_off.run_probes``); the table shows the backbone with the best *test*
  accuracy (an oracle that favours the probe). Its features are cached under ``OUTPUT/features``.
* **autogluon**: ``run_automm.py`` of ``../shared/peers/autogluon`` (set up with its ``install.sh``; give its
  folder with ``--peer-home``), ``--time-limit B --profile cpu --threads 2 --seed S``, on the labelled rows only
  (it has no use for the others) and on the same default backbone as its README says; no audio (AutoMM has none).
  ``time_limit`` covers only AutoMM's training loop: the table shows the wall-clock of the whole command, as for
  the others. Its predictions carry no probabilities, so its ECE is not shown.

Each cell is the mean over the seeds ± its standard error (``-`` where a system did not run or failed; the
failure is in ``results.json``). Test accuracy and macro-F1 in %; ECE (15 bins) from the probabilities
``predict`` writes; wall: the whole command's seconds, interpreter start included.

The goal (issue 14): the search ahead of search-plain and of the oracle probe on every task, and of AutoGluon
where it runs.

How to run
----------
Alone on the machine. One seed of the four tasks at one budget B costs about 4 x (2 B + AutoGluon's B + its
start) plus the probes' features once per task and seed (fashion-mnist about 11 min, spoken digits 17 with
crepe-full, which ``--probe-backbones`` can leave out)::

    OMP_NUM_THREADS=2 python benchmarks/versus_peers.py --overwrite --peer-home ~/.cache/automl-peer-autogluon

Plumbing check (digits alone, 80 rows, a 30 s budget, one seed, no AutoGluon unless ``--peer-home`` is given)::

    OMP_NUM_THREADS=1 python benchmarks/versus_peers.py --quick --output runs/bench_versus_peers_quick --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the backbones are offline packages; never reach a model hub

import numpy as np
import pandas as pd

from automl_tl.results.calibration import expected_calibration_error
from automl_tl.train.device import default_device
from automl_tl.train.feature_cache import FeatureCache

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
import hands_off  # noqa: E402
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    add_run_options,
    apply_run_options,
    clear_run_dir,
    command_line,
    fill_sized_defaults,
    machine_line,
    markdown_table,
    percent,
    run_main,
    size_help,
)

logger = logging.getLogger("benchmarks.versus_peers")

TASKS = ("fashion-mnist", "digits", "bbc-news", "spoken-digits")
SYSTEMS = ("search", "search-plain", "probe", "autogluon")
#: the options that make the search what it was before issue 14's tools: each one switches a tool off
PLAIN_OPTIONS = ("--no-ensemble", "--no-calibration", "--no-self-training", "--augmentation", "none")
#: AutoMM's input column for each modality it has
AUTOGLUON_COLUMN = {"image": "path", "text": "text"}
WIDTH = 100

SIZES = {
    "full": {
        "tasks": TASKS,
        "budgets": (300.0, 900.0),
        "seeds": (0, 1, 2),
        "images": 520,
        "image_test": 600,
        "texts": None,
        "voices": 40,
        "test_voices": 12,
        "search_args": "",
        "probe_backbones": None,
        "systems": SYSTEMS,
    },
    "quick": {
        "tasks": ("digits",),
        "budgets": (30.0,),
        "seeds": (0,),
        "images": 80,
        "image_test": 40,
        "texts": 200,
        "voices": 8,
        "test_voices": 2,
        "search_args": "--backbones mobilenetv2_100 --image-size 32 --trials 2",
        "probe_backbones": ("mobilenetv2_100",),
        # one search: search-plain is the same code path, the probe is hands_off.py's (run by its own --quick), and
        # AutoGluon needs its peer set up
        "systems": ("search",),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help=f"tasks to run {sized('tasks')}")
    parser.add_argument("--budgets", nargs="+", type=float, default=None, help=f"budgets B in s {sized('budgets')}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help=f"seeds {sized('seeds')}")
    parser.add_argument(
        "--systems", nargs="+", choices=SYSTEMS, default=None, help=f"systems to run {sized('systems')}"
    )
    parser.add_argument(
        "--peer-home",
        default=None,
        help="AutoGluon's peer folder made by ../shared/peers/autogluon/install.sh (holds venv/ and "
        "run_automm.py); without it AutoGluon is not run",
    )
    parser.add_argument(
        "--unlabelled", type=float, default=0.2, help="share of training rows whose label is blanked (default: 0.2)"
    )
    parser.add_argument(
        "--search-args",
        default=None,
        help="extra options for both searches, as one string (write --search-args='--x' when it starts with a dash)",
    )
    parser.add_argument("--probe-backbones", nargs="+", metavar="NAME", default=None, help="the probe's backbones")
    group = parser.add_argument_group("sizes (as hands_off.py)")
    group.add_argument("--images", type=int, default=None, help=f"training images {sized('images')}")
    group.add_argument("--image-test", type=int, default=None, help=f"test images {sized('image_test')}")
    group.add_argument("--texts", type=int, default=None, help=f"bbc-news articles sampled {sized('texts')}")
    group.add_argument("--voices", type=int, default=None, help=f"spoken-digits voices {sized('voices')}")
    group.add_argument("--test-voices", type=int, default=None, help=f"test voices {sized('test_voices')}")
    add_quick_option(parser, SIZES)
    add_run_options(parser, "runs/bench_versus_peers", "delete OUTPUT's task folders first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if not 0 <= args.unlabelled < 0.9:
        parser.error("--unlabelled must be in [0, 0.9)")
    if "autogluon" in args.systems and args.peer_home is None:
        args.systems = [s for s in args.systems if s != "autogluon"]
    elif "autogluon" in args.systems and not (Path(args.peer_home).expanduser() / "venv" / "bin" / "python").is_file():
        parser.error(
            f"--peer-home {args.peer_home}: no venv/bin/python there (run ../shared/peers/autogluon/install.sh)"
        )
    return args


# ---------------------------------------------------------------- one task's files


def write_task(
    task: str, seed: int, budget: float, folder: Path, output: Path, args: argparse.Namespace
) -> hands_off.Collection:
    """``task`` written clean by hands_off.py's writer under ``folder`` (spoken digits synthesised once, into
    ``output/espeak-cache``), then ``--unlabelled`` of its training labels blanked (seeded; the first row keeps
    its label, as hands_off.py's do)."""
    options = ["--clean", "--seed", str(seed), "--collections", task, "--timeout", f"{budget:g}"]
    options += ["--images", str(args.images), "--image-test", str(args.image_test)]
    options += ["--voices", str(args.voices), "--test-voices", str(args.test_voices)]
    options += [] if args.texts is None else ["--texts", str(args.texts)]
    collection = hands_off.write_collection(task, folder, hands_off.parse_args(options), output)
    rng = np.random.default_rng(seed)
    blanked = 1 + rng.permutation(len(collection.kinds) - 1)[: round(args.unlabelled * len(collection.kinds))]
    for i in blanked:
        collection.kinds[i], collection.labels[i] = "unlabelled", None
    table = pd.read_csv(collection.train_csv, dtype=str, keep_default_na=False)
    table.loc[blanked, hands_off.LABEL] = ""
    table.to_csv(collection.train_csv, index=False)
    return collection


def autogluon_csv(source: Path, target: Path, modality: str) -> None:
    """``source``'s labelled rows in the columns AutoMM reads (``path`` as absolute file paths, or ``text``)."""
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    table = table[table[hands_off.LABEL] != ""]
    column = AUTOGLUON_COLUMN[modality]
    inputs = table["image"].map(lambda p: str((source.parent / p).resolve())) if modality == "image" else table["text"]
    pd.DataFrame({column: inputs, hands_off.LABEL: table[hands_off.LABEL]}).to_csv(target, index=False)


# ---------------------------------------------------------------- the systems


def test_scores(truth: list[str], predicted: list[str], probabilities: np.ndarray | None, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and (given the probabilities, columns in ``classes`` order) ECE."""
    result: dict[str, Any] = hands_off.scores(truth, predicted)
    if probabilities is not None:
        index = {name: i for i, name in enumerate(classes)}
        known = np.array([t in index for t in truth])
        labels = np.array([index.get(t, -1) for t in truth])
        result["ece"] = float(expected_calibration_error(probabilities[known], labels[known]))
    return result


def run_search(
    collection: hands_off.Collection, folder: Path, budget: float, seed: int, extra: list[str]
) -> dict[str, Any]:
    """A search (with ``extra`` options) and predict on the test set: wall seconds, test scores, ECE."""
    run_dir = folder / "run"
    command = hands_off.cli_command(
        "search",
        "--data",
        str(collection.train_csv),
        "--label",
        hands_off.LABEL,
        "--timeout",
        f"{budget:g}",
        "--seed",
        str(seed),
        "--output",
        str(run_dir),
        *extra,
    )
    env = {**os.environ, "AUTOML_TL_FEATURE_CACHE": str(run_dir / "feature-cache")}  # cold: it pays its features
    with OtherLoad() as load:
        status, wall = hands_off.run_logged(command, folder / "search", folder, env, limit=3 * budget + 300)
    result: dict[str, Any] = {"command": shlex.join(command), "exit_status": status, "wall_seconds": wall}
    result.update(other_load=load.share, **hands_off.search_record(run_dir))
    if status != 0:
        return {**result, "error": hands_off.failure(folder / "search", status)}
    predictions = folder / "predictions.csv"
    command = hands_off.cli_command(
        "predict", str(run_dir), "--data", str(collection.test_csv), "--output", str(predictions)
    )
    status, _ = hands_off.run_logged(command, folder / "predict", folder, dict(os.environ), limit=3 * budget + 300)
    if status != 0 or not predictions.is_file():
        return {**result, "error": "predict: " + hands_off.failure(folder / "predict", status)}
    table = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    columns = [c for c in table.columns if c.startswith("proba:")]
    probabilities = table[columns].replace("", "nan").astype(float).to_numpy() if columns else None
    if probabilities is not None and not np.isfinite(probabilities).all():
        probabilities = None  # a row without a prediction has no probabilities: no ECE rather than a wrong one
    classes = [c.removeprefix("proba:") for c in columns]
    return {**result, **test_scores(collection.test_labels, list(table["prediction"]), probabilities, classes)}


def run_autogluon(
    collection: hands_off.Collection, folder: Path, budget: float, seed: int, peer_home: Path
) -> dict[str, Any]:
    """AutoMM on the labelled rows at ``--time-limit`` = the budget: wall seconds of the whole command, scores."""
    if collection.modality not in AUTOGLUON_COLUMN:
        return {"error": f"AutoGluon MultiModal has no {collection.modality}"}
    train, test = folder / "train.csv", folder / "test.csv"
    autogluon_csv(collection.train_csv, train, collection.modality)
    autogluon_csv(collection.test_csv, test, collection.modality)
    out = folder / "out"
    command = [str(peer_home / "venv" / "bin" / "python"), str(peer_home / "run_automm.py")]
    command += ["--train", str(train), "--test", str(test), "--label", hands_off.LABEL, "--out", str(out)]
    command += ["--time-limit", f"{budget:g}", "--modality", collection.modality, "--profile", "cpu"]
    command += ["--threads", "2", "--seed", str(seed)]
    with OtherLoad() as load:
        status, wall = hands_off.run_logged(command, folder / "autogluon", folder, dict(os.environ), 3 * budget + 300)
    result: dict[str, Any] = {"command": shlex.join(command), "exit_status": status, "wall_seconds": wall}
    result["other_load"] = load.share
    predictions = out / "predictions.csv"
    if status != 0 or not predictions.is_file():
        return {**result, "error": hands_off.failure(folder / "autogluon", status)}
    table = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    return {**result, **test_scores(list(table[hands_off.LABEL]), list(table["pred"]), None, [])}


def run_probe(collection: hands_off.Collection, cache: FeatureCache, seed: int, names: list[str] | None) -> dict:
    """The oracle: the backbone whose frozen-feature logistic regression scores best on the test set."""
    probes = hands_off.run_probes(collection, cache, seed, names)
    if not probes:
        return {"error": "no backbone of the modality is installed"}
    best = max(probes, key=lambda b: (probes[b]["accuracy"], probes[b]["macro_f1"]))
    return {**probes[best], "backbone": best, "every_backbone": probes}


# ---------------------------------------------------------------- the table


def mean_and_error(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'m ± se' over the seeds (``m`` alone for one), scaled; '-' for none."""
    values = [scale * v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    error = float(np.std(values, ddof=1) / math.sqrt(len(values)))
    return f"{np.mean(values):.{digits}f} ± {error:.{digits}f}"


def task_table(task: str, budget: float, records: list[dict[str, Any]], systems: list[str]) -> str:
    """One task at one budget: a row per system, each figure the mean over the seeds ± its standard error."""
    rows = []
    for system in systems:
        runs = [r["systems"].get(system, {}) for r in records if r["task"] == task and r["budget"] == budget]
        ran = [run for run in runs if "accuracy" in run]
        rows.append(
            {
                "system": system,
                "seeds": f"{len(ran)}/{len(runs)}",
                "accuracy %": mean_and_error([r["accuracy"] for r in ran], 100),
                "macro-F1 %": mean_and_error([r["macro_f1"] for r in ran], 100),
                "ECE": mean_and_error([r.get("ece") for r in ran], 1, 3),
                "wall s": mean_and_error([r.get("wall_seconds") for r in ran], 1, 0),
            }
        )
    return markdown_table(rows, {}, right_aligned=("seeds", "accuracy %", "macro-F1 %", "ECE", "wall s"))


def goal_line(records: list[dict[str, Any]], tasks: list[str], budgets: list[float]) -> str:
    """Whether the search's mean accuracy is ahead of each other system's on every task and budget."""
    verdicts = []
    for task in tasks:
        for budget in budgets:
            runs = [r["systems"] for r in records if r["task"] == task and r["budget"] == budget]

            def mean(system: str, runs: list[dict] = runs) -> float | None:
                values = [run[system]["accuracy"] for run in runs if "accuracy" in run.get(system, {})]
                return float(np.mean(values)) if values else None

            ours = mean("search")
            others = {s: mean(s) for s in ("search-plain", "probe", "autogluon")}
            ahead = ours is not None and all(v is None or ours > v for v in others.values())
            verdicts.append(ahead)
    return (
        "goal: search ahead of search-plain, the oracle probe and AutoGluon (where it runs) on every task and "
        f"budget: {'PASS' if all(verdicts) else 'FAIL'} ({sum(verdicts)} of {len(verdicts)})"
    )


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    parts = []
    for task in args.tasks:
        for budget in args.budgets:
            if any(r["task"] == task and r["budget"] == budget for r in records):
                parts.append(f"### {task}, B = {budget:g} s\n\n{task_table(task, budget, records, args.systems)}")
    picks = [
        f"- {r['task']} B={r['budget']:g} seed {r['seed']}: search picked {r['systems'].get('search', {}).get('picked')}"
        f", probe oracle {r['systems'].get('probe', {}).get('backbone')}; other CPU load during the search "
        f"{percent(r['systems'].get('search', {}).get('other_load'))}"
        for r in records
    ]
    return "\n\n".join([*parts, goal_line(records, args.tasks, args.budgets), "\n".join(picks)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_run_options(args)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    output = Path(args.output).resolve()
    for task in args.tasks:
        hands_off.check_source(task)
        clear_run_dir(output / task, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(output / "features")
    peer_home = Path(args.peer_home).expanduser().resolve() if args.peer_home else None
    extra = shlex.split(args.search_args)
    head = "\n".join(
        [
            f"command: {command_line()}",
            machine_line(default_device()),
            f"tasks {' '.join(args.tasks)}; budgets {' '.join(f'{b:g}' for b in args.budgets)} s; seeds "
            f"{' '.join(map(str, args.seeds))}; {100 * args.unlabelled:.0f} % of training labels blanked; "
            f"search-plain: {' '.join(PLAIN_OPTIONS)}",
            "",
        ]
    )
    records: list[dict[str, Any]] = []
    for task in args.tasks:
        for seed in args.seeds:
            for budget in args.budgets:
                folder = output / task / f"B{budget:g}-seed{seed}"
                started = time.perf_counter()
                collection = write_task(task, seed, budget, folder / "task", output, args)
                systems: dict[str, dict[str, Any]] = {}
                for system in args.systems:
                    place = folder / system
                    place.mkdir(parents=True)
                    logger.info("%s B=%g seed %d: %s", task, budget, seed, system)
                    if system == "search":
                        systems[system] = run_search(collection, place, budget, seed, extra)
                    elif system == "search-plain":
                        systems[system] = run_search(collection, place, budget, seed, [*extra, *PLAIN_OPTIONS])
                    elif system == "probe":
                        systems[system] = run_probe(collection, cache, seed, args.probe_backbones)
                    else:
                        systems[system] = run_autogluon(collection, place, budget, seed, peer_home)
                    shown = ("accuracy", "macro_f1", "ece", "wall_seconds", "picked", "backbone", "error")
                    logger.info("%s: %s", system, {k: v for k, v in systems[system].items() if k in shown})
                records.append(
                    {
                        "task": task,
                        "budget": budget,
                        "seed": seed,
                        "description": collection.description,
                        "train_rows": collection.counts(),
                        "systems": systems,
                        "seconds": time.perf_counter() - started,
                    }
                )
                text = head + report(records, args) + "\n"
                (output / "results.md").write_text(text)
                (output / "results.json").write_text(
                    json.dumps({"command": command_line(), "records": records}, indent=2, default=str)
                )
    print(text)
    return 0


if __name__ == "__main__":
    run_main(main)
