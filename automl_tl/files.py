"""Files written so that nobody sees half of one: atomic writes with the usual permissions, one
inter-process lock for what several workers on one machine may write at once, and JSON read back with a
message that names the file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from automl_tl.errors import AutomlTLError


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block; every process
    on this machine that locks the same path waits its turn."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: readers (and a
    process killed mid-write) see the old file or the new one, never half of one."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """:func:`write_text_atomic` for bytes (figures, archives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, suffix=".tmp", delete=False) as file:
        file.write(data)
        temp = Path(file.name)
    with_usual_permissions(temp)
    os.replace(temp, path)


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def with_usual_permissions(path: Path) -> Path:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have (the umask's), not the private
    0600 / 0700 that ``tempfile`` uses: results are files a team shares and serves."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is absent; :class:`~automl_tl.errors.AutomlTLError`
    naming the file when it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutomlTLError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AutomlTLError(f"{path} holds a {type(value).__name__}; expected a JSON object")
    return value
