"""Benchmark: training throughput of the shared Executor against a bare PyTorch loop.

What is measured
----------------
Training samples per second of two loops that train the same model on the same data:

* **bare loop**: the backbone's :class:`~automl_tl.transfer_model.TransferModel` (built with
  ``Backbone.build``, every layer group trained), ``torch.optim.AdamW`` over its
  parameters, and for each batch of a seeded permutation: ``preprocessor.collate``,
  forward, cross-entropy, ``zero_grad``, backward, ``step``. Nothing else.
* **executor**: ``Executor(show_progress=False).fit(TrialConfig(...))`` with the same
  backbone, full fine-tuning (trained groups = the backbone's number of layer groups),
  batch size and epochs, early stopping off (patience > epochs). Its extra per-batch work
  (learning-rate schedule, finiteness check, gradient clipping, ``loss.item()``) is what
  this benchmark exists to price.

Both loops read the same pre-encoded uint8 tensors from the executor's encode cache, which
is filled before any timing starts, and neither figure includes building the model (the
bare loop's timer starts after ``build``; the executor's figure is the sum of its per-epoch
``EpochRecord.train_seconds``, the training batches of each epoch alone, which start after
``build``). Each epoch's validation is timed apart by the executor (``EpochRecord.val_seconds``)
and is in neither figure; the validation split is kept tiny (one example per class) anyway.

The *end-to-end* columns add model building to both, and for the executor everything
``fit`` does (``TrialResult.seconds``: building, validation, restoring the best weights,
freeing memory).

Runs come in side-by-side pairs, and which loop goes first alternates (bare, executor |
executor, bare | ...); the ratio is the median, over the ``--repeats`` pairs, of executor
rate / bare rate, and also the ratio of the best (highest) rates. Other processes only ever slow a run down, and on 2 cores a
second busy process can slow PyTorch's threads ten-fold, so the share of the CPUs that
other processes used during each run is measured (``/proc/stat``) and printed: trust the
figures only when it is near 0. Before timing, a few batches of the bare loop warm up the
kernels.

How to run
----------
Full benchmark (about 2 minutes on 2 idle CPU cores; these are the defaults)::

    python benchmarks/executor_throughput.py --examples 512 --image-size 64 --batch-size 32 \\
        --epochs 1 --repeats 8 --output runs/bench_executor_throughput/results.md

Quick check of the plumbing (seconds; the built-in digits, MobileNetV2 at 32 px, one run of each loop; the
figures mean nothing)::

    python benchmarks/executor_throughput.py --quick
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from automl_tl.backbone import Backbone
from automl_tl.config import TrialConfig
from automl_tl.data.bundle import DatasetBundle, Split
from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry
from automl_tl.train.executor import Executor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    command_line,
    fill_sized_defaults,
    load_dataset,
    machine_line,
    percent,
    run_main,
    setup_logging,
    size_help,
)

logger = logging.getLogger("benchmarks.executor_throughput")

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "backbone": "tf_efficientnet_lite0",
        "dataset": "fashion-mnist",
        "examples": 512,
        "image_size": 64,
        "repeats": 8,
        "warmup_batches": 3,
    },
    "quick": {
        "backbone": "mobilenetv2_100",
        "dataset": "digits",
        "examples": 64,
        "image_size": 32,
        "repeats": 1,
        "warmup_batches": 1,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default=None, help=f"image backbone {size_help(SIZES, 'backbone')}")
    parser.add_argument(
        "--dataset",
        default=None,
        choices=("fashion-mnist", "digits"),
        help=f"registered data set to draw examples from {size_help(SIZES, 'dataset')}",
    )
    parser.add_argument("--examples", type=int, default=None, help=f"training examples {size_help(SIZES, 'examples')}")
    parser.add_argument(
        "--image-size", type=int, default=None, help=f"image side in pixels {size_help(SIZES, 'image_size')}"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default: 1)")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed runs of each loop {size_help(SIZES, 'repeats')}"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of body and head (default: 1e-3)")
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=None,
        help=f"untimed bare-loop batches first {size_help(SIZES, 'warmup_batches')}",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.05,
        help="a pair counts as clean when other processes used at most this share of the CPUs "
        "during both its runs (default: 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the table to this Markdown file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_quick_option(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.examples < args.batch_size or args.epochs < 1 or args.repeats < 1:
        parser.error("need --examples >= --batch-size, --epochs >= 1 and --repeats >= 1")
    return args


# ---------------------------------------------------------------- data


def make_bundle(dataset: str, n_train: int, seed: int) -> DatasetBundle:
    """``n_train`` stratified training examples and a validation split of one example per class."""
    frame = load_dataset(dataset)
    if "split" in frame.columns:
        frame = frame[frame["split"] == "train"].reset_index(drop=True)
    classes = sorted(frame["label"].unique(), key=str)
    n_classes = len(classes)
    val_idx = frame.groupby("label").sample(1, random_state=seed).index.to_numpy()
    rest = frame.drop(index=val_idx)
    train_idx, _ = train_test_split(
        rest.index.to_numpy(), train_size=n_train, stratify=rest["label"], random_state=seed
    )
    class_index = {c: i for i, c in enumerate(classes)}

    def split(name: str, idx: np.ndarray) -> Split:
        idx = np.sort(idx)
        return Split(
            name,
            list(frame.loc[idx, "image"]),
            np.array([class_index[c] for c in frame.loc[idx, "label"]], dtype=np.int64),
        )

    val = split("val", val_idx)
    return DatasetBundle(
        modality="image",
        classes=[str(c) for c in classes],
        train=split("train", train_idx),
        val=val,
        test=val,
        input_column="image",
        label_column="label",
        fingerprint=f"throughput-{dataset}-{n_train}-{seed}-{n_classes}",
    )


# ---------------------------------------------------------------- the two loops


def bare_loop(
    backbone: Backbone,
    items: list,
    labels: torch.Tensor,
    preprocessor,
    num_classes: int,
    args: argparse.Namespace,
    max_batches: int | None = None,
) -> dict:
    """Build, then time only the training loop; returns samples, train seconds, build seconds."""
    build_started = time.perf_counter()
    torch.manual_seed(args.seed)
    model = backbone.build(num_classes=num_classes)
    model.set_trained_groups(model.num_groups)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    build_seconds = time.perf_counter() - build_started

    started, samples, batches = time.perf_counter(), 0, 0
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(items), generator=generator)
        for start in range(0, len(items), args.batch_size):
            index = order[start : start + args.batch_size]
            batch = preprocessor.collate([items[i] for i in index], train=True)
            loss = loss_fn(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(index)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                return {"samples": samples, "train_s": time.perf_counter() - started, "build_s": build_seconds}
    return {"samples": samples, "train_s": time.perf_counter() - started, "build_s": build_seconds}


def executor_run(executor: Executor, backbone: Backbone, data: DatasetBundle, config: TrialConfig) -> dict:
    """One ``Executor.fit``: samples trained, seconds of the training batches alone (the sum of the epochs'
    ``train_seconds``), of validation (``val_seconds``), and of the whole call."""
    result = executor.fit(config, backbone, data)
    if len(result.history) != config.epochs:
        raise RuntimeError(f"executor ran {len(result.history)} of {config.epochs} epochs ({result.stop_reason})")
    return {
        "samples": result.samples_seen,
        "train_s": sum(r.train_seconds for r in result.history),
        "validation_s": sum(r.val_seconds for r in result.history),
        "fit_s": result.seconds,
    }


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("automl_tl_timm").setLevel(logging.WARNING)

    data = make_bundle(args.dataset, args.examples, args.seed)
    backbone = get_registry().get_backbone(args.backbone)
    options = InputOptions(image_size=args.image_size)
    preprocessor = backbone.preprocessor(options)
    executor = Executor(show_progress=False)
    started = time.perf_counter()
    items = executor.encoded(preprocessor, data, data.train)  # the same tensors for both loops
    executor.encoded(preprocessor, data, data.val)
    logger.info(
        "%s: %d train / %d validation examples at %d px, encoded in %.1fs (not timed)",
        args.dataset,
        len(data.train),
        len(data.val),
        args.image_size,
        time.perf_counter() - started,
    )
    labels = torch.as_tensor(data.train.labels)
    num_groups = backbone.build(len(data.classes), pretrained=False).num_groups
    config = TrialConfig(
        backbone=args.backbone,
        trained_groups=num_groups,
        backbone_lr=args.lr,
        head_lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        early_stopping_patience=args.epochs + 1,
        input_options=options,
    )

    if args.warmup_batches:
        bare_loop(backbone, items, labels, preprocessor, len(data.classes), args, max_batches=args.warmup_batches)

    runs: dict[str, list[dict]] = {"bare": [], "executor": []}
    for repeat in range(args.repeats):
        # bare, executor | executor, bare | ...: each pair runs side by side in time, and which loop goes
        # first alternates, so neither a drift of the machine nor going first favours one loop
        for kind in ("bare", "executor") if repeat % 2 == 0 else ("executor", "bare"):
            with OtherLoad() as load:
                if kind == "bare":
                    run = bare_loop(backbone, items, labels, preprocessor, len(data.classes), args)
                else:
                    run = executor_run(executor, backbone, data, config)
            run["other_load"] = load.share
            runs[kind].append(run)
            logger.info(
                "repeat %d, %s: %d samples in %.1fs of training -> %.1f samples/s%s; "
                "other processes used %s of the CPUs",
                repeat + 1,
                kind,
                run["samples"],
                run["train_s"],
                run["samples"] / run["train_s"],
                f" (validation {run['validation_s']:.2f}s excluded)" if kind == "executor" else "",
                percent(load.share),
            )

    def rates(kind: str, seconds) -> list[float]:
        return [r["samples"] / seconds(r) for r in runs[kind]]

    train = {k: rates(k, lambda r: r["train_s"]) for k in runs}
    end_to_end = {
        "bare": rates("bare", lambda r: r["build_s"] + r["train_s"]),
        "executor": rates("executor", lambda r: r["fit_s"]),
    }
    median = {k: statistics.median(v) for k, v in train.items()}
    best = {k: max(v) for k, v in train.items()}
    e2e = {k: statistics.median(v) for k, v in end_to_end.items()}
    pair_ratios = [e / b for e, b in zip(train["executor"], train["bare"])]
    pair_ratio = statistics.median(pair_ratios)
    # pairs in which neither run shared the machine with another busy process
    clean = [
        ratio
        for ratio, e, b in zip(pair_ratios, runs["executor"], runs["bare"])
        if max(e["other_load"] or 0.0, b["other_load"] or 0.0) <= args.max_other_load
    ]
    rows = []
    for kind, name in (("bare", "bare PyTorch"), ("executor", "Executor.fit")):
        rows.append(
            {
                "loop": name,
                "train samples/s, median": f"{median[kind]:.2f}",
                "best": f"{best[kind]:.2f}",
                "all runs": ", ".join(f"{v:.1f}" for v in train[kind]),
                "ratio, median of pairs": "1.000" if kind == "bare" else f"{pair_ratio:.3f}",
                "ratio, best": f"{best[kind] / best['bare']:.3f}",
                "end-to-end samples/s, median": f"{e2e[kind]:.2f}",
            }
        )
    validation = statistics.median(r["validation_s"] for r in runs["executor"])
    other = [r["other_load"] for k in runs for r in runs[k] if r["other_load"] is not None]
    header = "\n".join(
        [
            f"command: {command_line()}",
            machine_line(executor.device)
            + (
                f"; other processes used {percent(min(other))}-{percent(max(other))} of the CPUs during the runs"
                if other
                else ""
            ),
            f"workload: {args.backbone}, full fine-tuning ({num_groups} layer groups), {args.dataset} "
            f"{len(data.train)} examples at {args.image_size} px, batch {args.batch_size}, {args.epochs} epoch(s) per run, "
            f"{args.repeats} run(s) of each, alternating",
        ]
    )
    notes = "\n".join(
        [
            f"executor / bare training samples/s (goal >= 0.95): {pair_ratio:.3f} (median over side-by-side pairs), "
            f"{best['executor'] / best['bare']:.3f} (best run of each); "
            + (
                f"{statistics.median(clean):.3f} (median over the {len(clean)} of {len(pair_ratios)} pairs in which other "
                f"processes used <= {100 * args.max_other_load:.0f}% of the CPUs); "
                if clean
                else f"no pair ran with other processes under {100 * args.max_other_load:.0f}% of the CPUs; "
            )
            + f"end-to-end (medians) {e2e['executor'] / e2e['bare']:.3f}.",
            f"Executor training time = sum of EpochRecord.train_seconds, the training batches alone; validation "
            f"({len(data.val)} examples, EpochRecord.val_seconds, median {validation:.2f}s per run) is not in it. "
            "End-to-end adds model building to both, and for the executor everything else fit() does.",
        ]
    )
    table = pd.DataFrame(rows).to_markdown(
        index=False, disable_numparse=True, colalign=("left", "right", "right", "left", "right", "right", "right")
    )
    text = f"{header}\n\n{table}\n\n{notes}\n"
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    run_main(main)
