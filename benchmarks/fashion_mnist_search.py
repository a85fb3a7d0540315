"""Benchmark: the automl_tl search against two fixed baselines on a Fashion-MNIST subset.

What is measured
----------------
On one stratified, seeded Fashion-MNIST subset (default 2,000 examples of the official
*train* split, divided by :func:`automl_tl.data.bundle.prepare_dataset` into train and validation,
and 1,000 examples of the official *test* split as the test set), at one small input size
(default 64 px), three ways of fitting a classifier:

* **search**: :func:`automl_tl.search.study.search` over the four backbones with offline ImageNet
  weights (``tf_efficientnet_lite0/1/2``, ``mobilenetv2_100``), trained groups, learning rates
  and epochs; the test accuracy is that of the best trial's saved model, as the search
  reports it;
* **full fine-tune lite0**: ``tf_efficientnet_lite0`` with every layer group trained,
  ``backbone_lr = head_lr = 1e-3``;
* **linear probe lite0**: ``tf_efficientnet_lite0`` with the body frozen (trained groups 0),
  ``head_lr = 1e-2`` (``--probe-lr``).

Both baselines run through the same :class:`~automl_tl.train.executor.Executor` instance as the
search (``Executor.fit`` with a ``TrialConfig``), for as many epochs as the best trial was
configured with, and are evaluated on the same test split.

Costs: *CPU s* is process CPU time (all threads) measured with ``time.process_time()``
around the whole ``run_search()`` call (so it includes Optuna, model saving and the final test
evaluation) or around ``Executor.fit`` plus the test prediction for a baseline; *wall s*
is ``time.perf_counter()`` around the same. Images are encoded (decoded and resized) for
every distinct preprocessing *before* any timing starts, so no row pays for encoding;
the one-off encoding cost is printed under the table.

The table is printed on stdout (Markdown) with the command line and the machine above it,
and written to ``OUTPUT/results.md``; the search's own run directory (leaderboard, summary,
best model) is ``OUTPUT/search``.

How to run
----------
Full benchmark (the defaults: about 4 minutes on 2 idle CPU cores, 10 trials)::

    python benchmarks/fashion_mnist_search.py --trials 10 --max-epochs 3 --timeout 1200 --overwrite

A longer search (25 trials; about 10 minutes on 2 idle cores, the timeout caps it)::

    python benchmarks/fashion_mnist_search.py --trials 25 --max-epochs 3 --timeout 900 \\
        --output runs/bench_fashion_mnist_search_25 --overwrite

Run it alone: on 2 cores another busy process slows PyTorch several-fold and inflates CPU
time too; the "CPU used by others" column says how much of that happened.

Quick check of the plumbing (seconds: the built-in digits instead of Fashion-MNIST, so that it needs no Debian
package, MobileNetV2 alone at 32 px, 2 trials of 1 epoch; the figures mean nothing)::

    python benchmarks/fashion_mnist_search.py --quick --output runs/bench_smoke --overwrite

An existing search in ``OUTPUT/search`` is never resumed (a resumed search would time
nothing): the script stops unless ``--overwrite`` is given, which deletes it first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from automl_tl.config import SearchConfig, TrialConfig
from automl_tl.data.bundle import DatasetBundle
from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry
from automl_tl.search.study import run_search
from automl_tl.train.executor import Executor, accuracy, predict_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    clear_run_dir,
    command_line,
    fill_sized_defaults,
    image_bundle,
    machine_line,
    markdown_table,
    percent,
    run_main,
    setup_logging,
    size_help,
    warm_encodings,
)

logger = logging.getLogger("benchmarks.fashion_mnist_search")

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "dataset": "fashion-mnist",
        "backbones": ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenetv2_100"),
        "baseline_backbone": "tf_efficientnet_lite0",
        "train": 2000,
        "test": 1000,
        "image_size": 64,
        "trials": 10,
        "max_epochs": 3,
    },
    "quick": {
        "dataset": "digits",
        "backbones": ("mobilenetv2_100",),
        "baseline_backbone": "mobilenetv2_100",
        "train": 100,
        "test": 50,
        "image_size": 32,
        "trials": 2,
        "max_epochs": 1,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        choices=("fashion-mnist", "digits"),
        default=None,
        help=f"registered image data set; digits have no official test split, so a stratified part "
        f"is held out {size_help(SIZES, 'dataset')}",
    )
    parser.add_argument(
        "--backbones", nargs="+", default=None, help=f"backbones the search may pick {size_help(SIZES, 'backbones')}"
    )
    parser.add_argument(
        "--baseline-backbone",
        default=None,
        help=f"backbone of the two fixed baselines {size_help(SIZES, 'baseline_backbone')}",
    )
    parser.add_argument(
        "--train",
        type=int,
        default=None,
        help=f"examples sampled from the official train split, for train + validation {size_help(SIZES, 'train')}",
    )
    parser.add_argument(
        "--test",
        type=int,
        default=None,
        help=f"examples sampled from the official test split {size_help(SIZES, 'test')}",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="share of the train sample held out for validation (default: 0.15)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help=f"image side in pixels {size_help(SIZES, 'image_size')}"
    )
    parser.add_argument("--trials", type=int, default=None, help=f"search trials {size_help(SIZES, 'trials')}")
    parser.add_argument(
        "--min-epochs", type=int, default=1, help="epochs every trial runs before it may be pruned (default: 1)"
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help=f"epochs each trial is scheduled for {size_help(SIZES, 'max_epochs')}",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="wall-clock budget of the search in seconds (default: none)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size everywhere (default: 32)")
    parser.add_argument(
        "--probe-lr", type=float, default=1e-2, help="head learning rate of the linear probe (default: 1e-2)"
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=1e-3,
        help="backbone and head learning rate of the full fine-tune (default: 1e-3)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the sampling, the splits, the search and the baselines"
    )
    parser.add_argument(
        "--output",
        default="runs/bench_fashion_mnist_search",
        help="output directory (default: runs/bench_fashion_mnist_search)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier search in OUTPUT/search first")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_quick_option(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.train < 50 or args.test < 10:
        parser.error("--train must be >= 50 and --test >= 10 (stratified over 10 classes)")
    if args.min_epochs < 1 or args.max_epochs < args.min_epochs:
        parser.error("epochs must satisfy 1 <= --min-epochs <= --max-epochs")
    return args


# ---------------------------------------------------------------- runs


def timed_search(executor: Executor, data: DatasetBundle, args: argparse.Namespace, run_dir: Path) -> dict:
    config = SearchConfig(
        backbones=tuple(args.backbones),
        n_trials=args.trials,
        timeout=args.timeout,
        seed=args.seed,
        min_epochs=args.min_epochs,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        input_options=InputOptions(image_size=args.image_size),
    )
    logger.info(
        "search: %d trials, %d-%d epochs, backbones %s",
        args.trials,
        args.min_epochs,
        args.max_epochs,
        ", ".join(args.backbones),
    )
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        outcome = run_search(data, config, run_dir, executor)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started

    board = outcome.leaderboard
    best = board[board["trial"] == outcome.best_trial].iloc[0]
    params = outcome.best_params
    states = board["state"].value_counts().to_dict()
    return {
        "method": f"search (best of {len(board)} trials)",
        "test accuracy": outcome.test_metrics["accuracy"],
        "val accuracy": outcome.best_val_accuracy,
        "CPU s": cpu,
        "wall s": wall,
        "epochs (run/set)": f"{int(best['epochs_run'])}/{args.max_epochs}",
        "backbone": params["backbone"],
        "trained groups": int(params.get("trained_groups", 0)),  # best_params holds what the strategy used
        "backbone lr": params.get("backbone_lr"),
        "head lr": params.get("head_lr"),
        "CPU used by others": percent(load.share),
        # kept for the baselines and the notes, dropped from the table
        "_epochs": int(best["epochs_run"]),  # the baselines train as many epochs as the best trial ran
        "_trials_by_state": states,
        "_trial_cpu_sum": float(board["cpu_seconds"].fillna(0).sum()),
    }


def run_baseline(executor: Executor, data: DatasetBundle, method: str, config: TrialConfig) -> dict:
    backbone = get_registry().get_backbone(config.backbone)
    logger.info(
        "%s: %s trained_groups=%d backbone_lr=%.1e head_lr=%.1e epochs=%d",
        method,
        config.backbone,
        config.trained_groups,
        config.backbone_lr,
        config.head_lr,
        config.epochs,
    )
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        result = executor.fit(config, backbone, data)
        preprocessor = backbone.preprocessor(config.input_options)
        items = executor.encoded(preprocessor, data, data.test)
        logits = predict_logits(result.model, preprocessor, items, 2 * config.batch_size, executor.device)
    test_accuracy = accuracy(logits, data.test.labels)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    logger.info(
        "%s: validation accuracy %.4f, test accuracy %.4f (%.0fs)",
        method,
        result.best_val_accuracy,
        test_accuracy,
        wall,
    )
    return {
        "method": method,
        "test accuracy": test_accuracy,
        "val accuracy": result.best_val_accuracy,
        "CPU s": cpu,
        "wall s": wall,
        "epochs (run/set)": f"{len(result.history)}/{config.epochs}",
        "backbone": config.backbone,
        "trained groups": config.trained_groups,
        "backbone lr": config.backbone_lr if config.trained_groups > 0 else None,
        "head lr": config.head_lr,
        "CPU used by others": percent(load.share),
    }


# ---------------------------------------------------------------- report


def results_table(rows: list[dict]) -> str:
    return markdown_table(
        rows,
        {
            "test accuracy": "{:.4f}",
            "val accuracy": "{:.4f}",
            "CPU s": "{:.0f}",
            "wall s": "{:.0f}",
            "backbone lr": "{:.2e}",
            "head lr": "{:.2e}",
        },
        right_aligned=("trained groups",),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    output = Path(args.output)
    run_dir = output / "search"
    clear_run_dir(run_dir, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    data = image_bundle(args.dataset, args.train, args.test, args.val_fraction, args.seed)
    options = InputOptions(image_size=args.image_size)
    encoded = list(dict.fromkeys([*args.backbones, args.baseline_backbone]))
    # 3 splits per distinct preprocessing must fit in the cache, or encodings would be recomputed mid-run.
    executor = Executor(show_progress=False, max_cached_encodings=3 * len(encoded))
    encode_seconds = warm_encodings(executor, data, encoded, options)
    logger.info("encoded all splits for %d backbones in %.1fs (not counted in any row)", len(encoded), encode_seconds)

    searched = timed_search(executor, data, args, run_dir)
    epochs = searched["_epochs"]
    baseline = get_registry().get_backbone(args.baseline_backbone)
    all_groups = baseline.build(len(data.classes), pretrained=False).num_groups
    common = dict(
        backbone=args.baseline_backbone,
        epochs=epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        input_options=options,
    )
    short = args.baseline_backbone.replace("tf_efficientnet_", "")  # "lite0", as the table has always said
    full = run_baseline(
        executor,
        data,
        f"full fine-tune {short}",
        TrialConfig(trained_groups=all_groups, backbone_lr=args.finetune_lr, head_lr=args.finetune_lr, **common),
    )
    probe = run_baseline(
        executor,
        data,
        f"linear probe {short}",
        TrialConfig(trained_groups=0, backbone_lr=args.finetune_lr, head_lr=args.probe_lr, **common),
    )
    rows = [searched, full, probe]

    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(searched["_trials_by_state"].items()))
    header = "\n".join(
        [
            f"command: {command_line()}",
            machine_line(executor.device),
            f"data: {args.dataset} at {args.image_size}x{args.image_size} px, {len(data.train)} train / "
            f"{len(data.val)} validation (train split) / {len(data.test)} test (test split), seed {args.seed}",
            f"search: {args.trials} trials requested ({states}), epochs {args.min_epochs}-{args.max_epochs}, "
            f"timeout {args.timeout or 'none'}; baselines run for the best trial's {epochs} epoch(s)",
        ]
    )
    notes = "\n".join(
        [
            f"CPU s = process CPU time (all threads); the search row times the whole run_search() call "
            f"(sum of its trials' own CPU time: {searched['_trial_cpu_sum']:.0f} s).",
            f"Encoding the images once per preprocessing took {encode_seconds:.1f} s wall, before any timing; "
            "no row includes it.",
            "CPU used by others = share of the machine's CPUs that other processes used meanwhile (from /proc/stat); "
            "timings are only comparable between rows where it is near 0%.",
        ]
    )
    table = results_table(rows)
    text = f"{header}\n\n{table}\n\n{notes}\n"
    print(text)
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
