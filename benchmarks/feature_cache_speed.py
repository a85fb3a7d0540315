"""Benchmark: a linear-probe trial on cached features against the same trial computing the features every epoch.

What is measured
----------------
On the Fashion-MNIST subset of ``fashion_mnist_search.py`` (default 2,000 examples of the
official train split, divided into train and validation; ``--image-size`` 64 px) with one
backbone (``--backbone``, default ``tf_efficientnet_lite0``), the same head-only trial two ways,
both through :meth:`automl_tl.train.executor.Executor.fit` with the same epochs, batch size, head
learning rate, linear head and seed, early stopping off (every epoch runs):

* **cached**: ``TrialConfig(strategy="linear_probe", probe_passes=1)``: one pass over the frozen
  body's training features per epoch, read from the on-disk
  :class:`~automl_tl.train.feature_cache.FeatureCache`, which was filled just before (a fresh folder);
* **uncached**: ``TrialConfig(strategy="last_k", trained_groups=0)`` with ``FeatureCache(enabled=False)``:
  the frozen body runs on every training batch and on the validation split in every epoch.

Filling the cache (the body's features of the train and validation splits, written to disk)
is timed apart: it is the one-off cost the cached trial, and every later trial on the same
backbone and data, builds on; the table also gives the cached trial with the fill included.
The images are decoded and resized once *before* any timing (``warm_encodings``), so no row
pays for that. Each trial runs ``--repeats`` times; the table gives the median. The speed-up
is uncached / cached, in wall and in CPU seconds (the issue's goal: at least 30x).

*CPU s* is process CPU time (all threads, ``time.process_time()``), *wall s* is
``time.perf_counter()``, both around ``Executor.fit`` alone (or around filling the cache).

How to run
----------
The full measurement (a few minutes on 2 CPU cores; run it alone on the machine)::

    python benchmarks/feature_cache_speed.py --overwrite

Quick check of the plumbing (seconds: 100 of the built-in digits, which need no Debian package, MobileNetV2
at 32 px, one repeat; the figures mean nothing)::

    OMP_NUM_THREADS=1 python benchmarks/feature_cache_speed.py --quick --output runs/bench_cache_smoke --overwrite

The feature cache lives in ``OUTPUT/features`` and is emptied first (with ``--overwrite``), so
the fill is always measured from nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from automl_tl.config import TrialConfig
from automl_tl.data.bundle import DatasetBundle
from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry
from automl_tl.train.executor import Executor, TrialResult
from automl_tl.train.feature_cache import FeatureCache

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    add_run_options,
    apply_run_options,
    clear_run_dir,
    command_line,
    fill_sized_defaults,
    image_bundle,
    machine_line,
    markdown_table,
    percent,
    run_main,
    size_help,
    warm_encodings,
)

logger = logging.getLogger("benchmarks.feature_cache_speed")
T = TypeVar("T")

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "dataset": "fashion-mnist",
        "backbone": "tf_efficientnet_lite0",
        "train": 2000,
        "image_size": 64,
        "epochs": 3,
        "repeats": 3,
    },
    "quick": {
        "dataset": "digits",
        "backbone": "mobilenetv2_100",
        "train": 100,
        "image_size": 32,
        "epochs": 2,
        "repeats": 1,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        choices=("fashion-mnist", "digits"),
        default=None,
        help=f"registered image data set {sized('dataset')}",
    )
    parser.add_argument("--backbone", default=None, help=f"image backbone {sized('backbone')}")
    parser.add_argument(
        "--train",
        type=int,
        default=None,
        help=f"examples of the official train split, for train + validation {sized('train')}",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.15, help="share held out for validation (default: 0.15)"
    )
    parser.add_argument("--image-size", type=int, default=None, help=f"image side in pixels {sized('image_size')}")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs of both trials {sized('epochs')}")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of both trials (default: 32)")
    parser.add_argument("--head-lr", type=float, default=1e-2, help="head learning rate of both trials (default: 1e-2)")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"runs of each trial, median reported {sized('repeats')}"
    )
    add_quick_option(parser, SIZES)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, the split and the trials (default: 0)")
    add_run_options(parser, "runs/bench_feature_cache_speed", "empty an earlier feature cache in OUTPUT first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.train < 50 or args.epochs < 1 or args.repeats < 1:
        parser.error("--train must be >= 50, --epochs and --repeats >= 1")
    return args


@dataclass
class Timing:
    """Wall and process CPU seconds of one action, and the other processes' CPU share meanwhile."""

    wall: float
    cpu: float
    other_load: float | None


def timed(action: Callable[[], T]) -> tuple[T, Timing]:
    """``action()``'s result and its wall seconds, process CPU seconds and the other processes' CPU share."""
    load = OtherLoad().start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu, load.stop())
    return result, timing


def fill_cache(executor: Executor, data: DatasetBundle, backbone_name: str, options: InputOptions) -> Timing:
    """Compute and store the body's features of the train and validation splits (the one-off cost)."""
    backbone = get_registry().get_backbone(backbone_name)

    def fill() -> None:
        for split in (data.train, data.val):
            executor.features(backbone, options, data, split)

    return timed(fill)[1]


