"""Benchmark: a text encoder's features in length order against the same features in data order.

What is measured
----------------
From BBC News (the ``bbc-news`` data set), ``--texts`` texts (default 500) in a seeded random order:
``--long`` of them (default 50) whole articles, the rest only their title line, the mix of short texts
with a few long ones that a collection of short texts tends to hold. The features of
``--backbone`` (default ``all-MiniLM-L6-v2``, at ``--max-length`` 128 tokens, batches of 64) are computed
twice by :func:`automl_tl.train.feature_cache.compute_features`:

* **data order**: the preprocessor's inference order switched off, so each batch pads to the longest
  text among 64 taken as they come (what the engine did before);
* **length order**: the default: batches formed longest text first, the rows put back in data order.

The table gives the wall seconds of each (model loading included, the texts tokenised before any
timing), the padded tokens the encoder ran on, the speed-up, and the largest difference between the
two feature matrices (they must agree to float tolerance).

How to run (about 2 minutes on one CPU core)::

    OMP_NUM_THREADS=1 python benchmarks/text_length_order.py

Quick check of the plumbing (seconds: 40 texts, 4 of them whole articles, 32 tokens, batches of 8; the figures
mean nothing)::

    python benchmarks/text_length_order.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry  # noqa: E402
from automl_tl.train.feature_cache import compute_features  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import add_quick_option, command_line, fill_sized_defaults, load_dataset, machine_line, run_main, size_help  # noqa: E402

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {"texts": 500, "long": 50, "max_length": 128, "batch_size": 64},
    "quick": {"texts": 40, "long": 4, "max_length": 32, "batch_size": 8},
}


def padded_tokens(items: list[list[int]], order: list[int] | None, batch_size: int) -> int:
    """Tokens the encoder runs on (padding included) when ``items`` are batched in ``order``."""
    lengths = [len(items[i]) for i in (order if order is not None else range(len(items)))]
    return sum(
        max(lengths[start : start + batch_size]) * len(lengths[start : start + batch_size])
        for start in range(0, len(lengths), batch_size)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="all-MiniLM-L6-v2")
    parser.add_argument("--texts", type=int, default=None, help=f"texts encoded {size_help(SIZES, 'texts')}")
    parser.add_argument(
        "--long", type=int, default=None, help=f"how many of the texts are whole articles {size_help(SIZES, 'long')}"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help=f"tokens per text {size_help(SIZES, 'max_length')}"
    )
    parser.add_argument("--batch-size", type=int, default=None, help=f"batch size {size_help(SIZES, 'batch_size')}")
    parser.add_argument("--seed", type=int, default=0)
    add_quick_option(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if not 0 <= args.long <= args.texts:
        parser.error("--long must lie between 0 and --texts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    registry = get_registry()
    articles = load_dataset("bbc-news")["text"].tolist()
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(articles), args.texts, replace=False)
    texts = [articles[i] if k < args.long else articles[i].split("\n")[0] for k, i in enumerate(chosen)]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    backbone = registry.get_backbone(args.backbone)
    preprocessor = backbone.preprocessor(InputOptions(max_length=args.max_length))
    items = preprocessor.encode(texts)
    backbone.build(2)  # load the weights once before timing, as a warm file cache would have them
    device = torch.device("cpu")

    started = time.perf_counter()
    sorted_features = compute_features(backbone, preprocessor, items, device, args.batch_size)
    sorted_seconds = time.perf_counter() - started
    length_order = preprocessor.inference_order(items)
    preprocessor.inference_order = lambda items: None  # data order: what the engine did before
    started = time.perf_counter()
    data_order_features = compute_features(backbone, preprocessor, items, device, args.batch_size)
    data_order_seconds = time.perf_counter() - started

    lengths = [len(item) for item in items]
    print(f"command: {command_line()}")
    print(machine_line(device))
    print(
        f"{args.backbone}, {len(items)} texts ({args.long} whole articles), tokens per text: median "
        f"{int(np.median(lengths))}, max {max(lengths)}; batches of {args.batch_size}; "
        f"{torch.get_num_threads()} CPU thread(s)"
    )
    print("| order | wall s | padded tokens |")
    print("|---|---:|---:|")
    print(f"| data order | {data_order_seconds:.1f} | {padded_tokens(items, None, args.batch_size):,} |")
    print(f"| length order | {sorted_seconds:.1f} | {padded_tokens(items, length_order, args.batch_size):,} |")
    print(
        f"speed-up {data_order_seconds / sorted_seconds:.2f}x; largest difference between the features "
        f"{np.abs(sorted_features - data_order_features).max():.2e}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
