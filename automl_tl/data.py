"""From the user's data to a :class:`DatasetBundle`: validation and seeded stratified splits.

Accepted inputs:

* a pandas DataFrame with an input column and a label column: image paths or arrays,
  audio paths (wav, flac, ogg), or texts;
* a CSV file with the same columns (relative paths are relative to the CSV's folder);
* a folder with one subfolder per class, holding image, audio or ``.txt`` files.

Every problem the user can fix raises :class:`~automl_tl.errors.DataError` with a
one-line message naming the file, column, class or value at fault.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from automl_tl.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
TEXT_EXTENSIONS = (".txt",)
#: the column a folder's files go into, by modality
FOLDER_COLUMNS = {"image": "image", "audio": "audio", "text": "text"}
FILE_MODALITIES = ("image", "audio")
#: how a bundle's models are validated (``DatasetBundle.validation``)
VALIDATION_HOLDOUT = "holdout"  # on the validation split, apart from the training split
VALIDATION_CROSS = "cross_validation"  # few shots: the validation split is the training split; cross-validate
VALIDATION_NONE = "none"  # one shot per class: nothing can be held out
#: with at least this many shots per class, a quarter of them (rounded down) per class are held out for validation
MIN_SHOTS_FOR_HOLDOUT = 10
#: ``test_fraction=None`` holds out AUTO_TEST_FRACTION as a test part from AUTO_TEST_MIN_EXAMPLES labelled
#: examples up, and nothing below: on small data every label is worth more to training and validation than to
#: an extra estimate (the validation estimate is then the one reported)
AUTO_TEST_MIN_EXAMPLES = 2000
AUTO_TEST_FRACTION = 0.15
#: a validation split with fewer examples of some class than this is too noisy to rank trials by alone: the
#: cheap trials (heads on cached features) are scored by cross-validation on training + validation instead
MIN_VALIDATION_PER_CLASS = 30


@dataclass(frozen=True)
class Split:
    """One part of the data: raw inputs and integer labels (indices into ``DatasetBundle.classes``)."""

    name: str
    inputs: list[Any]
    labels: np.ndarray
    #: a split made of others (training + validation, for a refit): its encodings and cached features are
    #: theirs, concatenated, so nothing is computed again
    parts: tuple["Split", ...] = ()

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def union(cls, name: str, *parts: "Split") -> "Split":
        """One split of ``parts`` in order (see ``parts``)."""
        return cls(name, [x for part in parts for x in part.inputs], np.concatenate([part.labels for part in parts]),
                   tuple(parts))


@dataclass(frozen=True)
class DatasetBundle:
    """Train, validation and test splits of one labelled data set."""

    modality: str
    classes: list[Any]
    train: Split
    val: Split
    test: Split
    input_column: str
    label_column: str
    fingerprint: str  # hash of inputs, labels and split seed: a stored study is only resumed on the same data
    shots: int | None = None  # labelled examples per class the search may use (train + val); None: the usual split
    validation: str = VALIDATION_HOLDOUT  # see VALIDATION_*: with few shots, ``val`` is ``train`` itself
    #: below this many validation examples of some class, cheap trials are cross-validated (see small_validation)
    min_validation_per_class: int = MIN_VALIDATION_PER_CLASS

    @property
    def small_validation(self) -> bool:
        """Whether some class has fewer than :data:`MIN_VALIDATION_PER_CLASS` validation examples (held out
        validation only), so that cheap trials are better scored by cross-validation on training + validation."""
        if self.validation != VALIDATION_HOLDOUT or not len(self.val):
            return False
        return int(np.bincount(self.val.labels, minlength=len(self.classes)).min()) < self.min_validation_per_class

    def train_and_val(self) -> Split:
        """Training and validation examples together (what a refit learns from)."""
        return Split.union("train+val", self.train, self.val)

    def summary(self) -> dict[str, Any]:
        summary = {"modality": self.modality, "classes": [str(c) for c in self.classes],
                   "train": len(self.train), "val": len(self.val), "test": len(self.test),
                   "input_column": self.input_column, "label_column": self.label_column,
                   "fingerprint": self.fingerprint}
        if self.shots is not None:
            summary.update(shots=self.shots, validation=self.validation)
        return summary


# ---------------------------------------------------------------- reading images


def read_image(value: Any, origin: str = "") -> Image.Image:
    """An RGB PIL image from a path or an array (HxW or HxWxC; uint8, or float in [0, 1])."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        return _image_from_array(value, origin)
    path = Path(str(value))
    if not path.is_file():
        raise DataError(f"image file not found: {path}{origin}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces a full decode, so truncated files fail here
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        # a corrupt header can claim a huge size: PIL refuses it with DecompressionBombError (not an OSError)
        raise DataError(f"cannot read image file {path}{origin}: {exc}") from None


def _image_from_array(array: np.ndarray, origin: str) -> Image.Image:
    if array.ndim not in (2, 3) or array.size == 0 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DataError(f"image array{origin} has shape {array.shape}; expected HxW or HxWxC with C in 1, 3, 4")
    if array.dtype != np.uint8:
        if (not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all()
                or array.min() < 0 or array.max() > 1):
            raise DataError(f"image array{origin} has dtype {array.dtype} and range "
                            f"[{array.min()}, {array.max()}]; expected uint8, or float in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array).convert("RGB")


# ---------------------------------------------------------------- tables and folders


def _file_modality(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if lower.endswith(AUDIO_EXTENSIONS):
        return "audio"
    if lower.endswith(TEXT_EXTENSIONS):
        return "text"
    return None


def infer_modality(values: Sequence[Any], column: str) -> str:
    """The modality of an input column: image arrays or paths, audio paths, or else text."""
    first = values[0]
    if isinstance(first, (np.ndarray, Image.Image)):
        return "image"
    if isinstance(first, (str, Path)) and _file_modality(str(first)) in FILE_MODALITIES:
        return _file_modality(str(first))
    if isinstance(first, str):
        return "text"
    raise DataError(f"cannot tell the modality of column {column!r} from its first value {str(first)[:60]!r}; "
                    "expected image paths or arrays, audio paths (wav, flac, ogg) or texts")


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV file; file paths in it are made absolute relative to its folder later."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read CSV file {path}: {exc}".splitlines()[0]) from None
    return frame


def read_text_file(path: Path) -> str:
    """The UTF-8 content of a text file, refused if empty or not UTF-8."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {path} is not UTF-8 (byte {exc.start}); convert it to UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read text file {path}: {exc.strerror}") from None
    if not text.strip():
        raise DataError(f"text file {path} is empty")
    return text


def _supported_files(folder: Path) -> list[Path]:
    # A dangling symlink is kept: reading it then fails naming it, where skipping it would lose an example unsaid.
    return [p for p in sorted(folder.rglob("*"))
            if (p.is_file() or (p.is_symlink() and not p.exists())) and _file_modality(p.name) is not None]


def read_folder(path: Path) -> pd.DataFrame:
    """A DataFrame (columns ``image``, ``audio`` or ``text``, and ``label``) from a folder with one subfolder per class.

    Text files are read into the ``text`` column; image and audio files are listed by path.
    """
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"folder {path} has no class subfolders; expected one subfolder per class")
    files = [(file, class_dir.name) for class_dir in class_dirs for file in _supported_files(class_dir)]
    if not files:
        raise DataError(f"folder {path} holds no image, audio or text files "
                        f"({', '.join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS + TEXT_EXTENSIONS)})")
    kinds = sorted({_file_modality(file.name) for file, _ in files})
    if len(kinds) > 1:
        raise DataError(f"folder {path} mixes {' and '.join(kinds)} files; expected one kind")
    modality = kinds[0]
    column = FOLDER_COLUMNS[modality]
    if modality == "text":
        return pd.DataFrame({column: [read_text_file(f) for f, _ in files], "label": [label for _, label in files]})
    return pd.DataFrame({column: [str(f) for f, _ in files], "label": [label for _, label in files]})


def list_input_files(path: Path) -> list[str]:
    """Every image, audio or text file below ``path``, sorted (for predicting on an unlabelled folder)."""
    return [str(p) for p in _supported_files(path)]


def _guess_input_column(frame: pd.DataFrame, label_column: str, origin: str) -> str:
    candidates = [c for c in frame.columns if c != label_column]
    if len(candidates) == 1:
        return candidates[0]
    for name in ("image", "audio", "text", "path", "file", "filepath", "filename"):
        if name in candidates:
            return name
    raise DataError(f"cannot tell which column of {origin} holds the inputs (columns: {', '.join(map(str, frame.columns))}); "
                    "name it with --input-column")


def resolve_paths(values: list[Any], base_dir: Path | None) -> list[Any]:
    """Make relative file paths absolute against ``base_dir`` (the folder of the CSV)."""
    if base_dir is None:
        return values
    return [str(base_dir / v) if isinstance(v, str) and not Path(v).is_absolute() else v for v in values]


def check_inputs_readable(inputs: Sequence[Any], modality: str, origin: str) -> None:
    """Read every input once so that a missing or broken file (or an empty text) is reported now, naming it."""
    for row, value in enumerate(inputs):
        where = f" (row {row} of {origin})"
        if modality == "image":
            read_image(value, origin=where if not isinstance(value, str) else "")
        elif modality == "audio":
            from automl_tl.audio import read_audio

            if not isinstance(value, (str, Path)):
                raise DataError(f"audio input{where} is a {type(value).__name__}; expected a file path")
            read_audio(value)
        elif not isinstance(value, str) or not value.strip():
            raise DataError(f"text input{where} is empty or not a string: {str(value)[:40]!r}")


def _fingerprint(inputs: Sequence[Any], labels: Sequence[Any], seed: int, fractions: tuple[float, float],
                 shots: int | None = None) -> str:
    # (shots only when given, so the fingerprints of ordinary splits stay what they were)
    digest = hashlib.sha256(repr((seed, fractions) if shots is None else (seed, fractions, shots)).encode())
    for value, label in zip(inputs, labels):
        digest.update(value.tobytes() if isinstance(value, np.ndarray) else str(value).encode())
        digest.update(str(label).encode())
    return digest.hexdigest()[:16]


def prepare_dataset(
    data: pd.DataFrame | str | Path,
    label_column: str = "label",
    input_column: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float | None = 0.15,
    max_samples: int | None = None,
    modality: str | None = None,
    shots: int | None = None,
) -> DatasetBundle:
    """Validate labelled data and split it into stratified, seeded train / validation / test parts.

    ``data`` is a DataFrame, a CSV path or an image folder path. ``input_column`` is
    guessed when there is one column besides the label (image folders: ``image``).
    ``max_samples`` keeps a stratified, seeded sample of that many rows first.
    ``modality`` ("image", "audio" or "text") is inferred from the inputs when not given.
    ``test_fraction`` 0 holds out no test part (the caller tests on data of its own, as in cross-validation);
    None holds out :data:`AUTO_TEST_FRACTION` from :data:`AUTO_TEST_MIN_EXAMPLES` labelled examples up, else none.

    ``shots`` K (few labels): K examples of every class are drawn (seeded) as the only labelled data the
    search sees, for training *and* model selection, and every other example is the test set, for an
    honest report (``val_fraction`` and ``test_fraction`` are then unused). How the K are used:

    * K >= 10 (:data:`MIN_SHOTS_FOR_HOLDOUT`): ``K // 4`` per class are held out as the validation split,
      the rest train (``validation`` "holdout"); every strategy can be searched.
    * 2 <= K < 10: too few to hold any out. The validation split *is* the training split
      (``validation`` "cross_validation"), and the search keeps to the embedding strategies, which validate
      by stratified k-fold cross-validation on it (k = min(K, 5)); see :mod:`automl_tl.embedding_heads`.
    * K = 1: nothing can be validated (``validation`` "none"); the search fits nearest centroids, and the
      best-ranked backbone's (the first trial) is kept, every trial scoring its training accuracy (1.0).

    A class with fewer than K + 1 examples (K to learn from, at least one to test on) is refused.
    """
    check_fractions(val_fraction, test_fraction)
    base_dir: Path | None = None
    if isinstance(data, pd.DataFrame):
        frame, origin = data, "the DataFrame"
    else:
        path = Path(data)
        origin = str(path)
        if path.is_dir():
            frame = read_folder(path)
            label_column, input_column = "label", str(frame.columns[0])
        elif path.suffix.lower() in (".csv", ".txt", ".tsv") or path.is_file():
            frame, base_dir = read_table(path), path.parent
        else:
            raise DataError(f"data path not found: {path}; expected a CSV file or an image folder")

    if len(frame) == 0:
        raise DataError(f"{origin} holds no rows")
    if label_column not in frame.columns:
        raise DataError(f"label column {label_column!r} not found in {origin}; columns: {', '.join(map(str, frame.columns))}")
    input_column = input_column or _guess_input_column(frame, label_column, origin)
    if input_column not in frame.columns:
        raise DataError(f"input column {input_column!r} not found in {origin}; columns: {', '.join(map(str, frame.columns))}")

    frame = frame[[input_column, label_column]]
    empty_input = frame[input_column].map(lambda v: v is None or (isinstance(v, float) and np.isnan(v)))
    missing = frame[frame[label_column].isna() | empty_input]
    if len(missing):
        raise DataError(f"{origin} has {len(missing)} rows with an empty {input_column!r} or {label_column!r} "
                        f"(first at row {missing.index[0]})")

    shots_problem = bad_shots(shots)
    if shots_problem:
        raise DataError(shots_problem)
    test_fraction = resolve_test_fraction(test_fraction, min(len(frame), max_samples or len(frame)))
    # one example of every class in each part; few-shot data are checked by _check_shots instead
    parts = None if shots is not None else (
        ("training", "validation", "test") if test_fraction > 0 else ("training", "validation"))
    _check_classes(list(frame[label_column]), label_column, origin, parts)
    if max_samples is not None and len(frame) > max_samples:
        frame = _stratified_sample(frame, label_column, max_samples, seed, origin)
        origin = f"a sample of {max_samples} rows of {origin}"
        _check_classes(list(frame[label_column]), label_column, origin, parts)
    if shots is not None:
        _check_shots(list(frame[label_column]), label_column, origin, int(shots))
    raw_labels = list(frame[label_column])
    classes = sorted(set(raw_labels), key=lambda c: (str(type(c)), c))
    modality = modality or infer_modality(list(frame[input_column]), input_column)
    if modality not in FOLDER_COLUMNS:
        raise DataError(f"unknown modality {modality!r}; expected one of {', '.join(FOLDER_COLUMNS)}")
    inputs = list(frame[input_column])
    if modality in FILE_MODALITIES:
        inputs = resolve_paths(inputs, base_dir)

    check_inputs_readable(inputs, modality, origin)

    class_index = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_index[c] for c in raw_labels], dtype=np.int64)
    validation = VALIDATION_HOLDOUT
    if shots is None:
        train_idx, val_idx, test_idx = stratified_split(labels, seed, val_fraction, test_fraction)
    else:
        train_idx, val_idx, test_idx = few_shot_split(labels, int(shots), seed)
        validation = (VALIDATION_HOLDOUT if shots >= MIN_SHOTS_FOR_HOLDOUT
                      else VALIDATION_CROSS if shots >= 2 else VALIDATION_NONE)

    def take(name: str, idx: np.ndarray) -> Split:
        return Split(name, [inputs[i] for i in idx], labels[idx])

    bundle = DatasetBundle(
        modality=modality,
        classes=[_plain(c) for c in classes],
        train=take("train", train_idx), val=take("val", val_idx), test=take("test", test_idx),
        input_column=input_column, label_column=label_column,
        fingerprint=_fingerprint(inputs, raw_labels, seed, (val_fraction, test_fraction),
                                 None if shots is None else int(shots)),
        shots=None if shots is None else int(shots), validation=validation,
    )
    if shots is None:
        logger.info("data: %d classes, %d train / %d validation / %d test (%s)",
                    len(classes), len(bundle.train), len(bundle.val), len(bundle.test), origin)
    else:
        logger.info("data: %d classes, %d shots per class: %d train / %s / %d test, every example not drawn (%s)",
                    len(classes), shots, len(bundle.train),
                    f"{len(bundle.val)} validation" if validation == VALIDATION_HOLDOUT else
                    f"validation by {'nothing' if validation == VALIDATION_NONE else 'cross-validation'}",
                    len(bundle.test), origin)
    return bundle


def check_fractions(val_fraction: float, test_fraction: float | None) -> None:
    """Refuse split fractions that leave no training data (``test_fraction`` None: chosen by the data's size)."""
    test = AUTO_TEST_FRACTION if test_fraction is None else test_fraction
    if not 0 < val_fraction < 1 or not 0 <= test < 1 or val_fraction + test >= 1:
        raise DataError(f"validation and test fractions must satisfy 0 < validation < 1, 0 <= test < 1 and "
                        f"validation + test < 1, got {val_fraction} and {test_fraction}")


def resolve_test_fraction(test_fraction: float | None, labelled_examples: int) -> float:
    """The test fraction to use: as given, or for None :data:`AUTO_TEST_FRACTION` from
    :data:`AUTO_TEST_MIN_EXAMPLES` labelled examples up and 0 below."""
    if test_fraction is not None:
        return test_fraction
    return AUTO_TEST_FRACTION if labelled_examples >= AUTO_TEST_MIN_EXAMPLES else 0.0


def bad_shots(shots: Any) -> str | None:
    """What is wrong with ``shots`` as a number of labelled examples per class (None: nothing, or no shots)."""
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1):
        return f"shots must be a whole number of labelled examples per class, at least 1; got {shots!r}"
    return None


def few_shot_split(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test for ``shots`` labelled examples per class (seeded).

    ``shots`` of each class are drawn at random; the rest are the test set. With at least
    :data:`MIN_SHOTS_FOR_HOLDOUT` shots, ``shots // 4`` drawn per class are the validation split;
    below that, the validation split is the training split (cross-validation, or nothing, decides).
    """
    rng = np.random.default_rng(seed)
    held_out = shots // 4 if shots >= MIN_SHOTS_FOR_HOLDOUT else 0
    train, val = [], []
    for label in np.unique(labels):
        drawn = rng.permutation(np.flatnonzero(labels == label))[:shots]
        val.append(drawn[:held_out])
        train.append(drawn[held_out:])
    train, val = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    test = np.setdiff1d(np.arange(len(labels)), np.concatenate([train, val]))
    return train, (val if held_out else train.copy()), test


def _check_shots(raw_labels: list[Any], label_column: str, origin: str, shots: int) -> None:
    """Every class needs ``shots`` examples to learn from and one more to test on."""
    counts = pd.Series(raw_labels).value_counts(sort=False)
    too_small = counts[counts < shots + 1]
    if len(too_small):
        name, count = _plain(too_small.index[0]), int(too_small.iloc[0])
        raise DataError(f"class {name!r} in {origin} has {count} example(s); {shots} shots per class need at "
                        f"least {shots + 1} of every class ({shots} to learn from, 1 or more to test on)")


def _check_classes(raw_labels: list[Any], label_column: str, origin: str,
                   parts: tuple[str, ...] | None = ("training", "validation", "test")) -> None:
    """At least two classes, each with an example for every one of ``parts`` (None: any number of
    examples; few-shot data are checked by :func:`_check_shots`)."""
    counts = pd.Series(raw_labels).value_counts()
    if len(counts) < 2:
        raise DataError(f"label column {label_column!r} of {origin} has {len(counts)} class "
                        f"({_plain(counts.index[0])!r}); expected at least 2")
    if parts is None:
        return
    needed = len(parts)  # one example of every class in each part
    too_small = counts[counts < needed]
    if len(too_small):
        name, count = _plain(too_small.index[0]), int(too_small.iloc[0])
        raise DataError(f"class {name!r} in {origin} has {count} example(s); each class needs at least "
                        f"{needed} (one each for {', '.join(parts[:-1])} and {parts[-1]})")


def _stratified_sample(frame: pd.DataFrame, label_column: str, size: int, seed: int, origin: str) -> pd.DataFrame:
    """``size`` rows of ``frame`` with the class proportions kept, in their original order."""
    try:
        kept, _ = train_test_split(frame, train_size=size, stratify=frame[label_column], random_state=seed)
    except ValueError as exc:  # fewer rows kept than there are classes
        raise DataError(f"cannot take a stratified sample of {size} rows of {origin}: "
                        f"{str(exc).splitlines()[0]}") from None
    return kept.sort_index()


def _plain(value: Any) -> Any:
    """numpy scalars become Python ones, so classes serialise to JSON as they were given."""
    return value.item() if isinstance(value, np.generic) else value


def stratified_split(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test, stratified by label; at least one example per class in each.

    ``test_fraction`` 0 leaves the test part empty.
    """
    n_classes = len(np.unique(labels))
    indices = np.arange(len(labels))

    def part_size(fraction: float, n: int) -> int:
        return max(int(round(fraction * n)), n_classes)

    if test_fraction > 0:
        test_size = part_size(test_fraction, len(labels))
        if len(labels) - test_size < 2 * n_classes:
            raise DataError(f"{len(labels)} examples are too few to split {n_classes} classes into train, validation and test")
        rest, test = train_test_split(indices, test_size=test_size, stratify=labels, random_state=seed)
    else:
        rest, test = indices, indices[:0]
    val_size = part_size(val_fraction, len(labels))
    if len(rest) - val_size < n_classes:
        raise DataError(f"{len(labels)} examples are too few to split {n_classes} classes into train, validation and test")
    train, val = train_test_split(rest, test_size=val_size, stratify=labels[rest], random_state=seed)
    # stratified rounding can leave a small class out of a part (3 of 100 examples: none in test)
    if len(test):
        train, val, test = _give_every_part_every_class([train, val, test], labels)
    else:
        train, val = _give_every_part_every_class([train, val], labels)
    return np.sort(train), np.sort(val), np.sort(test)


def _give_every_part_every_class(parts: list[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
    """Swap examples between parts, keeping their sizes, until every part holds every class.

    Each class has at least one example per part and each part at least as many examples as there are classes,
    so a class missing from a part can come from a part that holds two of it, in exchange for an
    example of a class the receiving part holds twice; no part ever loses its last example of a class.
    """
    parts = [np.array(p) for p in parts]
    classes = np.unique(labels)
    for r in range(len(parts)):
        for missing in np.setdiff1d(classes, labels[parts[r]]):
            d = next(i for i in range(len(parts)) if i != r and np.count_nonzero(labels[parts[i]] == missing) >= 2)
            give = np.flatnonzero(labels[parts[d]] == missing)[-1]
            values, counts = np.unique(labels[parts[r]], return_counts=True)
            back = np.flatnonzero(labels[parts[r]] == values[counts.argmax()])[-1]
            parts[d][give], parts[r][back] = parts[r][back], parts[d][give]
    return parts


def check_known_labels(frame: pd.DataFrame, label_column: str, classes: Sequence[Any], origin: str) -> None:
    """Refuse a label in ``frame[label_column]`` that is none of ``classes`` (empty cells are fine).

    Predicting ignores labels, but data labelled with a class the model never learnt is not what the
    model is for (or its labels are misspelt): every such row would silently get one of the known
    classes. Labels are compared as text, so ``1`` read from a CSV matches the class ``1`` (and ``1.0``,
    what pandas makes of integers in a column with empty cells, matches it too).
    """
    known = {str(c) for c in classes}

    def as_text(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        return str(_plain(value))

    accepted = known | {None}  # empty cells are fine
    unknown = [(row, value) for row, value in enumerate(frame[label_column]) if as_text(value) not in accepted]
    if unknown:
        row, value = unknown[0]
        shown = ", ".join(map(repr, list(classes)[:10])) + (", ..." if len(classes) > 10 else "")
        raise DataError(f"label column {label_column!r} of {origin} holds {len(unknown)} label(s) the model was "
                        f"not trained on, first {_plain(value)!r} at row {row}; its classes: {shown}; "
                        "drop the column or those rows to predict anyway")


def prepare_unlabelled(data: pd.DataFrame | str | Path | Sequence[Any], input_column: str,
                       modality: str = "image", label_column: str | None = None,
                       classes: Sequence[Any] | None = None) -> list[Any]:
    """Raw inputs to predict on: a DataFrame or CSV with ``input_column``, a folder of files, or a list.

    Texts in a folder are read from its ``.txt`` files; relative file paths in a CSV are resolved
    against the CSV's folder. Other columns are ignored, except ``label_column`` when it is given with
    the model's ``classes``: see :func:`check_known_labels`.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            files = [f for f in list_input_files(path) if _file_modality(f) == modality]
            if not files:
                raise DataError(f"folder {path} holds no {modality} files")
            return [read_text_file(Path(f)) for f in files] if modality == "text" else files
        frame = read_table(path)
        if input_column not in frame.columns:
            raise DataError(f"input column {input_column!r} not found in {path}; columns: {', '.join(map(str, frame.columns))}")
        if label_column is not None and classes is not None and label_column in frame.columns:
            check_known_labels(frame, label_column, classes, str(path))
        values = list(frame[input_column])
        return resolve_paths(values, path.parent) if modality in FILE_MODALITIES else values
    if isinstance(data, pd.DataFrame):
        if input_column not in data.columns:
            raise DataError(f"input column {input_column!r} not found in the DataFrame; "
                            f"columns: {', '.join(map(str, data.columns))}")
        if label_column is not None and classes is not None and label_column in data.columns:
            check_known_labels(data, label_column, classes, "the DataFrame")
        return list(data[input_column])
    return list(data)