def run_trial(executor: Executor, data: DatasetBundle, config: TrialConfig, repeats: int) -> tuple[TrialResult, Timing]:
    """``config`` fitted ``repeats`` times; the last result and the median timing."""
    backbone = get_registry().get_backbone(config.backbone)
    results, timings = [], []
    for repeat in range(repeats):
        result, timing = timed(lambda: executor.fit(config, backbone, data))
        logger.info(
            "%s trial %d/%d: %.2fs wall, %.2fs CPU, validation accuracy %.4f",
            config.strategy,
            repeat + 1,
            repeats,
            timing.wall,
            timing.cpu,
            result.best_val_accuracy,
        )
        results.append(result)
        timings.append(timing)
    loads = [t.other_load for t in timings if t.other_load is not None]
    return results[-1], Timing(
        statistics.median(t.wall for t in timings),
        statistics.median(t.cpu for t in timings),
        max(loads) if loads else None,
    )


def trial_config(args: argparse.Namespace, strategy: str, options: InputOptions) -> TrialConfig:
    """The shared trial: only ``strategy`` differs (and ``probe_passes``, which a last-k trial ignores)."""
    return TrialConfig(
        backbone=args.backbone,
        strategy=strategy,
        trained_groups=0,
        backbone_lr=1e-3,
        head_lr=args.head_lr,
        epochs=args.epochs,
        probe_passes=1,
        batch_size=args.batch_size,
        seed=args.seed,
        early_stopping_patience=args.epochs,
        input_options=options,
    )


def row(method: str, timing: Timing, result: TrialResult | None, note: str) -> dict:
    """One table row."""
    return {
        "method": method,
        "wall s": timing.wall,
        "CPU s": timing.cpu,
        "val accuracy": None if result is None else result.best_val_accuracy,
        "what runs": note,
        "CPU used by others": percent(timing.other_load),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_run_options(args)
    output = Path(args.output)
    cache_dir = output / "features"
    clear_run_dir(cache_dir, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    data = image_bundle(args.dataset, args.train, 10, args.val_fraction, args.seed)  # the test split is not used
    options = InputOptions(image_size=args.image_size)
    executor = Executor(show_progress=False, feature_cache=FeatureCache(cache_dir))
    encode_seconds = warm_encodings(executor, data, [args.backbone], options)

    fill = fill_cache(executor, data, args.backbone, options)
    misses = executor.feature_cache.misses
    cached_result, cached = run_trial(executor, data, trial_config(args, "linear_probe", options), args.repeats)
    if executor.feature_cache.misses != misses:
        raise RuntimeError("the cached trial computed features: the cache was not used")
    executor.feature_cache = FeatureCache(enabled=False)
    uncached_result, uncached = run_trial(executor, data, trial_config(args, "last_k", options), args.repeats)
    shutil.rmtree(cache_dir)  # a cache of this sample only; nothing else reads it

    cached_with_fill = Timing(fill.wall + cached.wall, fill.cpu + cached.cpu, fill.other_load)
    rows = [
        row(
            "cached: linear_probe, probe_passes=1",
            cached,
            cached_result,
            f"head on the cached features, {args.epochs} pass(es)",
        ),
        row(
            "uncached: last_k, trained_groups=0",
            uncached,
            uncached_result,
            f"frozen body on every batch and on validation, {args.epochs} epoch(s)",
        ),
        row("one-off: filling the cache", fill, None, "body's features of train + validation, written to disk"),
        row("cached trial + filling the cache", cached_with_fill, cached_result, "the first trial on a new cache"),
    ]
    table = markdown_table(rows, {"wall s": "{:.3f}", "CPU s": "{:.3f}", "val accuracy": "{:.4f}"})
    ratio_wall, ratio_cpu = uncached.wall / cached.wall, uncached.cpu / max(cached.cpu, 1e-9)
    lines = [
        f"command: {command_line()}",
        machine_line(executor.device),
        f"data: {args.dataset} at {args.image_size} px, {len(data.train)} train / {len(data.val)} validation; "
        f"backbone {args.backbone}; {args.epochs} epoch(s), batch {args.batch_size}, head lr {args.head_lr:g}, "
        f"linear head, early stopping off; median of {args.repeats} run(s)",
        "",
        table,
        "",
        f"speed-up of the trial on cached features (uncached / cached): {ratio_wall:.1f}x wall, {ratio_cpu:.1f}x CPU "
        f"(goal: >= 30x); with the one-off fill counted in: {uncached.wall / cached_with_fill.wall:.1f}x wall, "
        f"{uncached.cpu / cached_with_fill.cpu:.1f}x CPU",
        f"Encoding the images once took {encode_seconds:.1f} s wall, before any timing; no row includes it. "
        "CPU used by others = share of the machine's CPUs other processes used meanwhile (from /proc/stat); "
        "the ratio is only trustworthy where it is near 0 %.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(
        json.dumps({"rows": rows, "speedup_wall": ratio_wall, "speedup_cpu": ratio_cpu}, indent=2, default=str)
    )
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
