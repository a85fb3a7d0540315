"""Benchmark: few labels -- the search with ``shots`` K against nearest centroid, logistic regression and a
linear probe, at 1, 5 and 20 labelled examples per class.

What is measured
----------------
For each data set, a fixed pool of labelled examples: a stratified, seeded sample of the
Fashion-MNIST *test* split (default 1,000 images, 64 px, the four offline ImageNet backbones) and
of BBC News (default 1,000 articles, 128 tokens, all-MiniLM-L6-v2, plus all-mpnet-base-v2 when its
weights are installed and ``--mpnet`` is given). For each shot count K and each of ``--draws`` seeded
draws, :func:`automl_tl.data.bundle.prepare_dataset` with ``shots=K`` draws K examples per class; every other
example of the pool is the test set, the same for every method of that draw. Four ways to classify:

* **search**: :func:`automl_tl.search.study.search` on the K-shot bundle (its default space: with fewer
  than 10 shots it searches nearest centroid and logistic regression over the backbones, validated
  by cross-validation on the K shots; with 1 shot nearest centroid, nothing to validate; from 10
  shots a quarter of the shots is the validation split and every strategy is searched); the test
  accuracy is that of its saved best model, as the search reports it; "picked" counts what it chose;
* **nearest centroid** and **logistic regression** (``C`` by cross-validation on the shots when every
  class has 2 or more): :mod:`automl_tl.train.embedding_heads` fitted on all K shots per class;
* **linear probe**: the ``linear_probe`` strategy through :meth:`Executor.fit` on the bundle's
  training and validation splits (below 10 shots the validation split is the training split, so its
  best epoch is chosen on training accuracy), head lr 1e-2, linear head, 3 epochs of 10 passes.

Each baseline is run on every backbone; its row shows the backbone with the best mean test accuracy
over the draws: an oracle choice, which favours the baselines (the search must choose without test
labels). Test accuracy is the mean +- standard deviation (ddof 1) over the draws.

The frozen features of the whole pool are computed once per backbone (and cached on disk under
``OUTPUT/features``); the baselines index into them. The search runs as a user's would, with a
feature cache of its own per data set, and reads its test split through its best model.

How to run
----------
Full benchmark (2 data sets x 3 shot counts x 5 draws; 33 minutes on 2 CPU cores half taken by others)::

    OMP_NUM_THREADS=2 python benchmarks/few_shot.py --overwrite

Quick check of the plumbing (seconds: a pool of 100 of the built-in digits, which need no Debian package, at
32 px, MobileNetV2 alone, 2 shots, 2 draws of 2 trials; the figures mean nothing)::

    python benchmarks/few_shot.py --quick --output runs/bench_few_shot_quick --overwrite

``--datasets digits`` runs the same on scikit-learn's digits (a sample of all 1,797) instead of Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from automl_tl.config import SearchConfig, TrialConfig
from automl_tl.data.bundle import VALIDATION_HOLDOUT, DatasetBundle, Split, few_shot_split, prepare_dataset
from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry
from automl_tl.search.study import run_search
from automl_tl.train.embedding_heads import FITTERS, head_logits
from automl_tl.train.executor import Executor
from automl_tl.train.feature_cache import FeatureCache

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    add_run_options,
    command_line,
    fill_sized_defaults,
    fresh_output,
    load_dataset,
    machine_line,
    markdown_table,
    percent,
    run_main,
    size_help,
    stratified_sample,
)

logger = logging.getLogger("benchmarks.few_shot")

DATASETS = ("fashion-mnist", "bbc-news", "digits")
#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "datasets": ("fashion-mnist", "bbc-news"),
        "shots": (1, 5, 20),
        "draws": 5,
        "trials": 12,
        "pool": 1000,
        "image_size": 64,
        "max_length": 128,
        "image_backbones": (
            "tf_efficientnet_lite0",
            "tf_efficientnet_lite1",
            "tf_efficientnet_lite2",
            "mobilenetv2_100",
        ),
    },
    "quick": {
        "datasets": ("digits",),
        "shots": (2,),
        "draws": 2,
        "trials": 2,
        "pool": 100,
        "image_size": 32,
        "max_length": 64,
        "image_backbones": ("mobilenetv2_100",),
    },
}
SHORT = {
    "nearest_centroid": "NC",
    "logistic_regression": "LR",
    "linear_probe": "LP",
    "last_k": "last-k",
    "full": "full",
    "lp_ft": "LP-FT",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, help=f"data sets {sized('datasets')}")
    parser.add_argument("--shots", type=int, nargs="+", default=None, help=f"shot counts {sized('shots')}")
    parser.add_argument("--draws", type=int, default=None, help=f"seeded draws per shot count {sized('draws')}")
    parser.add_argument("--trials", type=int, default=None, help=f"trials per search {sized('trials')}")
    parser.add_argument("--pool", type=int, default=None, help=f"labelled examples per data set {sized('pool')}")
    parser.add_argument("--image-size", type=int, default=None, help=f"image side {sized('image_size')}")
    parser.add_argument(
        "--image-backbones",
        nargs="+",
        default=None,
        help=f"backbones of the image data sets {sized('image_backbones')}",
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help=f"BBC News tokens per article {sized('max_length')}"
    )
    parser.add_argument("--mpnet", action="store_true", help="BBC News: add all-mpnet-base-v2 if installed")
    add_quick_option(parser, SIZES)
    add_run_options(parser, "runs/bench_few_shot", "delete OUTPUT first (it holds an earlier run)")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if min(args.shots) < 1 or args.draws < 2:
        parser.error("shots must be >= 1 and draws >= 2 (a standard deviation needs two)")
    return args


def load_pool(name: str, args: argparse.Namespace) -> tuple[pd.DataFrame, str, list[str], InputOptions, str]:
    """The labelled pool, its input column, the backbones, the input options and a one-line description."""
    registry = get_registry()
    if name == "fashion-mnist":
        frame = load_dataset("fashion-mnist")
        test = frame[frame["split"] == "test"].drop(columns="split").reset_index(drop=True)
        pool = stratified_sample(test, args.pool, seed=0).reset_index(drop=True)
        return (
            pool,
            "image",
            list(args.image_backbones),
            InputOptions(image_size=args.image_size),
            f"Fashion-MNIST, {len(pool)} images of the official test split at {args.image_size} px",
        )
    if name == "digits":
        pool = stratified_sample(load_dataset("digits"), args.pool, seed=0).reset_index(drop=True)
        return (
            pool,
            "image",
            list(args.image_backbones),
            InputOptions(image_size=args.image_size),
            f"digits (scikit-learn), {len(pool)} of 1,797 images at {args.image_size} px",
        )
    frame = load_dataset("bbc-news")
    pool = stratified_sample(frame, args.pool, seed=0).reset_index(drop=True)
    backbones = ["all-MiniLM-L6-v2"]
    if args.mpnet and registry.get_backbone("all-mpnet-base-v2").weights_available():
        backbones.append("all-mpnet-base-v2")
    return (
        pool,
        "text",
        backbones,
        InputOptions(max_length=args.max_length),
        f"BBC News, {len(pool)} of 2,225 articles, {args.max_length} tokens",
    )


def pool_features(
    executor: Executor, pool: pd.DataFrame, input_column: str, backbones: list[str], options: InputOptions
) -> tuple[dict[str, np.ndarray], np.ndarray, list[Any]]:
    """Each backbone's frozen features of the whole pool, the pool's labels (as prepare_dataset numbers them)
    and the classes."""
    whole = prepare_dataset(pool, label_column="label", input_column=input_column, seed=0)
    class_index = {c: i for i, c in enumerate(whole.classes)}
    labels = np.array([class_index[c] for c in pool["label"]], dtype=np.int64)
    everything = Split("pool", list(pool[input_column]), labels)
    features = {}
    for name in backbones:
        started = time.perf_counter()
        features[name] = executor.features(get_registry().get_backbone(name), options, whole, everything)
        logger.info("features of the pool by %s: %.0f s", name, time.perf_counter() - started)
    return features, labels, whole.classes


def baselines(
    executor: Executor,
    bundle: DatasetBundle,
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    shots: int,
    draw: int,
    options: InputOptions,
) -> dict[tuple[str, str], float]:
    """Test accuracy of nearest centroid, logistic regression and the linear probe on every backbone."""
    train, val, test = few_shot_split(labels, shots, draw)
    # the same draw as prepare_dataset(shots=...) made: same labels in the same order
    assert np.array_equal(labels[train], bundle.train.labels) and np.array_equal(labels[test], bundle.test.labels)
    labelled = np.union1d(train, val)  # all K shots: these two need no validation split
    accuracies = {}
    for name, x in features.items():
        for strategy in ("nearest_centroid", "logistic_regression"):
            head = FITTERS[strategy](x[labelled], labels[labelled], len(bundle.classes), draw).module
            predicted = head_logits(head, x[test]).argmax(1).numpy()
            accuracies[(strategy, name)] = float((predicted == labels[test]).mean())
        config = TrialConfig(
            backbone=name,
            strategy="linear_probe",
            trained_groups=0,
            backbone_lr=1e-3,
            head_lr=1e-2,
            epochs=3,
            seed=draw,
            input_options=options,
        )
        result = executor.fit(config, get_registry().get_backbone(name), bundle)
        head = result.final_model().head.cpu()
        predicted = head_logits(head, x[test]).argmax(1).numpy()
        accuracies[("linear_probe", name)] = float((predicted == labels[test]).mean())
    return accuracies


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def run_dataset(name: str, args: argparse.Namespace, output: Path) -> tuple[str, list[dict]]:
    pool, input_column, backbones, options, description = load_pool(name, args)
    executor = Executor(feature_cache=FeatureCache(output / "features"))
    features, labels, classes = pool_features(executor, pool, input_column, backbones, options)
    # the searches get a feature cache of their own: they compute what a user's search would
    search_executor = Executor(feature_cache=FeatureCache(output / name / "search-features"))
    rows = []
    for shots in args.shots:
        searched, picked, seconds = [], Counter(), []
        baseline: dict[tuple[str, str], list[float]] = {}
        load = OtherLoad().start()
        validation = None
        for draw in range(args.draws):
            bundle = prepare_dataset(pool, label_column="label", input_column=input_column, seed=draw, shots=shots)
            validation = bundle.validation
            config = SearchConfig(backbones=tuple(backbones), n_trials=args.trials, seed=draw, input_options=options)
            started = time.perf_counter()
            outcome = run_search(
                bundle, config, output / name / f"search-{shots}shot-draw{draw}", executor=search_executor
            )
            seconds.append(time.perf_counter() - started)
            searched.append(outcome.test_metrics["accuracy"])
            params = outcome.best_params
            picked[f"{SHORT.get(params['strategy'], params['strategy'])} {params['backbone']}"] += 1
            for key, value in baselines(executor, bundle, features, labels, shots, draw, options).items():
                baseline.setdefault(key, []).append(value)
            logger.info(
                "%s, %d shots, draw %d: search %.4f (%s), %.0f s",
                name,
                shots,
                draw,
                searched[-1],
                params["strategy"],
                seconds[-1],
            )
        load.stop()
        how = {
            "holdout": f"{shots // 4}/class held out",
            "cross_validation": "cross-validation",
            "none": "none (1 shot)",
        }[validation]
        rows.append(
            {
                "shots": shots,
                "method": "search",
                "backbone": "(searched)",
                "test accuracy": mean_std(searched),
                "picked (of draws)": ", ".join(f"{k} ×{n}" for k, n in picked.most_common()),
                "validation": how,
                "s per run": f"{np.mean(seconds):.0f}",
                "CPU used by others": percent(load.share),
                "_values": searched,
            }
        )
        for strategy, label in (
            ("nearest_centroid", "nearest centroid"),
            ("logistic_regression", "logistic regression"),
            ("linear_probe", "linear probe"),
        ):
            best = max(backbones, key=lambda b: np.mean(baseline[(strategy, b)]))
            rows.append(
                {
                    "shots": shots,
                    "method": label,
                    "backbone": best,
                    "test accuracy": mean_std(baseline[(strategy, best)]),
                    "picked (of draws)": "",
                    "validation": (
                        "all shots"
                        if strategy != "linear_probe"
                        else "training split"
                        if validation != VALIDATION_HOLDOUT
                        else how
                    ),
                    "s per run": "",
                    "CPU used by others": "",
                    "_values": baseline[(strategy, best)],
                }
            )
    test_sizes = sorted({len(pool) - shots * len(classes) for shots in args.shots}, reverse=True)
    section = "\n".join(
        [
            f"### {description}",
            "",
            f"{len(classes)} classes; backbones: {', '.join(backbones)}; {args.draws} draws per shot count; test set: "
            f"every pool example not drawn ({', '.join(map(str, test_sizes))} for {', '.join(map(str, args.shots))} "
            f"shots); search: {args.trials} trials. Baselines: the backbone with the best mean test accuracy (oracle).",
            "",
            markdown_table(rows, {}),
            "",
        ]
    )
    return section, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = fresh_output(args)
    head = [f"command: {command_line()}", machine_line("cuda" if torch.cuda.is_available() else "cpu"), ""]
    sections, results = [], {}
    for name in args.datasets:
        started = time.perf_counter()
        section, rows = run_dataset(name, args, output)
        sections.append(section)
        results[name] = rows
        logger.info("%s done in %.0f s", name, time.perf_counter() - started)
        text = "\n".join(head + sections)
        (output / "results.md").write_text(text)
        (output / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
