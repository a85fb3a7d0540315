"""Benchmark: does a long search leak memory? The process's RSS after 3 and after 30 trials of one search.

What is measured
----------------
One search (:class:`automl_tl.search.study.Search`, in this process) of ``--trials`` trials (default
30) over real offline backbones (``--backbones``, default ``mobilenetv2_100`` and
``tf_efficientnet_lite0``) on real data: ``--train`` of scikit-learn's handwritten digits
(default 600, split train / validation / test by ``prepare_dataset``) at ``--image-size`` px
(default 32), one epoch per trial, every adaptation strategy (linear probe, last-k, full, LP-FT)
and the default search space otherwise. Pre-ranking is on, so the first trials are the warm-start
probes and one LP-FT; then ``--sampler`` picks. Its default, ``random``, keeps drawing every
strategy, so that more than half the trials fine-tune the body (the path that allocates the
most); TPE would soon settle on the cheap probes, which win after one epoch on this data.

After each trial (an Optuna study callback, run after the search's own bookkeeping) the script
reads ``/proc/self/status``: ``VmRSS``, the resident set size now, and ``VmHWM``, its peak so
far. Nothing is freed or collected for the measurement: it is the memory the process holds
between trials, as a long search would see it. The goal: RSS growth from trial 3 (when every
backbone has been built and the data encoded, so the start-up allocations are done) to trial 30
under 10 %. The table shows some trials between, so a slow leak shows as a steady climb.

The frozen features go to a fresh feature cache in ``OUTPUT/features`` and the search to
``OUTPUT/run``, both emptied first with ``--overwrite``.

How to run
----------
The measurement (a few minutes on 2 CPU cores; run it alone on the machine)::

    python benchmarks/memory_growth.py --overwrite

Quick check of the plumbing (seconds: 4 trials on 100 digits, MobileNetV2 alone; the figures mean nothing)::

    OMP_NUM_THREADS=1 python benchmarks/memory_growth.py --quick --output runs/bench_memory_smoke --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch

from automl_tl.config import SearchConfig
from automl_tl.data.bundle import prepare_dataset
from automl_tl.inputs import InputOptions
from automl_tl.search.study import Search
from automl_tl.train.executor import Executor
from automl_tl.train.feature_cache import FeatureCache

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    add_quick_option,
    add_run_options,
    apply_run_options,
    clear_run_dir,
    command_line,
    fill_sized_defaults,
    load_dataset,
    machine_line,
    markdown_table,
    run_main,
    size_help,
    stratified_sample,
)

logger = logging.getLogger("benchmarks.memory_growth")

BASELINE_TRIAL = 3  # growth is measured from here: the start-up allocations are done
GOAL = 0.10  # RSS growth from BASELINE_TRIAL to the last trial must stay under this share
#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {"backbones": ("mobilenetv2_100", "tf_efficientnet_lite0"), "trials": 30, "train": 600, "image_size": 32},
    "quick": {"backbones": ("mobilenetv2_100",), "trials": BASELINE_TRIAL + 1, "train": 100, "image_size": 32},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=None, help=f"image backbones searched {sized('backbones')}")
    parser.add_argument("--trials", type=int, default=None, help=f"trials of the search {sized('trials')}")
    parser.add_argument(
        "--train", type=int, default=None, help=f"digits sampled, for train + validation + test {sized('train')}"
    )
    parser.add_argument("--image-size", type=int, default=None, help=f"image side in pixels {sized('image_size')}")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of every trial (default: 32)")
    parser.add_argument(
        "--sampler",
        choices=("random", "tpe"),
        default="random",
        help="the search's sampler (default: random, for an even mix of strategies)",
    )
    add_quick_option(parser, SIZES)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, the split and the search (default: 0)")
    add_run_options(parser, "runs/bench_memory_growth", "delete an earlier search and feature cache in OUTPUT first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.trials < BASELINE_TRIAL or args.train < 100:
        parser.error(f"--trials must be >= {BASELINE_TRIAL} and --train >= 100")
    return args


def memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Sample:
    """The process's memory after one trial."""

    trial: int  # 1-based count of trials run in this process
    state: str
    backbone: str
    strategy: str
    rss_mib: float
    peak_mib: float
    seconds: float  # since the search started


