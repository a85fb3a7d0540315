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

import csv
import hashlib
import io
import itertools
import logging
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile
from PIL import Image, ImageOps, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from automl_tl.errors import ConfigError, DataError, UnreadableInputError, first_line

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".apng", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: soundfile format -> the extensions its files go by (a format not listed goes by its own name: FLAC -> .flac)
_AUDIO_FORMAT_EXTENSIONS = {"AIFF": (".aiff", ".aif", ".aifc"), "AU": (".au", ".snd"), "OGG": (".ogg", ".oga", ".opus"),
                            "MP3": (".mp3",), "MPEG": (".mp3",), "WAVEX": (".wav",), "NIST": (".nist", ".sph"),
                            "IRCAM": (".sf", ".ircam"), "SVX": (".svx", ".8svx"), "MPC2K": (".mpc",)}
#: formats libsndfile reads that are not sound collections: header-less samples, Matlab / Octave data files
_NOT_AUDIO_FORMATS = ("RAW", "MAT4", "MAT5")


def _audio_extensions() -> tuple[str, ...]:
    extensions = [extension for name in soundfile.available_formats() if name not in _NOT_AUDIO_FORMATS
                  for extension in _AUDIO_FORMAT_EXTENSIONS.get(name, (f".{name.lower()}",))]
    return tuple(dict.fromkeys(extensions))


#: every audio file extension this machine's libsndfile reads (matched case-insensitively)
AUDIO_EXTENSIONS = _audio_extensions()
TEXT_EXTENSIONS = (".txt",)
#: table files read by :func:`read_table` (any other file is read as delimited text)
TABLE_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".ndjson", ".xlsx", ".xlsm")
#: delimiters a CSV file may use, sniffed in this order of preference
DELIMITERS = (",", ";", "\t", "|")
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

