"""Every input format read as it comes: images, sound files, texts, tables and class folders.

Each reader either returns what it read or raises :class:`~automl_tl.errors.UnreadableInputError` (an input that
cannot be used: skipped under the bad-row policy) or :class:`~automl_tl.errors.DataError` (a table or folder that
makes the task meaningless). The extension tables say which files each modality reads.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
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

from automl_tl.errors import DataError, UnreadableInputError, first_line
from automl_tl.options import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".png", ".apng", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: soundfile format -> the extensions its files go by (a format not listed goes by its own name: FLAC -> .flac)
_AUDIO_FORMAT_EXTENSIONS = {
    "AIFF": (".aiff", ".aif", ".aifc"),
    "AU": (".au", ".snd"),
    "OGG": (".ogg", ".oga", ".opus"),
    "MP3": (".mp3",),
    "MPEG": (".mp3",),
    "WAVEX": (".wav",),
    "NIST": (".nist", ".sph"),
    "IRCAM": (".sf", ".ircam"),
    "SVX": (".svx", ".8svx"),
    "MPC2K": (".mpc",),
}
#: formats libsndfile reads that are not sound collections: header-less samples, Matlab / Octave data files
_NOT_AUDIO_FORMATS = ("RAW", "MAT4", "MAT5")


def _audio_extensions() -> tuple[str, ...]:
    extensions = [
        extension
        for name in soundfile.available_formats()
        if name not in _NOT_AUDIO_FORMATS
        for extension in _AUDIO_FORMAT_EXTENSIONS.get(name, (f".{name.lower()}",))
    ]
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


# ---------------------------------------------------------------- reading images


#: a large image is decoded reduced to no less than this many times the side it is resized to, so that the
#: final resampling stays as good as from the full image (PIL's "reducing gap")
REDUCING_GAP = 3.0
#: the image modes PIL's ``Image.reduce`` works in
_REDUCIBLE_MODES = ("L", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr")

# PIL refuses (or warns about) large images in Image.open, from a limit of its own; ours, the user's
# max_image_pixels, is checked instead, so PIL's is lifted while we open a file (one thread at a time).
_PIL_LIMIT_LOCK = threading.RLock()


@contextmanager
def _pil_limit_lifted(path: Path | None = None) -> Iterator[None]:
    """PIL's own pixel limit lifted (ours is checked instead) while PIL reads ``path``; whatever PIL warns
    meanwhile (a possible decompression bomb, corrupt EXIF data, ...) is logged once naming the file,
    instead of printed raw without it."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved
            said = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
            for message in dict.fromkeys(f"{w.category.__name__}: {first_line(w.message)}" for w in said):
                logger.warning("image file %s: %s", path if path is not None else "(unnamed)", message)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10e6 else f"{pixels / 1e6:.1f}"


@contextmanager
def _open_image(path: Path, origin: str, max_pixels: int | None) -> Iterator[Image.Image]:
    """``path`` opened (header read, nothing decoded) and checked against ``max_pixels``; any failure to
    read it, there or in the ``with`` block, becomes an :class:`UnreadableInputError` naming it."""
    if not is_existing_file(path):
        shown = input_excerpt(str(path), 200)
        raise UnreadableInputError(f"image file not found: {shown}{origin}", UnreadableInputError.NOT_FOUND, "", shown)
    try:
        with _pil_limit_lifted(path), Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                detail = (
                    f"{width}x{height} pixels ({_megapixels(width * height)} MP), more than the limit of "
                    f"{_megapixels(max_pixels)} MP (--max-image-pixels)"
                )
                raise UnreadableInputError(
                    f"image file {path}{origin} is too large: {detail}",
                    UnreadableInputError.TOO_LARGE,
                    detail,
                    str(path),
                )
            yield image
    except UnreadableInputError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, Image.DecompressionBombError) as exc:
        # (UnidentifiedImageError is an OSError; a corrupt header can make PIL raise any of the others)
        unknown = isinstance(exc, UnidentifiedImageError) and path.suffix.lower() not in IMAGE_EXTENSIONS
        kind = UnreadableInputError.UNSUPPORTED if unknown else UnreadableInputError.UNREADABLE
        raise UnreadableInputError(
            f"cannot read image file {path}{origin}: {first_line(exc)}", kind, first_line(exc), str(path)
        ) from None


