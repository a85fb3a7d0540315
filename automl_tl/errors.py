"""Typed errors. Every user mistake raises a subclass of :class:`AutomlTLError`,
whose message is one line that names the file, column or value at fault and what
was expected; the CLI prints that line and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message (its type's name if it has none), cut to ``limit`` characters:
    how another library's error is quoted inside one of our one-line messages."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class AutomlTLError(Exception):
    """Base class for errors caused by the user's input or environment."""


class DataError(AutomlTLError):
    """The data given (file, folder, column, labels) cannot be used as it is."""


class EmptyInputError(DataError, ValueError):
    """Nothing to predict on: an empty list, array or DataFrame, or a table of a header alone.

    Also a ValueError, which is what scikit-learn raises for an input of 0 samples.
    """


class UnknownBackboneError(AutomlTLError):
    """A backbone name (or pattern) matches nothing registered."""

    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(known) or 'none'}"
        super().__init__(f"unknown backbone {name!r}{hint}")
        self.name = name
        self.close_matches = close


class PluginError(AutomlTLError):
    """A plugin failed to import, or registered something twice."""


class WeightsNotFoundError(AutomlTLError):
    """Pretrained weights for a backbone are not installed where we look for them."""


class ModelFileError(AutomlTLError):
    """A saved model directory is missing a file or does not match its config."""


class ConfigError(AutomlTLError):
    """An option has a value outside what it accepts."""


class WeightsMismatchError(AutomlTLError, RuntimeError):
    """A weight file cannot be read, or its tensors do not fit the network (missing, unexpected, mis-shaped keys).

    Also a RuntimeError, which is what ``torch.nn.Module.load_state_dict`` raises.
    """


class UnreadableInputError(DataError):
    """One input (an image, audio or text file, an array, a text) cannot be used as it is.

    Its message is the usual one line naming the file; ``kind`` (one of the constants below) says what is
    wrong in a word or two, and ``detail`` says it without the file's name, for tables of skipped rows
    (``RUN_DIR/skipped.csv``) where the file has a column of its own. Under the bad-input policy "skip"
    (:func:`automl_tl.data.bundle.prepare_dataset`) such an input is skipped and reported, not fatal.
    """

    NOT_FOUND = "file not found"
    UNREADABLE = "corrupt or truncated"
    TOO_LARGE = "too large"
    UNSUPPORTED = "unsupported format"
    EMPTY = "empty"
    SILENT = "silent"
    NOT_FINITE = "non-finite values"
    #: every kind, in the order reports list them
    KINDS = (NOT_FOUND, UNREADABLE, TOO_LARGE, UNSUPPORTED, EMPTY, SILENT, NOT_FINITE)

    def __init__(self, message: str, kind: str, detail: str, file: str = ""):
        super().__init__(message)
        self.kind, self.detail, self.file = kind, detail, file

    @property
    def reason(self) -> str:
        """``kind: detail`` (or the kind alone when the detail says nothing more)."""
        return self.kind if not self.detail or self.detail == self.kind else f"{self.kind}: {self.detail}"