#: what to do with an input that cannot be read (``on_bad_input``, ``--on-bad-input``)
BAD_INPUT_SKIP = "skip"  # leave the row out, list it in DatasetBundle.skipped, warn once
BAD_INPUT_ERROR = "error"  # refuse the data, naming the first such input
BAD_INPUT_POLICIES = (BAD_INPUT_SKIP, BAD_INPUT_ERROR)
DEFAULT_ON_BAD_INPUT = BAD_INPUT_SKIP
#: more than this share of the labelled rows unreadable, the data are refused whatever the policy
DEFAULT_MAX_BAD_FRACTION = 0.1
#: Images with more pixels than this (read from the header, before decoding) are bad inputs (``max_image_pixels``,
#: ``--max-image-pixels``). It is where PIL itself refuses a file as a possible decompression bomb (twice its
#: warning threshold): room for any camera's photo and most scans and panoramas, while a PNG or TIFF, which
#: cannot be decoded reduced, costs at most ~0.5 GB as RGB (a JPEG is decoded reduced, far smaller).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
#: a large image is decoded reduced to no less than this many times the side it is resized to, so that the
#: final resampling stays as good as from the full image (PIL's "reducing gap")
REDUCING_GAP = 3.0
#: the image modes PIL's ``Image.reduce`` works in
_REDUCIBLE_MODES = ("L", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr")
#: above this many pixels a PNG is checked by its chunks' checksums (``verify``) instead of being decoded
VERIFY_PNG_ABOVE = 16_000_000
#: label cells that mean "no label" (compared stripped and case-blind): empty, and what pandas reads as missing
MISSING_LABEL_TEXTS = ("", "na", "n/a", "nan", "null", "none")
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

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def union(cls, name: str, *parts: "Split") -> "Split":
        """One split of ``parts`` in order (see ``parts``)."""
        return cls(name, [x for part in parts for x in part.inputs], np.concatenate([part.labels for part in parts]),
                   tuple(parts))


@dataclass(frozen=True)
class SkippedRow:
    """A row of the user's data that is not trained on, and why.

    ``row`` counts the data rows of the table (or the files of a folder, sorted) from 0, the header not
    counted, as every message does; ``file`` is the input's file, or the start of its text;
    ``kind`` is :data:`NO_LABEL` or one of :attr:`UnreadableInputError.KINDS`, ``reason`` the whole story.
    """

    row: int
    file: str
    kind: str
    reason: str


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

    def skipped_counts(self) -> dict[str, Any]:
        """How many rows were left out: ``unlabelled``, ``unreadable``, and ``by_reason`` (kind -> count)."""
        kinds = Counter(row.kind for row in self.skipped)
        unlabelled = kinds.get(NO_LABEL, 0)
        return {"unlabelled": unlabelled, "unreadable": len(self.skipped) - unlabelled,
                "by_reason": dict(sorted(kinds.items(), key=lambda item: -item[1]))}

    def summary(self) -> dict[str, Any]:
        summary = {"modality": self.modality, "classes": [str(c) for c in self.classes],
                   "train": len(self.train), "val": len(self.val), "test": len(self.test),
                   "input_column": self.input_column, "label_column": self.label_column,
                   "fingerprint": self.fingerprint, "skipped": self.skipped_counts()}
        if self.shots is not None:
            summary.update(shots=self.shots, validation=self.validation)
        return summary


# ---------------------------------------------------------------- reading images

# PIL refuses (or warns about) large images in Image.open, from a limit of its own; ours, the user's
# max_image_pixels, is checked instead, so PIL's is lifted while we open a file (one thread at a time).
_PIL_LIMIT_LOCK = threading.RLock()


@contextmanager
def _pil_limit_lifted() -> Iterator[None]:
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10e6 else f"{pixels / 1e6:.1f}"


@contextmanager
def _open_image(path: Path, origin: str, max_pixels: int | None) -> Iterator[Image.Image]:
    """``path`` opened (header read, nothing decoded) and checked against ``max_pixels``; any failure to
    read it, there or in the ``with`` block, becomes an :class:`UnreadableInputError` naming it."""
    if not path.is_file():
        raise UnreadableInputError(f"image file not found: {path}{origin}", UnreadableInputError.NOT_FOUND,
                                   "", str(path))
    try:
        with _pil_limit_lifted(), Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                detail = (f"{width}x{height} pixels ({_megapixels(width * height)} MP), more than the limit of "
                          f"{_megapixels(max_pixels)} MP (--max-image-pixels)")
                raise UnreadableInputError(f"image file {path}{origin} is too large: {detail}",
                                           UnreadableInputError.TOO_LARGE, detail, str(path))
            yield image
    except UnreadableInputError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, Image.DecompressionBombError) as exc:
        # (UnidentifiedImageError is an OSError; a corrupt header can make PIL raise any of the others)
        unknown = isinstance(exc, UnidentifiedImageError) and path.suffix.lower() not in IMAGE_EXTENSIONS
        kind = UnreadableInputError.UNSUPPORTED if unknown else UnreadableInputError.UNREADABLE
        raise UnreadableInputError(f"cannot read image file {path}{origin}: {first_line(exc)}", kind,
                                   first_line(exc), str(path)) from None


