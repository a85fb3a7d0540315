"""From the user's data to a :class:`DatasetBundle`: validation, the bad-row policy and seeded stratified splits.

Accepted inputs:

* a pandas DataFrame with an input column and a label column: image paths or arrays,
  audio paths (every format libsndfile reads: :data:`AUDIO_EXTENSIONS`), or texts;
* a table file with the same columns (relative paths are relative to its folder): CSV (UTF-8 with or
  without a byte-order mark, else cp1252 / Latin-1 with a warning; ``,`` ``;`` tab or ``|`` sniffed),
  ``.tsv``, ``.parquet``, ``.jsonl`` or ``.xlsx`` (:data:`TABLE_EXTENSIONS`);
* a folder with one subfolder per class, holding image, audio or ``.txt`` files.

Rows without a label are unlabelled data: kept apart (``DatasetBundle.unlabelled``), not trained on.
Inputs that cannot be read are skipped and reported under the default policy (``on_bad_input="skip"``,
:data:`BAD_INPUT_POLICIES`), unless more than ``max_bad_fraction`` of the labelled rows are bad; every
skipped row is listed in ``DatasetBundle.skipped``. Every other problem the user can fix raises
:class:`~automl_tl.errors.DataError` with a one-line message naming the file, column, class or value at fault.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from automl_tl.data.readers import (
    FILE_MODALITIES,
    FOLDER_COLUMNS,
    LINES_ATTR,
    READ_AS_ATTR,
    TABLE_EXTENSIONS,
    file_modality,
    find_unreadable,
    infer_modality,
    input_excerpt,
    is_missing,
    list_input_files,
    read_folder_contents,
    read_table,
    read_text_files,
    resolve_paths,
    row_name,
)
from automl_tl.errors import ConfigError, DataError, UnreadableInputError
from automl_tl.options import (
    BAD_INPUT_ERROR,
    BAD_INPUT_POLICIES,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_ON_BAD_INPUT,
)

logger = logging.getLogger(__name__)


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

#: label cells that mean "no label" (compared stripped and case-blind): empty, and what exports write for a
#: missing value; not "none", which names a class in many collections (no defect, no object, no event)
MISSING_LABEL_TEXTS = ("", "na", "n/a", "nan", "null")
#: the reason recorded for a row without a label
NO_LABEL = "no label (kept as unlabelled)"
#: skipped rows named in a log line
_ROWS_NAMED = 3


@dataclass(frozen=True)
class Split:
    """One part of the data: raw inputs and integer labels (indices into ``DatasetBundle.classes``)."""

    name: str
    inputs: list[Any]
    labels: np.ndarray
    #: a split made of others (training + validation, for a refit): its encodings and cached features are
    #: theirs, concatenated, so nothing is computed again
    parts: tuple["Split", ...] = ()
    #: a split of some rows of another (the pseudo-labelled rows of the unlabelled pool): its encodings and
    #: cached features are those rows of ``rows_of``'s, so nothing is computed again
    rows_of: "Split | None" = None
    rows: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def subset(cls, name: str, parent: "Split", rows: Sequence[int], labels: np.ndarray) -> "Split":
        """The ``rows`` of ``parent``, labelled ``labels`` (see ``rows_of``)."""
        rows = tuple(int(r) for r in rows)
        return cls(name, [parent.inputs[r] for r in rows], np.asarray(labels, dtype=np.int64), (), parent, rows)

    @classmethod
    def union(cls, name: str, *parts: "Split") -> "Split":
        """One split of ``parts`` in order (see ``parts``)."""
        return cls(
            name,
            [x for part in parts for x in part.inputs],
            np.concatenate([part.labels for part in parts]),
            tuple(parts),
        )


@dataclass(frozen=True)
class SkippedRow:
    """A row of the user's data that is not trained on, and why.

    ``row`` counts the data rows of the table (or the files of a folder, sorted) from 0, the header not
    counted (messages name a table file's row by its ``line`` instead: see :func:`row_name`); ``file`` is the
    input's file, or the start of its text;
    ``kind`` is :data:`NO_LABEL` or one of :attr:`UnreadableInputError.KINDS`, ``reason`` the whole story.
    """

    row: int
    file: str
    kind: str
    reason: str
    line: int | None = None  # the row's line in its table file (the header being line 1), when read from one


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

    #: every row left out: without a label, or with an input that cannot be read (see :class:`SkippedRow`)
    skipped: tuple[SkippedRow, ...] = ()
    #: the inputs of the rows without a label (not read nor checked), for semi-supervised use later
    unlabelled: tuple[Any, ...] = ()
    #: identical inputs found (see :func:`prepare_dataset`): ``rows`` repeating an earlier row's input, ``sets``
    #: of copies, ``conflicting_labels`` (inputs given with different labels), and with split folders
    #: ``across_given_splits`` (validation or test rows identical to a training row)
    duplicates: dict[str, int] = field(default_factory=lambda: {"rows": 0, "sets": 0, "conflicting_labels": 0})
    #: the user's column of groups (patient, speaker...), and how many groups the split kept whole
    group_column: str | None = None
    groups: int | None = None
    #: hidden files of a folder left out (``.DS_Store``, ``._x.png``, ``.ipynb_checkpoints/``...)
    hidden_skipped: int = 0
    #: the split folders the split was taken from (``("train", "val", "test")`` or part of it; empty: none)
    given_splits: tuple[str, ...] = ()

    def skipped_counts(self) -> dict[str, Any]:
        """How many rows were left out: ``unlabelled``, ``unreadable``, and ``by_reason`` (kind -> count)."""
        kinds = Counter(row.kind for row in self.skipped)
        unlabelled = kinds.get(NO_LABEL, 0)
        return {
            "unlabelled": unlabelled,
            "unreadable": len(self.skipped) - unlabelled,
            "by_reason": dict(sorted(kinds.items(), key=lambda item: -item[1])),
        }

    def summary(self) -> dict[str, Any]:
        """What the data are, for summary.json and the manifest: modality, classes, split sizes, columns,
        fingerprint, rows left out, duplicates found, hidden files left out (and groups, split folders, shots)."""
        summary = {
            "modality": self.modality,
            "classes": [str(c) for c in self.classes],
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "input_column": self.input_column,
            "label_column": self.label_column,
            "fingerprint": self.fingerprint,
            "skipped": self.skipped_counts(),
            "duplicates": dict(self.duplicates),
            "hidden_skipped": self.hidden_skipped,
        }
        if self.group_column is not None:
            summary.update(group_column=self.group_column, groups=self.groups)
        if self.given_splits:
            summary["given_splits"] = list(self.given_splits)
        if self.shots is not None:
            summary.update(shots=self.shots, validation=self.validation)
        return summary


# ---------------------------------------------------------------- columns


def _guess_input_column(frame: pd.DataFrame, label_column: str, origin: str) -> str:
    candidates = [c for c in frame.columns if c != label_column]
    if len(candidates) == 1:
        return candidates[0]
    for name in ("image", "audio", "text", "path", "file", "filepath", "filename"):
        if name in candidates:
            return name
    raise DataError(
        f"cannot tell which column of {origin} holds the inputs (columns: {', '.join(map(str, frame.columns))}); "
        "name it with --input-column"
    )


# ---------------------------------------------------------------- the bad-row policy


def _is_missing_label(value: Any) -> bool:
    return is_missing(value) or (isinstance(value, str) and value.strip().lower() in MISSING_LABEL_TEXTS)


def _labels_as_written(values: Sequence[Any]) -> list[Any]:
    """Labels as plain Python values; whole numbers that pandas made floats (a column with empty cells) are
    ints again, so that a label written ``1`` is the class ``1``, never ``1.0``."""
    labels = [_plain(v) for v in values]
    if labels and all(isinstance(v, float) for v in labels) and all(v.is_integer() for v in labels):
        labels = [int(v) for v in labels]
    return labels


def bad_input_options(on_bad_input: Any, max_bad_fraction: Any, max_image_pixels: Any) -> str | None:
    """What is wrong with the bad-input options (None: nothing); see :func:`prepare_dataset`."""
    if on_bad_input not in BAD_INPUT_POLICIES:
        return f"on_bad_input must be one of {', '.join(BAD_INPUT_POLICIES)}; got {on_bad_input!r}"
    if (
        isinstance(max_bad_fraction, bool)
        or not isinstance(max_bad_fraction, (int, float, np.number))
        or not 0 <= max_bad_fraction <= 1
    ):
        return f"max_bad_fraction must be a share of the rows between 0 and 1; got {max_bad_fraction!r}"
    whole = isinstance(max_image_pixels, (int, np.integer)) and not isinstance(max_image_pixels, bool)
    if max_image_pixels is not None and (not whole or max_image_pixels < 1):
        return f"max_image_pixels must be a whole number of pixels >= 1 (or None: no limit); got {max_image_pixels!r}"
    return None


def _apply_bad_input_policy(
    unreadable: list[tuple[int, UnreadableInputError]],
    total: int,
    origin: str,
    on_bad_input: str,
    max_bad_fraction: float,
) -> None:
    """Refuse the data when the policy says so; else warn once about what is skipped."""
    if not unreadable:
        return
    first = unreadable[0][1]
    if on_bad_input == BAD_INPUT_ERROR:
        raise first
    share = len(unreadable) / total
    if len(unreadable) == total:
        raise DataError(f"none of the {total} labelled inputs of {origin} can be used; the first: {first}")
    if share > max_bad_fraction:
        raise DataError(
            f"{len(unreadable)} of {total} labelled rows of {origin} ({share:.0%}) cannot be used, more "
            f"than the {max_bad_fraction:.0%} that --max-bad-fraction (max_bad_fraction) allows; "
            f"the first: {first}"
        )
    named = "; ".join(f"{exc.file or 'row'}: {exc.reason}" for _, exc in unreadable[:_ROWS_NAMED])
    logger.warning(
        "skipped %d of %d labelled rows of %s that cannot be used: %s%s",
        len(unreadable),
        total,
        origin,
        named,
        "; ..." if len(unreadable) > _ROWS_NAMED else "",
    )


def _file_digest(path: str) -> tuple[str, int, str]:
    """A file's resolved path, size and SHA-256 (of its bytes: the same content under any name)."""
    resolved = Path(path).expanduser().resolve()
    with open(resolved, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return str(resolved), resolved.stat().st_size, digest


def _content_keys(inputs: Sequence[Any], modality: str) -> tuple[list[str], dict[str, tuple[str, int, str]]]:
    """What makes two inputs the same, one key each: a file's content (its SHA-256, so one file by two paths,
    or a copy, is the same input), a text with its spacing evened out, an array's bytes, shape and type; and
    the digests of the files (by the path as given), which the fingerprint uses too."""
    files: dict[str, tuple[str, int, str]] = {}
    keys = []
    for value in inputs:
        if modality in FILE_MODALITIES and isinstance(value, (str, Path)):
            name = str(value)
            if name not in files:
                try:
                    files[name] = _file_digest(name)
                except OSError:  # (read a moment ago; gone since): the path is all there is to go by
                    files[name] = (name, -1, "")
            keys.append("file:" + (files[name][2] or files[name][0]))
        elif isinstance(value, np.ndarray):
            keys.append(
                "array:"
                + hashlib.sha256(
                    repr((value.dtype.str, value.shape)).encode() + np.ascontiguousarray(value).tobytes()
                ).hexdigest()
            )
        elif isinstance(value, Image.Image):
            keys.append("pil:" + hashlib.sha256(repr((value.mode, value.size)).encode() + value.tobytes()).hexdigest())
        elif isinstance(value, str):
            keys.append("text:" + " ".join(value.split()))
        else:
            keys.append(f"{type(value).__name__}:{value!r}")
    return keys, files


def _connected_groups(keys: Sequence[str], user_groups: Sequence[Any] | None) -> np.ndarray:
    """Each row's group (numbered 0, 1, ... in order of first row): rows with the same key are one group, and
    so are rows of the same user group; both at once, so that a duplicate joins the groups of its copies."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for values in (keys, user_groups or ()):
        first: dict[Any, int] = {}
        for i, value in enumerate(values):
            if is_missing(value):  # (an empty group cell: the row is a group of its own)
                continue
            a, b = root(i), root(first.setdefault(value, i))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(len(keys))]
    numbers: dict[int, int] = {}
    return np.array([numbers.setdefault(r, len(numbers)) for r in roots], dtype=np.int64)


def _duplicate_counts(keys: Sequence[str], labels: np.ndarray) -> dict[str, int]:
    """``rows``: rows whose input an earlier row has already; ``sets``: inputs given more than once;
    ``conflicting_labels``: inputs given with different labels."""
    labels_of: dict[str, set[int]] = {}
    counts = Counter(keys)
    for key, label in zip(keys, labels):
        labels_of.setdefault(key, set()).add(int(label))
    return {
        "rows": len(keys) - len(counts),
        "sets": sum(1 for c in counts.values() if c > 1),
        "conflicting_labels": sum(1 for v in labels_of.values() if len(v) > 1),
    }


def stratified_group_split(
    labels: np.ndarray, groups: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test, every group (see :func:`_connected_groups`) whole in one part,
    the class proportions of each part as close to the data's as whole groups allow (seeded).

    First every part gets one group of every class (rarest classes first, smallest groups first), so that a
    class in at least as many groups as there are parts is in every part; then the other groups, largest
    first, each go to the part that lacks the most of its classes (relative to each class's size).
    ``test_fraction`` 0 leaves the test part empty.
    """
    fractions = [1 - val_fraction - test_fraction, val_fraction] + ([test_fraction] if test_fraction > 0 else [])
    _, rows_group = np.unique(groups, return_inverse=True)
    _, rows_class = np.unique(labels, return_inverse=True)
    n_groups, n_classes = int(rows_group.max()) + 1, int(rows_class.max()) + 1
    # (group, class) pairs with their counts, sorted by group: a group's classes are one slice
    pairs, pair_counts = np.unique(rows_group * n_classes + rows_class, return_counts=True)
    pair_group, pair_class = pairs // n_classes, pairs % n_classes
    starts = np.searchsorted(pair_group, np.arange(n_groups + 1))
    sizes = np.bincount(rows_group, minlength=n_groups)
    totals = np.bincount(rows_class, minlength=n_classes).astype(float)
    target = np.array(fractions)[:, None] * totals[None, :]
    current = np.zeros_like(target)
    part_of = np.full(n_groups, -1)
    rank = np.empty(n_groups, dtype=np.int64)
    rank[np.random.default_rng(seed).permutation(n_groups)] = np.arange(n_groups)

    def assign(group: int, part: int) -> None:
        part_of[group] = part
        current[part, pair_class[starts[group] : starts[group + 1]]] += pair_counts[starts[group] : starts[group + 1]]

    by_class = np.lexsort((rank[pair_group], pair_class))  # the pairs of each class, in the seeded order
    class_starts = np.searchsorted(pair_class[by_class], np.arange(n_classes + 1))
    for c in np.argsort(np.bincount(pair_class, minlength=n_classes), kind="stable"):
        members = by_class[class_starts[c] : class_starts[c + 1]]
        for part in range(len(fractions)):
            if current[part, c] > 0:
                continue
            free = members[part_of[pair_group[members]] < 0]
            if not len(free):
                break
            # the smallest group, then the one with the most of this class (ties: the seeded order)
            best = free[np.lexsort((-pair_counts[free], sizes[pair_group[free]]))[0]]
            assign(int(pair_group[best]), part)
    rest = np.flatnonzero(part_of < 0)
    for group in rest[np.lexsort((rank[rest], -sizes[rest]))]:  # largest first
        span = slice(starts[group], starts[group + 1])
        classes, counts = pair_class[span], pair_counts[span]
        lacking = ((target[:, classes] - current[:, classes]) * (counts / totals[classes])).sum(axis=1)
        assign(int(group), int(np.argmax(lacking)))
    parts = [np.sort(np.flatnonzero(part_of[rows_group] == part)) for part in range(len(fractions))]
    return parts[0], parts[1], parts[2] if test_fraction > 0 else np.array([], dtype=np.int64)


def _check_group_classes(
    labels: np.ndarray, groups: np.ndarray, classes: Sequence[Any], needed: int, origin: str, what: str, parts: str
) -> None:
    """Every class in at least ``needed`` groups, since a group stays in one part."""
    for c, name in enumerate(classes):
        rows = labels == c
        in_groups = len(np.unique(groups[rows]))
        if in_groups < needed:
            raise DataError(
                f"class {_plain(name)!r} in {origin} has its {int(rows.sum())} example(s) in {in_groups} "
                f"group{'s' if in_groups != 1 else ''} ({what}), and a group stays in one part; each "
                f"class needs at least {needed} groups ({parts})"
            )


def _given_split(
    labels: np.ndarray,
    groups: np.ndarray | None,
    given: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    classes: Sequence[Any],
    origin: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test as the split folders give them; a part with no folder is carved out of the
    train folder (stratified, by groups where there are any), with its fraction of the train folder."""
    train = np.flatnonzero(given == "train")
    val, test = np.flatnonzero(given == "val"), np.flatnonzero(given == "test")
    for part, rows in (("val", val), ("test", test)):
        unknown = sorted(set(labels[rows].tolist()) - set(labels[train].tolist()))
        if unknown:
            raise DataError(
                f"class {_plain(classes[unknown[0]])!r} is in the {part} folder of {origin} but not in "
                "its train folder: a model cannot learn it; add examples of it to train/, or remove it"
            )
    carve_val, carve_test = not len(val), not len(test) and test_fraction > 0
    if carve_val or carve_test:
        names = [_plain(classes[c]) for c in labels[train]]
        parts = ("training",) + (("validation",) if carve_val else ()) + (("test",) if carve_test else ())
        _check_classes(names, "label", f"the train folder of {origin}", parts)
        fractions = (val_fraction if carve_val else 0.0, test_fraction if carve_test else 0.0)
        if not carve_val:  # only a test part to carve: it takes the place of the validation part below
            fractions = (test_fraction, 0.0)
        sub_labels = labels[train]
        if groups is not None and len(np.unique(groups[train])) < len(train):
            rest, first, second = stratified_group_split(sub_labels, groups[train], seed, *fractions)
        else:
            rest, first, second = stratified_split(sub_labels, seed, *fractions)
        if carve_val:
            train, val, test = train[rest], train[first], (train[second] if carve_test else test)
        else:
            train, test = train[rest], train[first]
    missing = [
        f"{part} lacks {_plain(classes[c])!r}"
        for part, rows in (("validation", val), ("test", test))
        if len(rows)
        for c in sorted(set(labels[train].tolist()) - set(labels[rows].tolist()))
    ]
    if missing:
        logger.warning(
            "the split folders of %s: %s%s (their scores leave those classes out)",
            origin,
            "; ".join(missing[:3]),
            "; ..." if len(missing) > 3 else "",
        )
    return np.sort(train), np.sort(val), np.sort(test)


def _fingerprint(
    inputs: Sequence[Any],
    labels: Sequence[Any],
    seed: int,
    fractions: tuple[float, float],
    shots: int | None = None,
    files: dict[str, tuple[str, int, str]] | None = None,
    split_by: Any = None,
) -> str:
    """A hash of the inputs, labels and how they are split: files by resolved path, size and content (so the
    same data named by another path, from another folder, give the same hash, and a file changed in place
    another), arrays by their bytes, texts as they are. ``split_by``: what else decides the split (groups,
    split folders), when anything does."""
    # (shots and split_by only when given, so the fingerprints of ordinary splits stay what they were; the seed and
    # fractions as plain numbers, so that 0 and 0.0, or numpy's 0.15 and Python's, split alike and hash alike)
    seed, fractions = int(seed), (float(fractions[0]), float(fractions[1]))
    digest = hashlib.sha256(repr((seed, fractions) if shots is None else (seed, fractions, shots)).encode())
    for value, label in zip(inputs, labels):
        if files is not None and isinstance(value, (str, Path)) and str(value) in files:
            digest.update(repr(files[str(value)]).encode())
        else:
            digest.update(value.tobytes() if isinstance(value, np.ndarray) else str(value).encode())
        digest.update(str(label).encode())
    if split_by is not None:
        digest.update(repr(split_by).encode())
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
    on_bad_input: str = DEFAULT_ON_BAD_INPUT,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    group_column: str | None = None,
) -> DatasetBundle:
    """Validate labelled data and split it into stratified, seeded train / validation / test parts.

    ``data`` is a DataFrame, a table file (see :func:`read_table`) or a folder path (``~`` is the home
    folder). ``input_column`` is guessed when there is one column besides the label (image folders: ``image``).
    ``max_samples`` keeps a stratified, seeded sample of that many rows first.
    ``modality`` ("image", "audio" or "text") is inferred from the inputs when not given (by majority:
    :func:`infer_modality`).
    ``test_fraction`` 0 holds out no test part (the caller tests on data of its own, as in cross-validation);
    None holds out :data:`AUTO_TEST_FRACTION` from :data:`AUTO_TEST_MIN_EXAMPLES` labelled examples up, else none.

    Groups. Identical inputs (one file named by two paths, two files of the same content, the same text up
    to spacing, equal arrays) are one group, and a group is never split across train, validation and test:
    a copy of a training example in the test part would be a test passed by memory. ``group_column`` names a
    column of groups of the user's own (patient, speaker, session...): its rows join the same group too (an
    empty cell is a group of its own). The split is then stratified by groups
    (:func:`stratified_group_split`), every class in every part when it is in enough groups, else refused in
    one line; without any group of more than one row the split is the usual :func:`stratified_split`.
    An input given with different labels keeps each of its rows (and label), in one part, with a warning;
    ``summary()["duplicates"]`` counts the repeated rows, the repeated inputs and those with conflicting labels.

    Split folders. A folder laid out ``train/``, ``val/``, ``test/`` (or ``training/``, ``validation/``,
    ``dev/``, ``testing/``...: :data:`SPLIT_FOLDERS`) with class folders inside is split as given; a part
    without a folder is carved out of ``train/`` (``val_fraction``, ``test_fraction`` of it). ``shots`` are
    refused with such a folder.

    ``shots`` K (few labels): K examples of every class are drawn (seeded) as the only labelled data the
    search sees, for training *and* model selection, and every other example is the test set, for an
    honest report (``val_fraction`` and ``test_fraction`` are then unused). How the K are used:

    * K >= 10 (:data:`MIN_SHOTS_FOR_HOLDOUT`): ``K // 4`` per class are held out as the validation split,
      the rest train (``validation`` "holdout"); every strategy can be searched.
    * 2 <= K < 10: too few to hold any out. The validation split *is* the training split
      (``validation`` "cross_validation"), and the search keeps to the embedding strategies, which validate
      by stratified k-fold cross-validation on it (k = min(K, 5)); see :mod:`automl_tl.train.embedding_heads`.
    * K = 1: nothing can be validated (``validation`` "none"); the search fits nearest centroids, and the
      best-ranked backbone's (the first trial) is kept, every trial scoring its training accuracy (1.0).

    A class with fewer than K + 1 examples (K to learn from, at least one to test on) is refused. With groups,
    the K are drawn from K different groups, and the other rows of a drawn group are tested on by no one.

    Bad rows. A row whose label is empty (or ``NA``, ``null``...: :data:`MISSING_LABEL_TEXTS`) is unlabelled:
    left out, counted in one warning, its input kept in ``unlabelled`` (not read). Every labelled input is
    read once (:func:`check_input`; images larger than ``max_image_pixels`` are bad too); with
    ``on_bad_input`` "skip" those that cannot be used are left out with one warning, unless they are more than
    ``max_bad_fraction`` of the labelled rows (or all of them): then, as with "error" at the first one, the
    data are refused in one line. ``skipped`` lists every row left out (:class:`SkippedRow`). With
    ``max_samples``, only the sampled rows are read, and those skipped are not replaced. Rows left out
    change the fingerprint only by their absence. Messages name a table file's rows by their line in the
    file (the header is line 1), a DataFrame's by position.
    """
    check_fractions(val_fraction, test_fraction)
    options_problem = bad_input_options(on_bad_input, max_bad_fraction, max_image_pixels)
    if options_problem:
        raise ConfigError(options_problem)
    base_dir: Path | None = None
    lines: list[int] | None = None
    hidden, given_splits = 0, ()
    if isinstance(data, pd.DataFrame):
        frame, origin = data, "the DataFrame"
    else:
        path = Path(data).expanduser()
        origin = str(path)
        if path.is_dir():
            contents = read_folder_contents(path)
            frame, hidden, given_splits = contents.frame, contents.hidden, contents.splits
            label_column, input_column = "label", str(frame.columns[0])
            # a folder's kind of files says it, even where its first file cannot be read
            modality = modality or next(m for m, column in FOLDER_COLUMNS.items() if column == input_column)
            if given_splits and shots is not None:
                raise DataError(
                    f"folder {path} is laid out in split folders ({', '.join(given_splits)}), which "
                    "fix the split, and shots draw one of their own; give the train folder alone "
                    "(shots then test on every example not drawn)"
                )
        elif path.suffix.lower() in TABLE_EXTENSIONS or path.is_file():
            frame, base_dir = read_table(path), path.parent
            lines = frame.attrs.get(LINES_ATTR)
        else:
            raise DataError(f"data path not found: {path}; expected a table file (CSV, ...) or a folder")

    columns = ", ".join(map(str, frame.columns))
    if frame.attrs.get(READ_AS_ATTR):  # what was recognised, so that a wrongly split file is seen as such
        columns += f" ({frame.attrs[READ_AS_ATTR]})"
    if len(frame) == 0:
        raise DataError(f"{origin} holds no rows")
    if label_column not in frame.columns:
        raise DataError(f"label column {label_column!r} not found in {origin}; columns: {columns}")
    input_column = input_column or _guess_input_column(frame, label_column, origin)
    if input_column == label_column:
        raise DataError(
            f"the label column and the input column are both {label_column!r}: a model would learn "
            f"to read its answer; name the input column with --input-column (columns: {columns})"
        )
    if input_column not in frame.columns:
        raise DataError(f"input column {input_column!r} not found in {origin}; columns: {columns}")
    if group_column is not None:
        if group_column not in frame.columns:
            raise DataError(f"group column {group_column!r} not found in {origin}; columns: {columns}")
        for role, name in (("label", label_column), ("input", input_column)):
            if group_column == name:
                raise DataError(
                    f"the group column and the {role} column are both {name!r}; name the column of "
                    "groups (patient, speaker, session...) with --group-column"
                )
    kept = (
        [input_column, label_column]
        + ([group_column] if group_column is not None else [])
        + (["split"] if given_splits else [])
    )

    # from here on the index is the row's position in the user's table (messages name it by its line: row_name)
    frame = frame[kept].reset_index(drop=True)
    no_label = frame[label_column].map(_is_missing_label).to_numpy(dtype=bool)
    unlabelled_inputs, unlabelled_rows = list(frame[input_column][no_label]), list(frame.index[no_label])
    if no_label.all():
        raise DataError(f"{origin} has no labelled rows: all {len(frame)} have an empty {label_column!r}")
    if no_label.any():
        logger.warning(
            "%d of %d rows of %s have no %r: kept apart as unlabelled data, not trained on (first at %s)",
            len(unlabelled_rows),
            len(frame),
            origin,
            label_column,
            row_name(unlabelled_rows[0], lines),
        )
        frame = frame[~no_label]
    frame = frame.copy()
    frame[label_column] = pd.Series(_labels_as_written(list(frame[label_column])), index=frame.index, dtype=object)

    shots_problem = bad_shots(shots)
    if shots_problem:
        raise DataError(shots_problem)
    test_fraction = resolve_test_fraction(test_fraction, min(len(frame), max_samples or len(frame)))
    # one example of every class in each part; few-shot data are checked by _check_shots instead, split
    # folders once split (a part carved out of train/ needs its examples there)
    parts = (
        None
        if shots is not None or given_splits
        else (("training", "validation", "test") if test_fraction > 0 else ("training", "validation"))
    )
    _check_classes(list(frame[label_column]), label_column, origin, parts)
    if max_samples is not None and len(frame) > max_samples:
        frame = _stratified_sample(frame, label_column, max_samples, seed, origin)
        origin = f"a sample of {max_samples} rows of {origin}"
        _check_classes(list(frame[label_column]), label_column, origin, parts)
    if shots is not None:
        _check_shots(list(frame[label_column]), label_column, origin, int(shots))
    modality = modality or infer_modality(list(frame[input_column]), input_column)
    if modality not in FOLDER_COLUMNS:
        raise DataError(f"unknown modality {modality!r}; expected one of {', '.join(FOLDER_COLUMNS)}")
    inputs = list(frame[input_column])
    if modality in FILE_MODALITIES:
        inputs = resolve_paths(inputs, base_dir)
        unlabelled_inputs = resolve_paths(unlabelled_inputs, base_dir)

    def line_of(row: int) -> int | None:
        return lines[row] if lines is not None and 0 <= row < len(lines) else None

    skipped = [
        SkippedRow(int(row), input_excerpt(value), NO_LABEL, NO_LABEL, line_of(int(row)))
        for row, value in zip(unlabelled_rows, unlabelled_inputs)
    ]
    unreadable = find_unreadable(inputs, modality, origin, list(frame.index), max_image_pixels, lines)
    _apply_bad_input_policy(unreadable, len(inputs), origin, on_bad_input, max_bad_fraction)
    if unreadable:
        rows = list(frame.index)
        skipped += [
            SkippedRow(int(rows[i]), exc.file or input_excerpt(inputs[i]), exc.kind, exc.reason, line_of(int(rows[i])))
            for i, exc in unreadable
        ]
        bad = {i for i, _ in unreadable}
        keep = [i for i in range(len(inputs)) if i not in bad]
        inputs = [inputs[i] for i in keep]
        frame = frame.iloc[keep]
        origin = f"{origin} once its {len(bad)} unreadable row(s) are skipped"
        _check_classes(list(frame[label_column]), label_column, origin, parts)
        if shots is not None:
            _check_shots(list(frame[label_column]), label_column, origin, int(shots))
    raw_labels = list(frame[label_column])
    classes = sorted(set(raw_labels), key=lambda c: (str(type(c)), c))

    class_index = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_index[c] for c in raw_labels], dtype=np.int64)
    keys, files = _content_keys(inputs, modality)
    duplicates = _duplicate_counts(keys, labels)
    user_groups = list(frame[group_column]) if group_column is not None else None
    groups = _connected_groups(keys, user_groups)
    grouped = len(np.unique(groups)) < len(groups)  # some group of two rows or more: the split keeps it whole
    what = "identical inputs" if group_column is None else f"identical inputs or the same {group_column!r}"
    if duplicates["conflicting_labels"]:
        labels_of: dict[str, set[int]] = {}
        for key, label in zip(keys, labels):
            labels_of.setdefault(key, set()).add(int(label))
        first = next(key for key, found in labels_of.items() if len(found) > 1)
        logger.warning(
            "%d input(s) of %s are given with different labels, first %s (%s): every row is kept, with "
            "its label, and its copies stay in the same part of the split; fix the labels if they are "
            "mistakes",
            duplicates["conflicting_labels"],
            origin,
            input_excerpt(inputs[keys.index(first)]),
            ", ".join(sorted(str(_plain(classes[c])) for c in labels_of[first])),
        )
    if duplicates["rows"]:
        logger.info(
            "%d row(s) of %s repeat another row's input (%d input(s) given more than once): each set of "
            "copies is kept in one part of the split",
            duplicates["rows"],
            origin,
            duplicates["sets"],
        )

    validation = VALIDATION_HOLDOUT
    split_by: Any = None
    if given_splits:
        given = np.asarray(frame["split"].tolist())
        train_idx, val_idx, test_idx = _given_split(
            labels, groups if grouped else None, given, seed, val_fraction, test_fraction, classes, origin
        )
        split_by = ("folders", given.tolist(), groups.tolist() if grouped else None)
        train_groups = set(groups[train_idx].tolist())
        across = int(sum(1 for i in np.concatenate([val_idx, test_idx]) if groups[i] in train_groups))
        duplicates["across_given_splits"] = across
        if across:
            logger.warning(
                "%d validation or test example(s) of %s are identical to training examples (as the "
                "split folders give them): their scores flatter the model; remove the copies",
                across,
                origin,
            )
    elif shots is None:
        if grouped:
            needed = 3 if test_fraction > 0 else 2
            _check_group_classes(
                labels,
                groups,
                classes,
                needed,
                origin,
                what,
                "one each for training, validation" + (" and test" if needed == 3 else ""),
            )
            train_idx, val_idx, test_idx = stratified_group_split(labels, groups, seed, val_fraction, test_fraction)
        else:
            train_idx, val_idx, test_idx = stratified_split(labels, seed, val_fraction, test_fraction)
    else:
        if grouped:
            _check_group_classes(
                labels, groups, classes, int(shots) + 1, origin, what, f"{shots} to learn from, 1 or more to test on"
            )
        train_idx, val_idx, test_idx = few_shot_split(labels, int(shots), seed, groups if grouped else None)
        validation = (
            VALIDATION_HOLDOUT
            if shots >= MIN_SHOTS_FOR_HOLDOUT
            else VALIDATION_CROSS
            if shots >= 2
            else VALIDATION_NONE
        )
    if grouped and not given_splits:
        split_by = ("groups", group_column, groups.tolist())

    def take(name: str, idx: np.ndarray) -> Split:
        return Split(name, [inputs[i] for i in idx], labels[idx])

    bundle = DatasetBundle(
        modality=modality,
        classes=[_plain(c) for c in classes],
        train=take("train", train_idx),
        val=take("val", val_idx),
        test=take("test", test_idx),
        input_column=input_column,
        label_column=label_column,
        fingerprint=_fingerprint(
            inputs,
            raw_labels,
            seed,
            (val_fraction, test_fraction),
            None if shots is None else int(shots),
            files,
            split_by,
        ),
        shots=None if shots is None else int(shots),
        validation=validation,
        skipped=tuple(sorted(skipped, key=lambda r: r.row)),
        unlabelled=tuple(unlabelled_inputs),
        duplicates=duplicates,
        group_column=group_column,
        groups=int(len(np.unique(groups))) if group_column is not None else None,
        hidden_skipped=hidden,
        given_splits=given_splits,
    )
    if shots is None:
        logger.info(
            "data: %d classes, %d train / %d validation / %d test (%s)",
            len(classes),
            len(bundle.train),
            len(bundle.val),
            len(bundle.test),
            origin,
        )
    else:
        logger.info(
            "data: %d classes, %d shots per class: %d train / %s / %d test, every example not drawn (%s)",
            len(classes),
            shots,
            len(bundle.train),
            f"{len(bundle.val)} validation"
            if validation == VALIDATION_HOLDOUT
            else f"validation by {'nothing' if validation == VALIDATION_NONE else 'cross-validation'}",
            len(bundle.test),
            origin,
        )
    return bundle


def check_fractions(val_fraction: float, test_fraction: float | None) -> None:
    """Refuse split fractions that leave no training data (``test_fraction`` None: chosen by the data's size)."""
    test = AUTO_TEST_FRACTION if test_fraction is None else test_fraction
    if not 0 < val_fraction < 1 or not 0 <= test < 1 or val_fraction + test >= 1:
        raise DataError(
            f"validation and test fractions must satisfy 0 < validation < 1, 0 <= test < 1 and "
            f"validation + test < 1, got {val_fraction} and {test_fraction}"
        )


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


def few_shot_split(
    labels: np.ndarray, shots: int, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test for ``shots`` labelled examples per class (seeded).

    ``shots`` of each class are drawn at random; the rest are the test set. With at least
    :data:`MIN_SHOTS_FOR_HOLDOUT` shots, ``shots // 4`` drawn per class are the validation split;
    below that, the validation split is the training split (cross-validation, or nothing, decides).
    ``groups`` (one per example; see :func:`_connected_groups`): the shots of a class come from as many
    different groups, and no example of a drawn group is in the test set (a copy of a training example
    tests nothing); every class needs ``shots`` + 1 groups.
    """
    rng = np.random.default_rng(seed)
    held_out = shots // 4 if shots >= MIN_SHOTS_FOR_HOLDOUT else 0
    train, val = [], []
    drawn_groups: set[int] = set()
    for label in np.unique(labels):
        candidates = rng.permutation(np.flatnonzero(labels == label))
        if groups is None:
            drawn = candidates[:shots]
        else:
            picked: list[int] = []
            for i in candidates:
                if len(picked) == shots:
                    break
                if int(groups[i]) not in drawn_groups:
                    drawn_groups.add(int(groups[i]))
                    picked.append(int(i))
            drawn = np.array(picked, dtype=np.int64)
        val.append(drawn[:held_out])
        train.append(drawn[held_out:])
    train, val = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    test = np.setdiff1d(np.arange(len(labels)), np.concatenate([train, val]))
    if groups is not None:
        test = test[~np.isin(groups[test], list(drawn_groups))]
    return train, (val if held_out else train.copy()), test


def _check_shots(raw_labels: list[Any], label_column: str, origin: str, shots: int) -> None:
    """Every class needs ``shots`` examples to learn from and one more to test on."""
    counts = pd.Series(raw_labels).value_counts(sort=False)
    too_small = counts[counts < shots + 1]
    if len(too_small):
        name, count = _plain(too_small.index[0]), int(too_small.iloc[0])
        raise DataError(
            f"class {name!r} in {origin} has {count} example(s); {shots} shots per class need at "
            f"least {shots + 1} of every class ({shots} to learn from, 1 or more to test on)"
        )


def _check_classes(
    raw_labels: list[Any],
    label_column: str,
    origin: str,
    parts: tuple[str, ...] | None = ("training", "validation", "test"),
) -> None:
    """At least two classes, each with an example for every one of ``parts`` (None: any number of
    examples; few-shot data are checked by :func:`_check_shots`)."""
    counts = pd.Series(raw_labels).value_counts()
    if len(counts) < 2:
        raise DataError(
            f"label column {label_column!r} of {origin} has {len(counts)} class "
            f"({_plain(counts.index[0])!r}); expected at least 2"
        )
    if parts is None:
        return
    needed = len(parts)  # one example of every class in each part
    too_small = counts[counts < needed]
    if len(too_small):
        name, count = _plain(too_small.index[0]), int(too_small.iloc[0])
        raise DataError(
            f"class {name!r} in {origin} has {count} example(s); each class needs at least "
            f"{needed} (one each for {', '.join(parts[:-1])} and {parts[-1]})"
        )


def _stratified_sample(frame: pd.DataFrame, label_column: str, size: int, seed: int, origin: str) -> pd.DataFrame:
    """``size`` rows of ``frame`` with the class proportions kept, in their original order."""
    try:
        kept, _ = train_test_split(frame, train_size=size, stratify=frame[label_column], random_state=seed)
    except ValueError as exc:  # fewer rows kept than there are classes
        raise DataError(
            f"cannot take a stratified sample of {size} rows of {origin}: {str(exc).splitlines()[0]}"
        ) from None
    return kept.sort_index()


def _plain(value: Any) -> Any:
    """numpy scalars become Python ones, so classes serialise to JSON as they were given."""
    return value.item() if isinstance(value, np.generic) else value


def stratified_split(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
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
            raise DataError(
                f"{len(labels)} examples are too few to split {n_classes} classes into train, validation and test"
            )
        rest, test = train_test_split(indices, test_size=test_size, stratify=labels, random_state=seed)
    else:
        rest, test = indices, indices[:0]
    val_size = part_size(val_fraction, len(labels))
    if len(rest) - val_size < n_classes:
        raise DataError(
            f"{len(labels)} examples are too few to split {n_classes} classes into train, validation and test"
        )
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
        if _is_missing_label(value):
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        return str(_plain(value))

    accepted = known | {None}  # empty cells are fine
    unknown = [(row, value) for row, value in enumerate(frame[label_column]) if as_text(value) not in accepted]
    if unknown:
        row, value = unknown[0]
        shown = ", ".join(map(repr, list(classes)[:10])) + (", ..." if len(classes) > 10 else "")
        where = row_name(row, frame.attrs.get(LINES_ATTR))  # a table file's line, a DataFrame's row
        raise DataError(
            f"label column {label_column!r} of {origin} holds {len(unknown)} label(s) the model was "
            f"not trained on, first {_plain(value)!r} at {where}; its classes: {shown}; "
            "drop the column or those rows to predict anyway"
        )


def prepare_unlabelled(
    data: pd.DataFrame | str | Path | Sequence[Any],
    input_column: str,
    modality: str = "image",
    label_column: str | None = None,
    classes: Sequence[Any] | None = None,
) -> list[Any]:
    """Raw inputs to predict on: a DataFrame or CSV with ``input_column``, a folder of files, or a list.

    Texts in a folder are read from its ``.txt`` files (one that cannot be read is a marker in its place that
    :func:`check_input` refuses, naming the file); relative file paths in a table are resolved
    against the CSV's folder. Other columns are ignored, except ``label_column`` when it is given with
    the model's ``classes``: see :func:`check_known_labels`.
    """
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if path.is_dir():
            files = [f for f in list_input_files(path) if file_modality(f) == modality]
            if not files:
                raise DataError(f"folder {path} holds no {modality} files")
            return read_text_files([Path(f) for f in files]) if modality == "text" else files
        frame = read_table(path)
        if input_column not in frame.columns:
            raise DataError(
                f"input column {input_column!r} not found in {path}; columns: {', '.join(map(str, frame.columns))}"
            )
        if label_column is not None and classes is not None and label_column in frame.columns:
            check_known_labels(frame, label_column, classes, str(path))
        values = list(frame[input_column])
        return resolve_paths(values, path.parent) if modality in FILE_MODALITIES else values
    if isinstance(data, pd.DataFrame):
        if input_column not in data.columns:
            raise DataError(
                f"input column {input_column!r} not found in the DataFrame; "
                f"columns: {', '.join(map(str, data.columns))}"
            )
        if label_column is not None and classes is not None and label_column in data.columns:
            check_known_labels(data, label_column, classes, "the DataFrame")
        return list(data[input_column])
    return list(data)
