"""Benchmark: the automl_tl search over the offline audio backbones against linear probes and a log-mel baseline.

What is measured
----------------
Two real, offline audio data sets, one table each:

* **spoken digits**: the ten digit words synthesised with espeak-ng in ``--voices`` voices (an
  espeak-ng voice variant each, with its own pitch and speed; see
  :func:`automl_tl_datasets.audio.make_spoken_digits`). The splits are *by voice*: the test
  split holds ``--test-voices`` voices and the validation split ``--val-voices`` voices that
  no training example has, so the test accuracy is that on unheard speakers.
* **Asterisk prompts**: telephony prompts in five languages (Debian's
  ``asterisk-core-sounds-{en,es,fr,it,ru}-wav``, 8 kHz), ``--asterisk-per-language`` sampled per
  language, labelled by language, split stratified (15 % validation, 15 % test) by
  :func:`automl_tl.data.bundle.prepare_dataset`. Each language is read by one speaker, so this is as
  much speaker identification as language identification; a speaker encoder is expected to win.

Rows:

* **search**: :func:`automl_tl.search.study.search` over ``--backbones`` (default the offline audio
  backbones that are practical on a CPU), trained groups, learning rates and epochs; the test
  accuracy is that of the best trial's saved model, as the search reports it;
* **linear probe <backbone>**: each of ``--probe-backbones`` with the body frozen (trained groups 0),
  ``head_lr = --probe-lr`` for ``--probe-epochs`` epochs (early-stopping patience 3), run through the
  same :class:`~automl_tl.train.executor.Executor` instance as the search;
* **log-mel + logistic regression**: the mean and standard deviation over time of a 64-band log-mel
  spectrogram (16 kHz, 25 ms windows every 10 ms, :func:`automl_tl.modalities.audio.log_mel_spectrogram`) of
  each whole recording, standardised, into scikit-learn's ``LogisticRegression``; the regularisation
  strength ``C`` is chosen on the validation split from 0.01, 0.1, 1, 10.

Costs: *CPU s* is process CPU time (all threads, ``time.process_time()``) and *wall s*
``time.perf_counter()``, around the whole ``run_search()`` call, around ``Executor.fit`` plus the test
prediction of a probe, or around feature extraction plus fitting plus prediction for the baseline.
Files are read and resampled once for every distinct preprocessing *before* any timing starts
(the executor's encode cache, and the 16 kHz waveforms for the baseline); that one-off cost is
printed under the table and is in no row. *CPU used by others* is the share of the machine's CPUs
other processes used meanwhile: on 2 cores a second busy process slows PyTorch's threads
several-fold (and its spinning threads then count as CPU time), so compare rows only where it is
near 0 %.

CREPE full costs about 1.4 GMAC per 1024-sample frame, more than a second per clip on two CPU cores
at its 10 ms hop, so it is left out of the defaults; add it with ``--backbones``/``--probe-backbones``
(with ``--crepe-hop-ms 50`` or more to make it affordable: the CREPE backbones are then registered
again for this run as ``crepe-tiny-hopNms`` / ``crepe-full-hopNms`` with that frame hop).

The tables go to stdout (Markdown) with the command line and the machine above them, and to
``OUTPUT/results.md``; each search's run directory is ``OUTPUT/<data set>/search``.

How to run
----------
Modest run (the defaults; about 30-40 minutes on one CPU thread)::

    python benchmarks/audio_search.py --trials 8 --timeout 900 --threads 1 --output runs/bench_audio --overwrite

Quick check of the plumbing (seconds: the spoken digits alone, which need no Debian data package, by 4 voices,
GE2E alone, 2 trials of 1 epoch; the figures mean nothing)::

    python benchmarks/audio_search.py --quick --output runs/bench_audio_smoke --overwrite

The Asterisk prompts need Debian's ``asterisk-core-sounds-{en,es,fr,it,ru}-wav`` (``sudo ./setup.sh --benchmarks``
installs them); without them the script stops at once, saying so.

An existing search in the output folder is never resumed (a resumed search would time nothing):
the script stops unless ``--overwrite`` is given, which deletes it first.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from automl_tl.config import SearchConfig, TrialConfig
from automl_tl.data.bundle import DatasetBundle, prepare_dataset
from automl_tl.data.readers import read_audio
from automl_tl.hookspecs import hookimpl
from automl_tl.inputs import InputOptions
from automl_tl.modalities.audio import MelSpectrogram
from automl_tl.plugins import get_plugin_manager
from automl_tl.registry import get_registry, reset_registry
from automl_tl.search.study import run_search
from automl_tl.train.executor import Executor, accuracy, predict_logits

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
    require_data,
    run_main,
    setup_logging,
    size_help,
    spoken_digits_bundle,
    warm_encodings,
)

logger = logging.getLogger("benchmarks.audio_search")

DATASETS = ("digits", "asterisk")
LOGMEL_RATE = 16000
#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "datasets": DATASETS,
        "voices": 24,
        "val_voices": 4,
        "test_voices": 4,
        "backbones": ("ge2e-speaker", "crepe-tiny", "aisfx"),
        "trials": 8,
        "max_epochs": 3,
        "probe_epochs": 10,
    },
    "quick": {
        "datasets": ("digits",),
        "voices": 4,
        "val_voices": 1,
        "test_voices": 1,
        "backbones": ("ge2e-speaker",),
        "trials": 2,
        "max_epochs": 1,
        "probe_epochs": 1,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=None, help=f"data sets to run {sized('datasets')}"
    )
    parser.add_argument(
        "--voices", type=int, default=None, help=f"espeak-ng voices for the spoken digits {sized('voices')}"
    )
    parser.add_argument(
        "--val-voices", type=int, default=None, help=f"voices held out for validation {sized('val_voices')}"
    )
    parser.add_argument(
        "--test-voices", type=int, default=None, help=f"voices held out for the test {sized('test_voices')}"
    )
    parser.add_argument(
        "--digits-dir",
        default="runs/audio_data/spoken_digits",
        help="where the synthesised digits are cached (default: runs/audio_data/spoken_digits)",
    )
    parser.add_argument(
        "--digits-clip",
        type=float,
        default=1.3,
        help="seconds per digit clip (the longest is about 1.27 s; default: 1.3)",
    )
    parser.add_argument(
        "--asterisk-per-language", type=int, default=60, help="Asterisk prompts sampled per language (default: 60)"
    )
    parser.add_argument(
        "--asterisk-clip",
        type=float,
        default=1.5,
        help="seconds per Asterisk clip (the median prompt is 1.1-1.5 s; default: 1.5)",
    )
    parser.add_argument(
        "--backbones", nargs="+", default=None, help=f"backbones the search may pick {sized('backbones')}"
    )
    parser.add_argument(
        "--probe-backbones", nargs="+", default=None, help="backbones given a linear-probe row (default: the search's)"
    )
    parser.add_argument(
        "--crepe-hop-ms",
        type=float,
        default=10.0,
        help="frame hop of the CREPE backbones in ms (default: 10, CREPE's own; see above)",
    )
    parser.add_argument("--trials", type=int, default=None, help=f"search trials per data set {sized('trials')}")
    parser.add_argument(
        "--min-epochs", type=int, default=1, help="epochs every trial runs before it may be pruned (default: 1)"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=None, help=f"epochs each trial is scheduled for {sized('max_epochs')}"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="wall-clock budget of each search in seconds (default: none)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size everywhere (default: 32)")
    parser.add_argument(
        "--probe-epochs", type=int, default=None, help=f"epochs of each linear probe {sized('probe_epochs')}"
    )
    parser.add_argument(
        "--probe-lr",
        type=float,
        default=3e-2,
        help="head learning rate of the probes (default: 3e-2; of 1e-2, 3e-2 and 1e-1 it did "
        "best for ge2e-speaker and aisfx in a trial run on the digits)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice, one per core)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the voices, samples, splits, search and probes")
    parser.add_argument("--output", default="runs/bench_audio", help="output directory (default: runs/bench_audio)")
    parser.add_argument("--overwrite", action="store_true", help="delete earlier searches in OUTPUT first")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_quick_option(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    if args.voices - args.val_voices - args.test_voices < 2 or min(args.val_voices, args.test_voices) < 1:
        parser.error("need at least 2 training voices and 1 each for validation and test")
    if args.asterisk_per_language < 10:
        parser.error("--asterisk-per-language must be at least 10 (a stratified 15 %% test part per language)")
    if args.min_epochs < 1 or args.max_epochs < args.min_epochs:
        parser.error("epochs must satisfy 1 <= --min-epochs <= --max-epochs")
    args.probe_backbones = args.probe_backbones or list(args.backbones)
    return args


# ---------------------------------------------------------------- backbones


class _CrepeHopPlugin:
    """Registers the CREPE backbones again with another frame hop, for this run only."""

    def __init__(self, hop_ms: float):
        self.hop_ms = hop_ms

    @hookimpl
    def register_backbones(self, register) -> None:
        from automl_tl_audio import CrepeBackbone

        for size in ("tiny", "full"):
            register(CrepeBackbone(crepe_name(size, self.hop_ms), size, hop_ms=self.hop_ms))


def crepe_name(size: str, hop_ms: float) -> str:
    return f"crepe-{size}" if hop_ms == 10.0 else f"crepe-{size}-hop{hop_ms:g}ms"


def resolve_names(names: list[str], hop_ms: float) -> list[str]:
    """Backbone names with the CREPE ones replaced by their ``hop_ms`` variants."""
    renamed = {f"crepe-{size}": crepe_name(size, hop_ms) for size in ("tiny", "full")}
    return [renamed.get(name, name) for name in names]


# ---------------------------------------------------------------- data


def digits_bundle(args: argparse.Namespace) -> tuple[DatasetBundle, str]:
    """Spoken digits split by voice: training, validation and test voices never overlap."""
    bundle, description = spoken_digits_bundle(
        args.digits_dir, args.voices, args.val_voices, args.test_voices, args.seed
    )
    return bundle, f"{description}; {args.digits_clip} s clips"


def asterisk_bundle(args: argparse.Namespace) -> tuple[DatasetBundle, str]:
    """Asterisk prompts by language, stratified split."""
    from automl_tl_datasets.audio import load_asterisk_prompts

    frame = load_asterisk_prompts(max_per_language=args.asterisk_per_language, seed=args.seed)
    bundle = prepare_dataset(frame[["audio", "label"]], label_column="label", input_column="audio", seed=args.seed)
    description = (
        f"Asterisk prompts, 5 languages (one speaker each), {args.asterisk_per_language} per language: "
        f"{len(bundle.train)} train / {len(bundle.val)} validation / {len(bundle.test)} test "
        f"(stratified); {args.asterisk_clip} s clips"
    )
    return bundle, description


# ---------------------------------------------------------------- rows


def timed_search(
    executor: Executor,
    data: DatasetBundle,
    args: argparse.Namespace,
    names: list[str],
    options: InputOptions,
    run_dir: Path,
) -> dict:
    config = SearchConfig(
        backbones=tuple(names),
        n_trials=args.trials,
        timeout=args.timeout,
        seed=args.seed,
        min_epochs=args.min_epochs,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        input_options=options,
    )
    logger.info(
        "search: %d trials, %d-%d epochs, backbones %s", args.trials, args.min_epochs, args.max_epochs, ", ".join(names)
    )
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        outcome = run_search(data, config, run_dir, executor)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    board, params = outcome.leaderboard, outcome.best_params
    best = board[board["trial"] == outcome.best_trial].iloc[0]
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(board["state"].value_counts().to_dict().items()))
    trained = int(params.get("trained_groups", 0))  # a strategy on the frozen body trains none
    groups = get_registry().get_backbone(params["backbone"]).build(2, pretrained=False).num_groups
    return {
        "method": f"search ({states})",
        "test accuracy": outcome.test_metrics["accuracy"],
        "val accuracy": outcome.best_val_accuracy,
        "CPU s": cpu,
        "wall s": wall,
        "backbone": params["backbone"],
        "trained groups": f"{trained} of {groups}" if trained < groups else f"all {groups}",
        "epochs": int(best["epochs_run"]),
        "head lr": params.get("head_lr"),
        "backbone lr": params.get("backbone_lr"),
        "CPU used by others": percent(load.share),
    }


def run_probe(
    executor: Executor, data: DatasetBundle, args: argparse.Namespace, name: str, options: InputOptions
) -> dict:
    backbone = get_registry().get_backbone(name)
    config = TrialConfig(
        backbone=name,
        trained_groups=0,
        backbone_lr=args.probe_lr,
        head_lr=args.probe_lr,
        epochs=args.probe_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        early_stopping_patience=3,
        input_options=options,
    )
    logger.info("linear probe %s: head_lr=%.1e, %d epochs", name, args.probe_lr, args.probe_epochs)
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        result = executor.fit(config, backbone, data)
        preprocessor = backbone.preprocessor(options)
        items = executor.encoded(preprocessor, data, data.test)
        logits = predict_logits(result.model, preprocessor, items, 2 * args.batch_size, executor.device)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    test_accuracy = accuracy(logits, data.test.labels)
    logger.info(
        "linear probe %s: validation %.4f, test %.4f (%.0fs)", name, result.best_val_accuracy, test_accuracy, wall
    )
    return {
        "method": f"linear probe {name}",
        "test accuracy": test_accuracy,
        "val accuracy": result.best_val_accuracy,
        "CPU s": cpu,
        "wall s": wall,
        "backbone": name,
        "trained groups": "0 (head only)",
        "epochs": len(result.history),
        "head lr": args.probe_lr,
        "backbone lr": None,
        "CPU used by others": percent(load.share),
    }


def read_waveforms(data: DatasetBundle) -> dict[str, list[np.ndarray]]:
    """Every split's recordings at 16 kHz, whole (for the log-mel baseline)."""
    return {
        split.name: [read_audio(path, LOGMEL_RATE) for path in split.inputs]
        for split in (data.train, data.val, data.test)
    }