def read_image(value: Any, origin: str = "", size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """An RGB PIL image from a path or an array (HxW or HxWxC; uint8, or float in [0, 1]).

    A file's EXIF orientation is applied and an animation gives its first frame. ``size``: the side the
    caller resizes the image to; a much larger image is decoded reduced (JPEG at 1/2 to 1/8 scale while
    decoding, other formats by box reduction after it) to no less than :data:`REDUCING_GAP` times it.
    ``max_pixels``: a file with more pixels is refused from its header, before anything is decoded.
    Raises :class:`~automl_tl.errors.UnreadableInputError` (a DataError) naming the file.
    """
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        return _image_from_array(value, origin)
    path = Path(str(value))
    with _open_image(path, origin, max_pixels) as image:
        least = None if size is None else round(size * REDUCING_GAP)
        if least is not None and image.format == "JPEG":
            image.draft(None, (least, least))  # decodes at the smallest DCT scale still at least this large
        ImageOps.exif_transpose(image, in_place=True)  # (decodes the file: truncated files fail here)
        factor = 1 if least is None else min(image.size) // least
        if factor >= 2:
            if image.mode not in _REDUCIBLE_MODES:  # (bilevel to grey: a byte a pixel, as PIL holds "1")
                image = image.convert("L" if image.mode == "1" else "RGB")
            image = image.reduce(factor)
        return image.convert("RGB")


def check_image(value: Any, origin: str = "", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                decode: bool = True) -> None:
    """Raise :class:`~automl_tl.errors.UnreadableInputError` if ``value`` is not a usable image.

    Affordable on every input of a data set: the header gives the size (checked against ``max_pixels``);
    with ``decode``, a JPEG is decoded at 1/8 scale, a PNG above :data:`VERIFY_PNG_ABOVE` pixels is checked
    by its chunks' checksums, and anything else is decoded (so that truncated files are found now).
    """
    if isinstance(value, Image.Image):
        return
    if isinstance(value, np.ndarray):
        _image_from_array(value, origin)
        return
    path = Path(str(value))
    with _open_image(path, origin, max_pixels) as image:
        if not decode:
            return
        if image.format == "PNG" and image.size[0] * image.size[1] > VERIFY_PNG_ABOVE:
            image.verify()
            return
        if image.format == "JPEG":
            image.draft(None, (1, 1))
        image.load()


def _image_from_array(array: np.ndarray, origin: str) -> Image.Image:
    def refuse(detail: str) -> UnreadableInputError:
        return UnreadableInputError(f"image array{origin} {detail}", UnreadableInputError.UNSUPPORTED, detail,
                                    f"(array, shape {array.shape})")

    if array.ndim not in (2, 3) or array.size == 0 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise refuse(f"has shape {array.shape}; expected HxW or HxWxC with C in 1, 3, 4")
    if array.dtype != np.uint8:
        if (not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all()
                or array.min() < 0 or array.max() > 1):
            raise refuse(f"has dtype {array.dtype} and range [{array.min()}, {array.max()}]; "
                         "expected uint8, or float in [0, 1]")
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
    """The modality of an input column, from its first non-empty value: image arrays or paths, audio paths,
    or else text."""
    present = [v for v in values if not _is_missing(v)]
    if not present:
        raise DataError(f"column {column!r} holds no inputs: every cell is empty")
    first = present[0]
    if isinstance(first, (np.ndarray, Image.Image)):
        return "image"
    if isinstance(first, (str, Path)) and _file_modality(str(first)) in FILE_MODALITIES:
        return _file_modality(str(first))
    if isinstance(first, str):
        return "text"
    raise DataError(f"cannot tell the modality of column {column!r} from its first value {str(first)[:60]!r}; "
                    "expected image paths or arrays, audio paths (wav, flac, aiff, mp3, ...) or texts")


def decode_text(raw: bytes, path: Path) -> tuple[str, str]:
    """``raw`` as text and the encoding it was read in: UTF-8 (a byte-order mark or none), UTF-16 with a
    byte-order mark, else cp1252 or, failing that, Latin-1. Bytes that no text holds (NUL without a
    UTF-16 mark) are refused as an :class:`~automl_tl.errors.UnreadableInputError`."""
    def refuse(detail: str) -> UnreadableInputError:
        return UnreadableInputError(f"text file {path} {detail}", UnreadableInputError.UNSUPPORTED, detail, str(path))

    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise refuse(f"is not UTF-8 nor valid UTF-16 (it starts with a UTF-16 byte-order mark; byte {exc.start} "
                         "is wrong); convert it to UTF-8") from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        if b"\x00" in raw:
            raise refuse(f"is not UTF-8 (byte {exc.start}) and holds NUL bytes: binary, not text; "
                         "convert it to UTF-8") from None
    for encoding in ("cp1252", "latin-1"):  # Latin-1 reads any bytes; cp1252 leaves five of them undefined
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("unreachable: Latin-1 decodes any bytes")


def _sniff_delimiter(text: str) -> str:
    """The delimiter of a delimited text: the one of :data:`DELIMITERS` that splits the header into two or
    more fields and the most of the first rows into as many (the first listed, on a tie)."""
    sample = text[:65536]
    best, best_share = ",", -1.0
    for delimiter in DELIMITERS:
        records = [r for r in itertools.islice(csv.reader(io.StringIO(sample), delimiter=delimiter), 100) if r]
        if len(sample) < len(text) and len(records) > 2:
            records = records[:-1]  # the sample may end in the middle of a row
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        share = sum(len(r) == width for r in records[1:]) / max(len(records) - 1, 1)
        if share > best_share:
            best, best_share = delimiter, share
    return best


def _canonical_ints(column: pd.Series) -> pd.Series:
    """A column of texts every one of which is a whole number written plainly (``0``, ``-3``, not ``007`` or
    ``1.0``) becomes Python ints (empty cells None): a label ``0`` stays ``0``, never ``0.0``."""
    present = [v for v in column if isinstance(v, str)]
    if not present or not all(re.fullmatch(r"-?[1-9][0-9]*|0", v) for v in present):
        return column
    return pd.Series([int(v) if isinstance(v, str) else None for v in column], index=column.index, dtype=object)


def read_table(path: Path) -> pd.DataFrame:
    """Read a table file (see :data:`TABLE_EXTENSIONS`); file paths in it are made absolute relative to its
    folder later.

    Delimited text (``.csv``, ``.tsv``, ``.txt`` or any other name): UTF-8 with or without a byte-order mark,
    UTF-16 with one, else cp1252 or Latin-1 (with a warning); the delimiter is sniffed among
    :data:`DELIMITERS` (``.tsv``: tab). Every cell is kept as written (texts, not numbers), only empty cells
    are missing, and a column of plain whole numbers becomes ints. ``.parquet`` (pyarrow), ``.jsonl`` /
    ``.ndjson`` (one JSON object per line) and ``.xlsx`` (openpyxl; the first sheet) keep their own types.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    kind = {".parquet": "Parquet", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines", ".xlsx": "Excel",
            ".xlsm": "Excel"}.get(suffix, "CSV")
    try:
        if kind == "Parquet":
            return pd.read_parquet(path)
        if kind == "JSON Lines":
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        if kind == "Excel":
            return pd.read_excel(path, sheet_name=0)
        text, encoding = decode_text(path.read_bytes(), path)
        if encoding not in ("utf-8", "utf-16"):
            logger.warning("%s is not UTF-8: read as %s (check its accented letters; save it as UTF-8 to be sure)",
                           path, encoding)
        delimiter = "\t" if suffix == ".tsv" else _sniff_delimiter(text)
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, na_values=[""])
    except ImportError as exc:  # pyarrow or openpyxl missing: a dependency of automl_tl, but installs vary
        raise DataError(f"cannot read {kind} file {path}: {first_line(exc)}") from None
    except UnreadableInputError as exc:
        raise DataError(f"cannot read CSV file {path}: {exc.detail}") from None
    except (ValueError, OSError, KeyError, IndexError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        # (pyarrow's and openpyxl's errors for a broken file are ValueErrors, OSErrors or their own: see below)
        raise DataError(f"cannot read {kind} file {path}: {first_line(exc)}") from None
    except Exception as exc:  # a corrupt Parquet or Excel file raises its reader's own errors
        if kind == "CSV":
            raise
        raise DataError(f"cannot read {kind} file {path}: {type(exc).__name__}: {first_line(exc)}") from None
    return frame.apply(_canonical_ints) if len(frame.columns) else frame


def read_text_file(path: Path) -> str:
    """The text of a text file (see :func:`decode_text`), refused if empty or not text."""
    return _read_text_file(path)[0]


def _read_text_file(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        kind = UnreadableInputError.NOT_FOUND if isinstance(exc, FileNotFoundError) else UnreadableInputError.UNREADABLE
        raise UnreadableInputError(f"cannot read text file {path}: {exc.strerror}", kind, exc.strerror or "",
                                   str(path)) from None
    text, encoding = decode_text(raw, path)
    if not text.strip():
        raise UnreadableInputError(f"text file {path} is empty", UnreadableInputError.EMPTY, "empty text", str(path))
    return text, encoding


@dataclass(frozen=True)
class _Unreadable:
    """Stands in a table for an input that was read already and failed (a text file of a folder)."""

    error: UnreadableInputError


def _read_text_files(files: Sequence[Path]) -> list[Any]:
    """The texts of ``files``; one that cannot be read is an :class:`_Unreadable` in its place. One warning
    counts the files that were not UTF-8."""
    texts: list[Any] = []
    not_utf8: list[tuple[Path, str]] = []
    for file in files:
        try:
            text, encoding = _read_text_file(file)
        except UnreadableInputError as exc:
            texts.append(_Unreadable(exc))
            continue
        texts.append(text)
        if encoding not in ("utf-8", "utf-16"):
            not_utf8.append((file, encoding))
    if not_utf8:
        logger.warning("%d text file(s) are not UTF-8 and were read as %s, first %s (save them as UTF-8 to be sure)",
                       len(not_utf8), " or ".join(sorted({e for _, e in not_utf8})), not_utf8[0][0])
    return texts


def _supported_files(folder: Path) -> list[Path]:
    # A dangling symlink is kept: reading it then fails naming it, where skipping it would lose an example unsaid.
    return [p for p in sorted(folder.rglob("*"))
            if (p.is_file() or (p.is_symlink() and not p.exists())) and _file_modality(p.name) is not None]


def read_folder(path: Path) -> pd.DataFrame:
    """A DataFrame (columns ``image``, ``audio`` or ``text``, and ``label``) from a folder with one subfolder per class.

    Text files are read into the ``text`` column (one that cannot be read stands there as a marker that
    :func:`check_input` refuses, naming it); image and audio files are listed by path.
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
        return pd.DataFrame({column: _read_text_files([f for f, _ in files]), "label": [label for _, label in files]})
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


# ---------------------------------------------------------------- the bad-row policy


def _is_missing(value: Any) -> bool:
    """An empty cell: None, NaN, pandas' NA, or a text of nothing but spaces."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, str) and not value.strip()


def _is_missing_label(value: Any) -> bool:
    return _is_missing(value) or (isinstance(value, str) and value.strip().lower() in MISSING_LABEL_TEXTS)


def _labels_as_written(values: Sequence[Any]) -> list[Any]:
    """Labels as plain Python values; whole numbers that pandas made floats (a column with empty cells) are
    ints again, so that a label written ``1`` is the class ``1``, never ``1.0``."""
    labels = [_plain(v) for v in values]
    if labels and all(isinstance(v, float) for v in labels) and all(v.is_integer() for v in labels):
        labels = [int(v) for v in labels]
    return labels


def input_excerpt(value: Any, limit: int = 60) -> str:
    """What names an input in a table of skipped rows: its file, or the start of its text."""
    if isinstance(value, _Unreadable):
        return value.error.file
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return f"(array, shape {value.shape})"
    if _is_missing(value):
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_input(value: Any, modality: str, origin: str = "", max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                decode: bool = True) -> None:
    """Raise :class:`~automl_tl.errors.UnreadableInputError` if ``value`` cannot be used as a ``modality`` input.

    Images: see :func:`check_image`; audio: read whole (silence and non-finite samples are refused),
    unless ``decode`` is false (the file's existence and extension only); texts: empty or not a string.
    ``origin`` (" (row 3 of data.csv)") is added where the value itself names nothing (arrays, texts).
    """
    if isinstance(value, _Unreadable):
        raise value.error
    if _is_missing(value) and not isinstance(value, str):
        raise UnreadableInputError(f"{modality} input{origin} is empty", UnreadableInputError.EMPTY, "empty cell")
    if modality == "image":
        check_image(value, origin if not isinstance(value, str) else "", max_image_pixels, decode)
    elif modality == "audio":
        from automl_tl.audio import check_audio_path, read_audio  # audio.py builds on this module

        if not isinstance(value, (str, Path)):
            raise UnreadableInputError(f"audio input{origin} is a {type(value).__name__}; expected a file path",
                                       UnreadableInputError.UNSUPPORTED, f"a {type(value).__name__}, not a path")
        if decode:
            read_audio(value)
        else:
            check_audio_path(Path(value))
    elif not isinstance(value, str) or not value.strip():
        detail = "empty text" if isinstance(value, str) else f"not a text but a {type(value).__name__}"
        raise UnreadableInputError(f"text input{origin} is empty or not a string: {str(value)[:40]!r}",
                                   UnreadableInputError.EMPTY if isinstance(value, str) else
                                   UnreadableInputError.UNSUPPORTED, detail)


def find_unreadable(inputs: Sequence[Any], modality: str, origin: str, rows: Sequence[int] | None = None,
                    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> list[tuple[int, UnreadableInputError]]:
    """Every input that cannot be used, as (its position in ``inputs``, why), read once each.

    ``rows``: each input's row in the user's table, for the messages (default: its position).
    """
    rows = range(len(inputs)) if rows is None else rows
    found = []
    for position, (value, row) in enumerate(zip(inputs, rows)):
        try:
            check_input(value, modality, f" (row {row} of {origin})", max_image_pixels)
        except UnreadableInputError as exc:
            found.append((position, exc))
    return found


def check_inputs_readable(inputs: Sequence[Any], modality: str, origin: str,
                          max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Read every input once so that a missing or broken file (or an empty text) is refused now, naming it."""
    unreadable = find_unreadable(inputs, modality, origin, max_image_pixels=max_image_pixels)
    if unreadable:
        raise unreadable[0][1]


def bad_input_options(on_bad_input: Any, max_bad_fraction: Any, max_image_pixels: Any) -> str | None:
    """What is wrong with the bad-input options (None: nothing); see :func:`prepare_dataset`."""
    if on_bad_input not in BAD_INPUT_POLICIES:
        return f"on_bad_input must be one of {', '.join(BAD_INPUT_POLICIES)}; got {on_bad_input!r}"
    if (isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, (int, float, np.number))
            or not 0 <= max_bad_fraction <= 1):
        return f"max_bad_fraction must be a share of the rows between 0 and 1; got {max_bad_fraction!r}"
    whole = isinstance(max_image_pixels, (int, np.integer)) and not isinstance(max_image_pixels, bool)
    if max_image_pixels is not None and (not whole or max_image_pixels < 1):
        return f"max_image_pixels must be a whole number of pixels >= 1 (or None: no limit); got {max_image_pixels!r}"
    return None


def _apply_bad_input_policy(unreadable: list[tuple[int, UnreadableInputError]], total: int, origin: str,
                            on_bad_input: str, max_bad_fraction: float) -> None:
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
        raise DataError(f"{len(unreadable)} of {total} labelled rows of {origin} ({share:.0%}) cannot be used, more "
                        f"than the {max_bad_fraction:.0%} that --max-bad-fraction (max_bad_fraction) allows; "
                        f"the first: {first}")
    named = "; ".join(f"{exc.file or 'row'}: {exc.reason}" for _, exc in unreadable[:_ROWS_NAMED])
    logger.warning("skipped %d of %d labelled rows of %s that cannot be used: %s%s", len(unreadable), total,
                   origin, named, "; ..." if len(unreadable) > _ROWS_NAMED else "")


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
    on_bad_input: str = DEFAULT_ON_BAD_INPUT,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> DatasetBundle:
    """Validate labelled data and split it into stratified, seeded train / validation / test parts.

    ``data`` is a DataFrame, a table file (see :func:`read_table`) or a folder path. ``input_column`` is
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

    Bad rows. A row whose label is empty (or ``NA``, ``null``...: :data:`MISSING_LABEL_TEXTS`) is unlabelled:
    left out, counted in one warning, its input kept in ``unlabelled`` (not read). Every labelled input is
    read once (:func:`check_input`; images larger than ``max_image_pixels`` are bad too); with
    ``on_bad_input`` "skip" those that cannot be used are left out with one warning, unless they are more than
    ``max_bad_fraction`` of the labelled rows (or all of them): then, as with "error" at the first one, the
    data are refused in one line. ``skipped`` lists every row left out (:class:`SkippedRow`). With
    ``max_samples``, only the sampled rows are read, and those skipped are not replaced. Rows left out
    change the fingerprint only by their absence.
    """
    check_fractions(val_fraction, test_fraction)
    options_problem = bad_input_options(on_bad_input, max_bad_fraction, max_image_pixels)
    if options_problem:
        raise ConfigError(options_problem)
    base_dir: Path | None = None
    if isinstance(data, pd.DataFrame):
        frame, origin = data, "the DataFrame"
    else:
        path = Path(data)
        origin = str(path)
        if path.is_dir():
            frame = read_folder(path)
            label_column, input_column = "label", str(frame.columns[0])
            # a folder's kind of files says it, even where its first file cannot be read
            modality = modality or next(m for m, column in FOLDER_COLUMNS.items() if column == input_column)
        elif path.suffix.lower() in TABLE_EXTENSIONS or path.is_file():
            frame, base_dir = read_table(path), path.parent
        else:
            raise DataError(f"data path not found: {path}; expected a table file (CSV, ...) or a folder")

    if len(frame) == 0:
        raise DataError(f"{origin} holds no rows")
    if label_column not in frame.columns:
        raise DataError(f"label column {label_column!r} not found in {origin}; columns: {', '.join(map(str, frame.columns))}")
    input_column = input_column or _guess_input_column(frame, label_column, origin)
    if input_column not in frame.columns:
        raise DataError(f"input column {input_column!r} not found in {origin}; columns: {', '.join(map(str, frame.columns))}")

    # from here on the index is the row's position in the user's table, as every message counts rows
    frame = frame[[input_column, label_column]].reset_index(drop=True)
    no_label = frame[label_column].map(_is_missing_label).to_numpy(dtype=bool)
    unlabelled_inputs, unlabelled_rows = list(frame[input_column][no_label]), list(frame.index[no_label])
    if no_label.all():
        raise DataError(f"{origin} has no labelled rows: all {len(frame)} have an empty {label_column!r}")
    if no_label.any():
        logger.warning("%d of %d rows of %s have no %r: kept apart as unlabelled data, not trained on (first at row "
                       "%d)", len(unlabelled_rows), len(frame), origin, label_column, unlabelled_rows[0])
        frame = frame[~no_label]
    frame = frame.copy()
    frame[label_column] = pd.Series(_labels_as_written(list(frame[label_column])), index=frame.index, dtype=object)

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
    modality = modality or infer_modality(list(frame[input_column]), input_column)
    if modality not in FOLDER_COLUMNS:
        raise DataError(f"unknown modality {modality!r}; expected one of {', '.join(FOLDER_COLUMNS)}")
    inputs = list(frame[input_column])
    if modality in FILE_MODALITIES:
        inputs = resolve_paths(inputs, base_dir)
        unlabelled_inputs = resolve_paths(unlabelled_inputs, base_dir)

    skipped = [SkippedRow(int(row), input_excerpt(value), NO_LABEL, NO_LABEL)
               for row, value in zip(unlabelled_rows, unlabelled_inputs)]
    unreadable = find_unreadable(inputs, modality, origin, list(frame.index), max_image_pixels)
    _apply_bad_input_policy(unreadable, len(inputs), origin, on_bad_input, max_bad_fraction)
    if unreadable:
        rows = list(frame.index)
        skipped += [SkippedRow(int(rows[i]), exc.file or input_excerpt(inputs[i]), exc.kind, exc.reason)
                    for i, exc in unreadable]
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
        skipped=tuple(sorted(skipped, key=lambda r: r.row)), unlabelled=tuple(unlabelled_inputs),
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
        raise DataError(f"label column {label_column!r} of {origin} holds {len(unknown)} label(s) the model was "
                        f"not trained on, first {_plain(value)!r} at row {row}; its classes: {shown}; "
                        "drop the column or those rows to predict anyway")


def prepare_unlabelled(data: pd.DataFrame | str | Path | Sequence[Any], input_column: str,
                       modality: str = "image", label_column: str | None = None,
                       classes: Sequence[Any] | None = None) -> list[Any]:
    """Raw inputs to predict on: a DataFrame or CSV with ``input_column``, a folder of files, or a list.

    Texts in a folder are read from its ``.txt`` files (one that cannot be read is a marker in its place that
    :func:`check_input` refuses, naming the file); relative file paths in a table are resolved
    against the CSV's folder. Other columns are ignored, except ``label_column`` when it is given with
    the model's ``classes``: see :func:`check_known_labels`.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            files = [f for f in list_input_files(path) if _file_modality(f) == modality]
            if not files:
                raise DataError(f"folder {path} holds no {modality} files")
            return _read_text_files([Path(f) for f in files]) if modality == "text" else files
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