def read_image(value: Any, origin: str = "", size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """An RGB PIL image (8 bits a channel) from a path or an array (HxW or HxWxC; uint8, uint16, or float in
    [0, 1]).

    A file's EXIF orientation is applied and an animation gives its first frame. 16-bit, 32-bit and float
    images are scaled to 8 bits by their range (see :func:`as_rgb`), transparent pixels are made white.
    ``size``: the side the caller resizes the image to; a much larger image is decoded reduced (JPEG at 1/2
    to 1/8 scale while decoding, other formats by box reduction after it) to no less than
    :data:`REDUCING_GAP` times it. ``max_pixels``: a file with more pixels is refused from its header, before
    anything is decoded. A ``~`` at the start of a path is the home folder.
    Raises :class:`~automl_tl.errors.UnreadableInputError` (a DataError) naming the file.
    """
    if isinstance(value, Image.Image):
        return as_rgb(value)
    if isinstance(value, np.ndarray):
        return _image_from_array(value, origin)
    path = Path(str(value)).expanduser()
    with _open_image(path, origin, max_pixels) as image:
        least = None if size is None else round(size * REDUCING_GAP)
        if least is not None and image.format == "JPEG":
            image.draft(None, (least, least))  # decodes at the smallest DCT scale still at least this large
        ImageOps.exif_transpose(image, in_place=True)  # (decodes the file: truncated files fail here)
        factor = 1 if least is None else min(image.size) // least
        if factor >= 2:
            if image.mode.startswith("I;16"):
                image = image.convert("I")  # (lossless; PIL reduces 32-bit integers, not 16-bit ones)
            elif image.mode not in _REDUCIBLE_MODES:  # (bilevel to grey: a byte a pixel, as PIL holds "1")
                image = image.convert("L" if image.mode == "1" else "RGBA" if _has_alpha(image) else "RGB")
            image = image.reduce(factor)
        return as_rgb(image)


#: the background transparent pixels are shown on (as an image viewer on a white page shows them)
TRANSPARENT_BACKGROUND = (255, 255, 255)


#: image modes of one channel wider than 8 bits, which PIL's own conversion to RGB clips at 255
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, done right where PIL's ``convert("RGB")`` is not.

    * 16-bit grey (``I;16``): divided by 257, so 65535 is 255 (PIL clips every value above 255 to 255).
    * 32-bit integer grey (``I``): values within 0..255 are kept, within 0..65535 divided by 257 (16-bit data
      read as ``I``), any other range is stretched from its minimum to its maximum.
    * float grey (``F``): values within [0, 1] times 255, within [0, 255] kept, any other range stretched from
      its minimum to its maximum; NaN and infinities are 0.
    * transparency (``LA``, ``PA``, ``RGBA``, a palette or grey image with a transparent colour):
      composited on white (:data:`TRANSPARENT_BACKGROUND`); PIL would drop the alpha and show whatever colour
      a transparent pixel happens to hold (often black).
    * CMYK, YCbCr, bilevel, palette: PIL's conversion (CMYK by its inks: (1 - C) (1 - K) of red, ...).
    """
    if image.mode in _WIDE_GREY_MODES:
        return Image.fromarray(_grey_to_8_bits(np.asarray(image))).convert("RGB")
    if _has_alpha(image):
        # (PIL converts premultiplied grey, La, only to LA: un-premultiplied first, as RGBa is by convert)
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        background = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _grey_to_8_bits(values: np.ndarray) -> np.ndarray:
    """One channel of any integer or float type as uint8, by its type's range or its own (see :func:`as_rgb`)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.uint16:
        return np.round(values.astype(np.float32) / 257).astype(np.uint8)
    floating = values.dtype.kind == "f"
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if floating and low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif not floating and low >= 0 and high <= 65535:
        scaled = values / 257
    else:  # a range of its own (negative values, or beyond 16 bits): stretched to 0..255
        scaled = (values - low) * (255 / ((high - low) or 1.0))
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def check_image(
    value: Any, origin: str = "", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, decode: bool = True
) -> None:
    """Raise :class:`~automl_tl.errors.UnreadableInputError` if ``value`` is not a usable image.

    Affordable on every input of a data set: the header gives the size (checked against ``max_pixels``);
    with ``decode``, the file's structure is checked without decoding its pixels where the format allows
    (see :func:`_structure_is_whole`: PNG, GIF, WebP, uncompressed BMP, TIFF), a JPEG is decoded at 1/8
    scale, and anything else is decoded (so that truncated files are found now). So most images are decoded
    once in a search, when they are encoded for a backbone, not also by this check.
    """
    if isinstance(value, Image.Image):
        return
    if isinstance(value, np.ndarray):
        _image_from_array(value, origin)
        return
    path = Path(str(value)).expanduser()
    with _open_image(path, origin, max_pixels) as image:
        if not decode or _structure_is_whole(image, path):
            return
        if image.format == "JPEG":
            image.draft(None, (1, 1))
        image.load()


def image_shorter_side(value: Any) -> int | None:
    """The shorter side in pixels of an image (a file's from its header, nothing decoded; a PIL image's or an
    array's from its shape); None when it cannot be read (such an input is skipped elsewhere, for its reason)."""
    if isinstance(value, Image.Image):
        return min(value.size)
    if isinstance(value, np.ndarray):
        return int(min(value.shape[:2])) if value.ndim in (2, 3) and value.size else None
    try:
        with _open_image(Path(str(value)).expanduser(), "", None) as image:
            return min(image.size)
    except UnreadableInputError:
        return None


def _structure_is_whole(image: Image.Image, path: Path) -> bool:
    """Whether ``image``'s file was checked whole from its structure alone, without decoding its pixels:
    a truncated file (what a failed copy or a full disk leaves) fails this (``OSError``). False where its
    format cannot be checked so (JPEG, run-length BMP, ...): the caller decodes it instead.

    PNG: every chunk's checksum (PIL's ``verify``). GIF: the first frame's data blocks all present. WebP:
    the RIFF container as long as its header says. Uncompressed BMP (and any raw layout): the pixel rows
    within the file. TIFF: every strip or tile within the file.
    """
    if image.format == "PNG":
        image.verify()
        return True
    size = path.stat().st_size
    if image.format == "WEBP":
        with path.open("rb") as file:
            header = file.read(12)
        declared = int.from_bytes(header[4:8], "little") + 8 if header[:4] == b"RIFF" else None
        if declared is None or size < declared:
            raise OSError(f"truncated WebP file: {size} bytes of {declared}")
        return True
    if image.format == "TIFF":
        tags = image.tag_v2  # type: ignore[attr-defined]
        offsets, counts = tags.get(273) or tags.get(324), tags.get(279) or tags.get(325)
        if not offsets or not counts:
            return False
        end = max(offset + count for offset, count in zip(offsets, counts))
        if end > size:
            raise OSError(f"truncated TIFF file: its image data end at byte {end}, the file has {size}")
        return True
    if len(image.tile) != 1:
        return False
    tile = image.tile[0]
    if image.format == "GIF" and tile.codec_name == "gif":
        _check_gif_blocks(path, tile.offset)
        return True
    stride = tile.args[1] if tile.codec_name == "raw" and isinstance(tile.args, tuple) and len(tile.args) > 1 else 0
    if isinstance(stride, int) and stride > 0:
        end = tile.offset + stride * (tile.extents[3] - tile.extents[1])
        if end > size:
            raise OSError(f"truncated {image.format} file: its pixel rows end at byte {end}, the file has {size}")
        return True
    return False


def _check_gif_blocks(path: Path, offset: int) -> None:
    """The LZW data blocks of a GIF frame starting at ``offset`` all present up to their terminator (each
    block is a length byte, then that many bytes; a zero length ends them)."""
    with path.open("rb") as file:
        file.seek(offset)
        while True:
            length = file.read(1)
            if not length:
                raise OSError("truncated GIF file: its first frame's data end before their terminator")
            if length[0] == 0:
                return
            block = file.read(length[0])
            if len(block) < length[0]:
                raise OSError("truncated GIF file: its first frame's data end before their terminator")


def _image_from_array(array: np.ndarray, origin: str) -> Image.Image:
    def refuse(detail: str) -> UnreadableInputError:
        return UnreadableInputError(
            f"image array{origin} {detail}", UnreadableInputError.UNSUPPORTED, detail, f"(array, shape {array.shape})"
        )

    if array.ndim not in (2, 3) or array.size == 0 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise refuse(f"has shape {array.shape}; expected HxW or HxWxC with C in 1, 3, 4")
    if array.dtype == np.uint16:
        array = _grey_to_8_bits(array)  # by 16 bits' range, as a 16-bit file is read
    elif array.dtype != np.uint8:
        if (
            not np.issubdtype(array.dtype, np.floating)
            or not np.isfinite(array).all()
            or array.min() < 0
            or array.max() > 1
        ):
            raise refuse(
                f"has dtype {array.dtype} and range [{array.min()}, {array.max()}]; "
                "expected uint8, uint16, or float in [0, 1]"
            )
        array = np.round(array * 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return as_rgb(Image.fromarray(array))


# ---------------------------------------------------------------- tables, texts and folders


def is_existing_file(path: Path) -> bool:
    """Whether ``path`` is a file; False, not an error, for a name the system cannot even look up (a text
    too long for a file name, one with a NUL byte) that a table holds where a path was expected."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _looks_like_file(value: Any) -> str | None:
    """The modality of a value that looks like an image or audio file's path (None: it does not)."""
    if isinstance(value, Path) or (isinstance(value, str) and "\n" not in value and len(value) <= 4096):
        modality = file_modality(str(value).strip())
        return modality if modality in FILE_MODALITIES else None
    return None


def file_modality(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if lower.endswith(AUDIO_EXTENSIONS):
        return "audio"
    if lower.endswith(TEXT_EXTENSIONS):
        return "text"
    return None


def infer_modality(values: Sequence[Any], column: str) -> str:
    """The modality of an input column: image arrays, or else what most of its texts are (image paths,
    audio paths, or texts), with a warning when some values look like the other kind."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        raise DataError(f"column {column!r} holds no inputs: every cell is empty")
    first = present[0]
    if isinstance(first, (np.ndarray, Image.Image)):
        return "image"
    if not isinstance(first, (str, Path)):
        raise DataError(
            f"cannot tell the modality of column {column!r} from its first value {str(first)[:60]!r}; "
            "expected image paths or arrays, audio paths (wav, flac, aiff, mp3, ...) or texts"
        )
    kinds = Counter(_looks_like_file(v) or "text" for v in present if isinstance(v, (str, Path)))
    # by majority: one image path at the top of a column of texts (or the reverse) must not decide for all
    modality = max(kinds, key=lambda kind: (kinds[kind], kind == (_looks_like_file(first) or "text")))
    others = {kind: count for kind, count in kinds.items() if kind != modality}
    if others:
        other, count = max(others.items(), key=lambda item: item[1])
        example = next(v for v in present if isinstance(v, (str, Path)) and (_looks_like_file(v) or "text") == other)
        described = "texts" if other == "text" else f"{other} paths"
        logger.warning(
            "column %r holds %d of %d values that look like %s (first %r) among %s: read as %s; "
            "give --modality %s (modality=) if that is wrong",
            column,
            count,
            len(present),
            described,
            input_excerpt(example),
            "texts" if modality == "text" else f"{modality} paths",
            "texts" if modality == "text" else f"{modality} files",
            other,
        )
    return modality


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
            raise refuse(
                f"is not UTF-8 nor valid UTF-16 (it starts with a UTF-16 byte-order mark; byte {exc.start} "
                "is wrong); convert it to UTF-8"
            ) from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        if b"\x00" in raw:
            raise refuse(
                f"is not UTF-8 (byte {exc.start}) and holds NUL bytes: binary, not text; convert it to UTF-8"
            ) from None
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
        try:  # (newline="": a carriage return inside a cell is the cell's, as pandas reads it)
            records = [
                r for r in itertools.islice(csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter), 100) if r
            ]
        except csv.Error:  # e.g. a quote left open at the end of the sample
            continue
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


#: spreadsheet files no reader of ours reads, by extension -> what they are
UNREAD_SPREADSHEETS = {
    ".xls": "an Excel 97-2003 workbook",
    ".ods": "an OpenDocument spreadsheet",
    ".numbers": "an Apple Numbers document",
    ".xlsb": "a binary Excel workbook",
}


#: the attribute of a frame read by :func:`read_table` that holds each row's line number in its file
LINES_ATTR = "automl_tl_lines"


#: the attribute of a frame read from delimited text that says how it was read (for "column not found")
READ_AS_ATTR = "automl_tl_read_as"


_DELIMITER_NAMES = {",": "commas (,)", ";": "semicolons (;)", "\t": "tabs", "|": "bars (|)"}


def _csv_lines(text: str, delimiter: str, rows: int) -> list[int] | None:
    """The line of the file (the header is line 1) on which each of ``rows`` data records starts, as
    pandas reads them (blank lines skipped, a quoted cell may span lines); None if the two readers disagree."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    starts, end = [], 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if record:  # (a blank line is no record, for pandas either)
                starts.append(start)
    except csv.Error:
        return None
    starts = starts[1:]  # the header
    return starts if len(starts) == rows else None


def row_name(row: int, lines: Sequence[int] | None) -> str:
    """How a message names the data row ``row`` (counted from 0): by its line in the file when known
    ("line 7", the header being line 1), else by its position ("row 5")."""
    return f"line {lines[row]}" if lines is not None and 0 <= row < len(lines) else f"row {row}"


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
    if suffix in UNREAD_SPREADSHEETS:
        raise DataError(
            f"{path} is {UNREAD_SPREADSHEETS[suffix]}, which automl-tl does not read; save it as .xlsx "
            "or .csv (one header row, one example per row)"
        )
    kind = {
        ".parquet": "Parquet",
        ".jsonl": "JSON Lines",
        ".ndjson": "JSON Lines",
        ".xlsx": "Excel",
        ".xlsm": "Excel",
    }.get(suffix, "CSV")
    try:
        if kind == "Parquet":
            return pd.read_parquet(path)  # (no lines: messages count its rows from 0)
        if kind == "JSON Lines":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
            written = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
            frame.attrs[LINES_ATTR] = written if len(written) == len(frame) else None
            return frame
        if kind == "Excel":
            frame = pd.read_excel(path, sheet_name=0)
            frame.attrs[LINES_ATTR] = None  # (a sheet's rows are not lines; blank rows make its numbers unsure)
            return frame
        text, encoding = decode_text(path.read_bytes(), path)
        if encoding not in ("utf-8", "utf-16"):
            logger.warning(
                "%s is not UTF-8: read as %s (check its accented letters; save it as UTF-8 to be sure)", path, encoding
            )
        delimiter = "\t" if suffix == ".tsv" else _sniff_delimiter(text)
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, na_values=[""])
        lines = _csv_lines(text, delimiter, len(frame))
        read_as = f"read as delimited text in {encoding.upper()}, fields separated by {_DELIMITER_NAMES[delimiter]}"
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
    frame = frame.apply(_canonical_ints) if len(frame.columns) else frame
    frame.attrs[LINES_ATTR] = lines
    frame.attrs[READ_AS_ATTR] = read_as
    return frame


def read_text_file(path: Path) -> str:
    """The text of a text file (see :func:`decode_text`), refused if empty or not text."""
    return _read_text_file(path)[0]


def _read_text_file(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        kind = UnreadableInputError.NOT_FOUND if isinstance(exc, FileNotFoundError) else UnreadableInputError.UNREADABLE
        raise UnreadableInputError(
            f"cannot read text file {path}: {exc.strerror}", kind, exc.strerror or "", str(path)
        ) from None
    text, encoding = decode_text(raw, path)
    if not text.strip():
        raise UnreadableInputError(f"text file {path} is empty", UnreadableInputError.EMPTY, "empty text", str(path))
    return text, encoding


@dataclass(frozen=True)
class _Unreadable:
    """Stands in a table for an input that was read already and failed (a text file of a folder)."""

    error: UnreadableInputError


def read_text_files(files: Sequence[Path]) -> list[Any]:
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
        logger.warning(
            "%d text file(s) are not UTF-8 and were read as %s, first %s (save them as UTF-8 to be sure)",
            len(not_utf8),
            " or ".join(sorted({e for _, e in not_utf8})),
            not_utf8[0][0],
        )
    return texts


#: folder names that say "a split of the data", by the split they give
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


SPLIT_ORDER = ("train", "val", "test")


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden or system clutter, never data: ``.DS_Store``, macOS's
    ``._photo.png`` resource forks, ``.ipynb_checkpoints/``, ``.git/``, a zip's ``__MACOSX/``."""
    return name.startswith(".") or name == "__MACOSX"


def _files_below(folder: Path) -> tuple[list[Path], int]:
    """Every image, audio or text file below ``folder``, sorted, and how many hidden files (see
    :func:`is_hidden`, also every file inside a hidden folder) were left out."""
    found, hidden = [], 0
    for p in sorted(folder.rglob("*")):
        # A dangling symlink is kept: reading it then fails naming it, where skipping it would lose an example unsaid.
        if not (p.is_file() or (p.is_symlink() and not p.exists())):
            continue
        if any(is_hidden(part) for part in p.relative_to(folder).parts):
            hidden += 1
        elif file_modality(p.name) is not None:
            found.append(p)
    return found, hidden


def _supported_files(folder: Path) -> list[Path]:
    return _files_below(folder)[0]


def _holds_class_folders(folder: Path) -> bool:
    """A split folder (``train/``...) holds class folders and no data file of its own."""
    entries = [p for p in folder.iterdir() if not is_hidden(p.name)]
    return any(p.is_dir() for p in entries) and not any(
        p.is_file() and file_modality(p.name) is not None for p in entries
    )


@dataclass(frozen=True)
class FolderContents:
    """What :func:`read_folder_contents` found: the table, hidden files left out, and the split folders
    (``("train", "val", "test")`` or part of it, in that order; empty for a folder of class folders)."""

    frame: pd.DataFrame
    hidden: int
    splits: tuple[str, ...]


def read_folder_contents(path: Path) -> FolderContents:
    """The files of a folder of class folders, or of a folder laid out in split folders (``train/``,
    ``val/``, ``test/`` and their usual other names, :data:`SPLIT_FOLDERS`) each holding class folders; then
    the table has a ``split`` column. Hidden files and folders are left out and counted, with one warning."""
    top = sorted(p for p in path.iterdir() if p.is_dir() and not is_hidden(p.name))
    hidden = sum(1 for p in path.iterdir() if is_hidden(p.name) and p.is_file())
    hidden += sum(1 for p in path.iterdir() if is_hidden(p.name) and p.is_dir() for f in p.rglob("*") if f.is_file())
    split_dirs = [p for p in top if p.name.lower() in SPLIT_FOLDERS and _holds_class_folders(p)]
    if split_dirs:
        classes_beside = [p.name for p in top if p not in split_dirs]
        if classes_beside:
            raise DataError(
                f"folder {path} has the split folder(s) {', '.join(p.name for p in split_dirs)} (holding "
                f"class folders) beside class folders ({', '.join(classes_beside[:5])}); put every class "
                "folder inside the split folders, or the split folders' classes beside the others"
            )
        named = Counter(SPLIT_FOLDERS[p.name.lower()] for p in split_dirs)
        twice = [split for split, count in named.items() if count > 1]
        if twice:
            raise DataError(
                f"folder {path} has two {twice[0]} folders "
                f"({', '.join(p.name for p in split_dirs if SPLIT_FOLDERS[p.name.lower()] == twice[0])})"
                "; keep one"
            )
        if "train" not in named:
            raise DataError(
                f"folder {path} is laid out in split folders ({', '.join(p.name for p in split_dirs)}) "
                "but has no train folder to learn from; add train/ (with one folder per class)"
            )
        parts = sorted(split_dirs, key=lambda p: SPLIT_ORDER.index(SPLIT_FOLDERS[p.name.lower()]))
    else:
        parts = [path]
    files: list[tuple[Path, str, str]] = []
    for part in parts:
        split = SPLIT_FOLDERS[part.name.lower()] if split_dirs else ""
        class_dirs = sorted(p for p in part.iterdir() if p.is_dir())
        for class_dir in class_dirs:
            if is_hidden(class_dir.name):
                if part is not path:  # (the top level's hidden folders are counted above)
                    hidden += sum(1 for f in class_dir.rglob("*") if f.is_file())
                continue
            below, hidden_below = _files_below(class_dir)
            hidden += hidden_below
            files += [(file, class_dir.name, split) for file in below]
        if split_dirs:
            hidden += sum(1 for p in part.iterdir() if p.is_file() and is_hidden(p.name))
    if not any(p.is_dir() and not is_hidden(p.name) for part in parts for p in part.iterdir()):
        raise DataError(f"folder {path} has no class subfolders; expected one subfolder per class")
    if hidden:
        logger.warning(
            "left out %d hidden file(s) of %s (names starting with '.', such as .DS_Store or ._photo.png, "
            "and everything in hidden folders such as .ipynb_checkpoints/)",
            hidden,
            path,
        )
    if not files:
        raise DataError(
            f"folder {path} holds no image, audio or text files "
            f"({', '.join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS + TEXT_EXTENSIONS)})"
        )
    kinds = sorted({file_modality(file.name) for file, _, _ in files})
    if len(kinds) > 1:
        raise DataError(f"folder {path} mixes {' and '.join(kinds)} files; expected one kind")
    modality = kinds[0]
    column = FOLDER_COLUMNS[modality]
    inputs = read_text_files([f for f, _, _ in files]) if modality == "text" else [str(f) for f, _, _ in files]
    frame = pd.DataFrame({column: inputs, "label": [label for _, label, _ in files]})
    if split_dirs:
        frame["split"] = [split for _, _, split in files]
        logger.info(
            "folder %s is laid out in split folders (%s): used as given", path, ", ".join(f"{p.name}/" for p in parts)
        )
    return FolderContents(frame, hidden, tuple(SPLIT_FOLDERS[p.name.lower()] for p in parts) if split_dirs else ())


def read_folder(path: Path) -> pd.DataFrame:
    """A DataFrame (columns ``image``, ``audio`` or ``text``, and ``label``) from a folder with one subfolder per
    class, or laid out in split folders (then with a ``split`` column too: see :func:`read_folder_contents`).

    Text files are read into the ``text`` column (one that cannot be read stands there as a marker that
    :func:`check_input` refuses, naming it); image and audio files are listed by path. Hidden files and
    folders (:func:`is_hidden`) are left out, at every depth.
    """
    return read_folder_contents(path).frame


def list_input_files(path: Path) -> list[str]:
    """Every image, audio or text file below ``path``, sorted, hidden ones left out (for predicting on an
    unlabelled folder)."""
    files, hidden = _files_below(path)
    if hidden:
        logger.warning(
            "left out %d hidden file(s) of %s (names starting with '.', and hidden folders' files)", hidden, path
        )
    return [str(p) for p in files]


def resolve_paths(values: list[Any], base_dir: Path | None) -> list[Any]:
    """Make relative file paths absolute against ``base_dir`` (the folder of the CSV); a path starting with
    ``~`` is below the home folder (as a shell would read it)."""

    def resolved(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.startswith("~"):
            return str(Path(value).expanduser())
        return str(base_dir / value) if base_dir is not None and not Path(value).is_absolute() else value

    return [resolved(v) for v in values]


# ---------------------------------------------------------------- checking that an input can be read


def is_missing(value: Any) -> bool:
    """An empty cell: None, NaN, pandas' NA, or a text of nothing but spaces."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, str) and not value.strip()


def input_excerpt(value: Any, limit: int = 60) -> str:
    """What names an input in a table of skipped rows: its file, or the start of its text."""
    if isinstance(value, _Unreadable):
        return value.error.file
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return f"(array, shape {value.shape})"
    if is_missing(value):
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_input(
    value: Any,
    modality: str,
    origin: str = "",
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    decode: bool = True,
) -> None:
    """Raise :class:`~automl_tl.errors.UnreadableInputError` if ``value`` cannot be used as a ``modality`` input.

    Images: see :func:`check_image`; audio: read whole (silence and non-finite samples are refused),
    unless ``decode`` is false (the file's existence and extension only); texts: empty or not a string.
    ``origin`` (" (line 5 of data.csv)") is added where the value itself names nothing (arrays, texts).
    """
    if isinstance(value, _Unreadable):
        raise value.error
    if is_missing(value) and not isinstance(value, str):
        raise UnreadableInputError(f"{modality} input{origin} is empty", UnreadableInputError.EMPTY, "empty cell")
    if modality == "image":
        check_image(value, origin if not isinstance(value, str) else "", max_image_pixels, decode)
    elif modality == "audio":
        if not isinstance(value, (str, Path)):
            raise UnreadableInputError(
                f"audio input{origin} is a {type(value).__name__}; expected a file path",
                UnreadableInputError.UNSUPPORTED,
                f"a {type(value).__name__}, not a path",
            )
        if decode:
            read_audio(value)
        else:
            check_audio_path(Path(value))
    elif not isinstance(value, str) or not value.strip():
        detail = "empty text" if isinstance(value, str) else f"not a text but a {type(value).__name__}"
        raise UnreadableInputError(
            f"text input{origin} is empty or not a string: {str(value)[:40]!r}",
            UnreadableInputError.EMPTY if isinstance(value, str) else UnreadableInputError.UNSUPPORTED,
            detail,
        )


def find_unreadable(
    inputs: Sequence[Any],
    modality: str,
    origin: str,
    rows: Sequence[int] | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    lines: Sequence[int] | None = None,
) -> list[tuple[int, UnreadableInputError]]:
    """Every input that cannot be used, as (its position in ``inputs``, why), read once each.

    ``rows``: each input's row in the user's table (default: its position); ``lines``: each row's line in
    its file, which messages name it by when given (see :func:`row_name`).
    """
    rows = range(len(inputs)) if rows is None else rows
    found = []
    for position, (value, row) in enumerate(zip(inputs, rows)):
        try:
            check_input(value, modality, f" ({row_name(int(row), lines)} of {origin})", max_image_pixels)
        except UnreadableInputError as exc:
            found.append((position, exc))
    return found


def check_inputs_readable(
    inputs: Sequence[Any], modality: str, origin: str, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> None:
    """Read every input once so that a missing or broken file (or an empty text) is refused now, naming it."""
    unreadable = find_unreadable(inputs, modality, origin, max_image_pixels=max_image_pixels)
    if unreadable:
        raise unreadable[0][1]


# ---------------------------------------------------------------- sound files


#: a file whose every sample is quieter than this (full scale = 1.0, i.e. -80 dBFS) is refused as silent
SILENCE_THRESHOLD = 1e-4


def check_audio_path(path: Path) -> None:
    """Refuse (:class:`~automl_tl.errors.UnreadableInputError`) a missing file or an extension libsndfile
    does not read (:data:`~automl_tl.data.readers.AUDIO_EXTENSIONS`, case-insensitive), without reading the file."""
    if not is_existing_file(path):  # (False too for a text too long to be a file name)
        shown = input_excerpt(str(path), 200)
        raise UnreadableInputError(f"audio file not found: {shown}", UnreadableInputError.NOT_FOUND, "", shown)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        shown = path.suffix or "(no extension)"
        raise UnreadableInputError(
            f"unsupported audio format {shown!r} of {path}; expected one of {', '.join(AUDIO_EXTENSIONS)}",
            UnreadableInputError.UNSUPPORTED,
            f"{shown} is not an audio format libsndfile reads",
            str(path),
        )


def read_audio(path: str | Path, sample_rate: int | None = None) -> np.ndarray:
    """The samples of an audio file as float32 mono in [-1, 1], resampled to ``sample_rate`` if given.

    Channels are averaged. Raises :class:`~automl_tl.errors.UnreadableInputError` (a DataError), one line
    naming the file, for a missing file, an extension libsndfile does not read (see :func:`check_audio_path`),
    content soundfile cannot decode, no samples, non-finite samples, or silence (every sample below
    :data:`SILENCE_THRESHOLD`).
    """
    path = Path(path).expanduser()
    check_audio_path(path)

    def refuse(message: str, kind: str, detail: str) -> UnreadableInputError:
        return UnreadableInputError(message, kind, detail, str(path))

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError, OSError) as exc:
        raise refuse(
            f"cannot read audio file {path} (corrupt, or not the audio format its extension says): {first_line(exc)}",
            UnreadableInputError.UNREADABLE,
            first_line(exc),
        ) from None
    if samples.shape[0] == 0 or samples.shape[1] == 0:
        raise refuse(f"audio file {path} is empty (0 samples)", UnreadableInputError.EMPTY, "0 samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise refuse(
            f"audio file {path} holds non-finite samples (NaN or infinity)",
            UnreadableInputError.NOT_FINITE,
            "NaN or infinite samples",
        )
    peak = float(np.abs(mono).max())
    if peak < SILENCE_THRESHOLD:
        raise refuse(
            f"audio file {path} is silent (peak amplitude {peak:.1e} < {SILENCE_THRESHOLD:g})",
            UnreadableInputError.SILENT,
            f"peak amplitude {peak:.1e} < {SILENCE_THRESHOLD:g}",
        )
    if sample_rate is not None and rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``samples`` resampled from ``from_rate`` to ``to_rate`` Hz with a polyphase filter (anti-aliased)."""
    if from_rate == to_rate:
        return samples
    from scipy.signal import resample_poly  # here: scipy.signal takes over a second to import, for audio alone

    common = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(samples, int(to_rate) // common, int(from_rate) // common).astype(np.float32)