def logmel_features(waveforms: list[np.ndarray]) -> np.ndarray:
    """Mean and standard deviation over time of each recording's 64-band log-mel spectrogram."""
    mel = MelSpectrogram(LOGMEL_RATE, n_fft=400, hop_length=160, n_mels=64)
    rows = []
    with torch.no_grad():
        for wave in waveforms:
            log_mel = torch.log(mel(torch.from_numpy(wave)[None])[0] + 1e-6)
            rows.append(torch.cat([log_mel.mean(dim=1), log_mel.std(dim=1)]).numpy())
    return np.stack(rows)


def run_logmel_baseline(data: DatasetBundle, waveforms: dict[str, list[np.ndarray]], seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wall_started, cpu_started = time.perf_counter(), time.process_time()
    with OtherLoad() as load:
        features = {name: logmel_features(waves) for name, waves in waveforms.items()}
        best = None
        for c in (0.01, 0.1, 1.0, 10.0):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
            model.fit(features["train"], data.train.labels)
            val = float((model.predict(features["val"]) == data.val.labels).mean())
            if best is None or val > best[0]:
                best = (val, c, model)
        val_accuracy, c, model = best
        test_accuracy = float((model.predict(features["test"]) == data.test.labels).mean())
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    logger.info("log-mel + logistic regression: C=%g, validation %.4f, test %.4f", c, val_accuracy, test_accuracy)
    return {
        "method": f"log-mel + logistic regression (C={c:g})",
        "test accuracy": test_accuracy,
        "val accuracy": val_accuracy,
        "CPU s": cpu,
        "wall s": wall,
        "backbone": "-",
        "trained groups": "-",
        "epochs": None,
        "head lr": None,
        "backbone lr": None,
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
            "head lr": "{:.1e}",
            "backbone lr": "{:.1e}",
            "epochs": "{:.0f}",
        },
    )


