"""Benchmark: does the pre-ranking on a stratified sample rank the backbones as the pre-ranking on all does?

What is measured
----------------
About ``--examples`` Fashion-MNIST training images (default 3,000: the training part of a
stratified, seeded draw from the official train split) at ``--image-size`` 32 px, and the four offline image backbones. The
pre-ranking (:func:`automl_tl.rank.ranking.rank_backbones`) runs twice in a fresh feature cache:

1. on its default stratified sample (:data:`automl_tl.rank.ranking.PRERANK_SAMPLE_SIZE` examples);
2. on every example (the sample's rows come from the cache: only the rest is computed).

For each transferability score, the table gives both rankings and their Kendall tau, and the
seconds each pre-ranking took. A tau of 1 means the same order.

How to run (about 2 minutes on one CPU core)::

    OMP_NUM_THREADS=1 python benchmarks/prerank_sample.py

Quick check of the plumbing (seconds: 140 of the built-in digits, which need no Debian package, two backbones,
a sample of 50; the figures mean nothing)::

    python benchmarks/prerank_sample.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from automl_tl.data.bundle import prepare_dataset
from automl_tl.inputs import InputOptions
from automl_tl.rank.ranking import PRERANK_SAMPLE_SIZE, rank_backbones, stratified_sample
from automl_tl.rank.transferability import SCORES, kendall_tau
from automl_tl.registry import get_registry
from automl_tl.train.executor import Executor
from automl_tl.train.feature_cache import FeatureCache

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import add_quick_option, command_line, fill_sized_defaults, load_dataset, machine_line, run_main, size_help  # noqa: E402

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "dataset": "fashion-mnist",
        "examples": 3000,
        "sample_size": PRERANK_SAMPLE_SIZE,
        "backbones": ("mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"),
    },
    # two backbones: a Kendall tau needs two to order
    "quick": {
        "dataset": "digits",
        "examples": 100,
        "sample_size": 50,
        "backbones": ("mobilenetv2_100", "tf_efficientnet_lite0"),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        choices=("fashion-mnist", "digits"),
        default=None,
        help=f"registered image data set (its train split) {size_help(SIZES, 'dataset')}",
    )
    parser.add_argument(
        "--examples", type=int, default=None, help=f"training images wanted {size_help(SIZES, 'examples')}"
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        default=None,
        help=f"the pre-ranking's stratified sample {size_help(SIZES, 'sample_size')}",
    )
    parser.add_argument("--backbones", nargs="+", default=None, help=f"image backbones {size_help(SIZES, 'backbones')}")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    add_quick_option(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if len(args.backbones) < 2:
        parser.error("--backbones needs at least two (a ranking orders several)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    registry = get_registry()
    frame = load_dataset(args.dataset)
    if "split" in frame.columns:
        frame = frame[frame["split"] == "train"].reset_index(drop=True)
    # the default split keeps 70 % for training: draw enough for --examples training images
    frame = frame.iloc[stratified_sample(frame["label"].to_numpy(), round(args.examples / 0.7), args.seed)]
    bundle = prepare_dataset(frame[["image", "label"]], label_column="label", input_column="image", seed=args.seed)
    train = bundle.train
    backbones = [registry.get_backbone(name) for name in args.backbones]
    options = InputOptions(image_size=args.image_size)
    with tempfile.TemporaryDirectory(prefix="prerank-sample-") as root:
        executor = Executor(show_progress=False, feature_cache=FeatureCache(root))
        started = time.perf_counter()
        on_sample = rank_backbones(
            backbones, bundle, executor, options, sample_size=args.sample_size, seed=args.seed
        ).set_index("backbone")
        sample_seconds = time.perf_counter() - started
        started = time.perf_counter()
        on_all = rank_backbones(backbones, bundle, executor, options, sample_size=len(train), seed=args.seed).set_index(
            "backbone"
        )
        all_seconds = time.perf_counter() - started

    print(f"command: {command_line()}")
    print(machine_line(executor.device))
    print(
        f"{args.dataset}, {len(train)} training images at {args.image_size} px; sample of "
        f"{int(on_sample['scored_examples'].iloc[0])} (--sample-size {args.sample_size}; PRERANK_SAMPLE_SIZE "
        f"{PRERANK_SAMPLE_SIZE}); pre-ranking {sample_seconds:.0f}s on the sample, then {all_seconds:.0f}s on all"
    )
    print("| score | ranking on the sample | ranking on all | Kendall tau |")
    print("|---|---|---|---:|")
    for score in SCORES:
        names = list(on_all.index)
        tau = kendall_tau(on_sample.loc[names, score].tolist(), on_all.loc[names, score].tolist())
        print(
            f"| {score} | {', '.join(on_sample.sort_values(score, ascending=False).index)} | "
            f"{', '.join(on_all.sort_values(score, ascending=False).index)} | {tau:+.2f} |"
        )
    print(on_sample[["seconds_per_example", "estimated_seconds", "feature_seconds"]].to_string())
    return 0


if __name__ == "__main__":
    run_main(main)