class MemoryProbe:
    """An Optuna study callback that reads the process's memory after every trial."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.started = time.perf_counter()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rss, peak = memory_mib()
        sample = Sample(
            len(self.samples) + 1,
            trial.state.name,
            trial.params.get("backbone", "?"),
            trial.params.get("strategy", "?"),
            rss,
            peak,
            time.perf_counter() - self.started,
        )
        self.samples.append(sample)
        logger.info(
            "after trial %d (%s %s, %s): RSS %.1f MiB, peak %.1f MiB",
            sample.trial,
            sample.backbone,
            sample.strategy,
            sample.state.lower(),
            rss,
            peak,
        )


def shown_trials(last: int) -> list[int]:
    """The trials the table shows: 1, the baseline, every fifth, and the last."""
    return sorted({1, BASELINE_TRIAL, *range(5, last + 1, 5), last})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_run_options(args)
    output = Path(args.output)
    clear_run_dir(output / "run", args.overwrite)
    clear_run_dir(output / "features", args.overwrite)
    output.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    frame = stratified_sample(load_dataset("digits"), args.train, args.seed)
    data = prepare_dataset(frame, label_column="label", input_column="image", seed=args.seed)
    config = SearchConfig(
        backbones=tuple(args.backbones),
        n_trials=args.trials,
        seed=args.seed,
        min_epochs=1,
        max_epochs=1,
        batch_size=args.batch_size,
        sampler=args.sampler,
        input_options=InputOptions(image_size=args.image_size),
    )
    executor = Executor(show_progress=False, feature_cache=FeatureCache(output / "features"))
    probe = MemoryProbe()
    rss_before, _ = memory_mib()
    outcome = Search(data, config, output / "run", executor, callbacks=[probe]).run()

    samples = {s.trial: s for s in probe.samples}
    if len(samples) < BASELINE_TRIAL:
        raise RuntimeError(f"only {len(samples)} trial(s) ran; the growth is measured from trial {BASELINE_TRIAL}")
    baseline, last = samples[BASELINE_TRIAL], probe.samples[-1]
    growth = (last.rss_mib - baseline.rss_mib) / baseline.rss_mib
    rows = [
        {
            "trial": n,
            "backbone, strategy": f"{samples[n].backbone} {samples[n].strategy}",
            "RSS MiB": samples[n].rss_mib,
            "peak RSS MiB": samples[n].peak_mib,
            f"growth vs trial {BASELINE_TRIAL}": f"{100 * (samples[n].rss_mib / baseline.rss_mib - 1):+.1f} %",
        }
        for n in shown_trials(last.trial)
    ]
    table = markdown_table(
        rows,
        {"RSS MiB": "{:.1f}", "peak RSS MiB": "{:.1f}"},
        right_aligned=("trial", f"growth vs trial {BASELINE_TRIAL}"),
    )
    strategies = Counter(s.strategy for s in probe.samples)
    states = Counter(s.state for s in probe.samples)
    lines = [
        f"command: {command_line()}",
        machine_line(executor.device),
        f"data: {len(data.train)} train / {len(data.val)} validation digits at {args.image_size} px; backbones "
        f"{', '.join(args.backbones)}; 1 epoch per trial, batch {args.batch_size}, {args.sampler} sampler; "
        "trials by strategy: "
        + ", ".join(f"{name} {count}" for name, count in sorted(strategies.items()))
        + "; by state: "
        + ", ".join(f"{name.lower()} {count}" for name, count in sorted(states.items())),
        "",
        table,
        "",
        f"RSS growth from trial {BASELINE_TRIAL} to trial {last.trial}: {100 * growth:+.1f} % "
        f"(goal: under {100 * GOAL:.0f} %): {'met' if growth < GOAL else 'NOT met'}. RSS before the search "
        f"(data loaded): {rss_before:.1f} MiB; the search took {last.seconds:.0f} s; best validation accuracy "
        f"{outcome.best_val_accuracy:.4f}.",
        "trial = trials run so far in this process; RSS = VmRSS and peak RSS = VmHWM of /proc/self/status, "
        "read after each trial.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(
        json.dumps({"samples": [asdict(s) for s in probe.samples], "growth": growth, "goal": GOAL}, indent=2)
    )
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