def run_dataset(name: str, args: argparse.Namespace, executor: Executor, output: Path) -> str:
    data, description = digits_bundle(args) if name == "digits" else asterisk_bundle(args)
    options = InputOptions(clip_seconds=args.digits_clip if name == "digits" else args.asterisk_clip)
    search_names = resolve_names(args.backbones, args.crepe_hop_ms)
    probe_names = resolve_names(args.probe_backbones, args.crepe_hop_ms)
    started = time.perf_counter()
    encode_seconds = warm_encodings(executor, data, list(dict.fromkeys(search_names + probe_names)), options)
    waveforms = read_waveforms(data)
    read_seconds = time.perf_counter() - started
    logger.info("%s: read and resampled every file in %.1fs (not counted in any row)", name, read_seconds)

    rows = [timed_search(executor, data, args, search_names, options, output / name / "search")]
    rows += [run_probe(executor, data, args, probe, options) for probe in probe_names]
    rows.append(run_logmel_baseline(data, waveforms, args.seed))
    header = (
        f"### {name}: {description}\n\nsearch: {args.trials} trials over {', '.join(search_names)}, epochs "
        f"{args.min_epochs}-{args.max_epochs}, timeout {args.timeout or 'none'}; probes: {args.probe_epochs} "
        f"epochs, head lr {args.probe_lr:g}"
    )
    notes = (
        f"Reading and resampling the files once per preprocessing took {read_seconds:.1f} s wall "
        f"(executor encodings {encode_seconds:.1f} s), before any timing; no row includes it."
    )
    return f"{header}\n\n{results_table(rows)}\n\n{notes}\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crepe_hop_ms != 10.0:
        get_plugin_manager().register(_CrepeHopPlugin(args.crepe_hop_ms), name="benchmark-crepe-hop")
        reset_registry()

    if "asterisk" in args.datasets:  # refuse now, not after the spoken digits have run
        require_data("asterisk-languages")
    output = Path(args.output)
    for name in args.datasets:
        run_dir = output / name / "search"
        clear_run_dir(run_dir, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    # 3 splits per distinct preprocessing (sample rate and clip) must stay cached for the whole run
    executor = Executor(show_progress=False, max_cached_encodings=12)
    sections = [run_dataset(name, args, executor, output) for name in args.datasets]
    notes = (
        "CPU s = process CPU time (all threads) of the whole run_search() call, of a probe's fit and test "
        "prediction, or of the baseline's features, fitting and prediction. CPU used by others = share of the "
        "machine's CPUs other processes used meanwhile (from /proc/stat); timings are only comparable between "
        "rows where it is near 0%."
    )
    text = "\n".join([f"command: {command_line()}", machine_line(executor.device), "", *sections, notes, ""])
    print(text)
    (output / "results.md").write_text(text)
    logger.info("wrote %s", output / "results.md")
    return 0


if __name__ == "__main__":
    run_main(main)
