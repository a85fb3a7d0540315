"""What the command-line tests share: small real files, the CLI run in this process, the checks of a refusal,
and the CLI run in an interpreter of its own to see what it imports.

Imported by the test modules (pytest puts ``tests/`` on the path); no test lives here.
"""

from __future__ import annotations

import array
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: how every refusal of the command line starts (see automl_tl.cli)
PREFIX = "automl-tl: error:"
#: flags that keep a search tiny: one linear probe of one small backbone on 32-pixel images
TINY_SEARCH = [
    "--backbones",
    "mobilenetv2_100",
    "--image-size",
    "32",
    "--trials",
    "1",
    "--max-epochs",
    "1",
    "--no-prerank",
    "--strategies",
    "linear_probe",
    "--heads",
    "linear",
]


#: what listing backbones or reading ``--help`` must not pay for: seconds and hundreds of megabytes each
HEAVY_MODULES = ("torch", "optuna", "timm", "transformers")


def heavy_imports(*argv: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``python -X importtime -m automl_tl.cli ARGV`` in a fresh interpreter (environment ``env``, default this
    one's): the finished process, and which of :data:`HEAVY_MODULES` it imported, in import order."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "automl_tl.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    # -X importtime writes "import time: self [us] | cumulative | module" to stderr, one line per module imported
    imported = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    return done, [name for name in dict.fromkeys(imported) if name in HEAVY_MODULES]


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    """A small random RGB PNG (random pixels: every seed gives another file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def image_folder(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """root/<class>/<i>.png, ``counts[class]`` distinct images per class; by default 2 classes x 4 images."""
    for name, count in (counts or {"cat": 4, "dog": 4}).items():
        for i in range(count):
            write_png(root / name / f"{i}.png", seed=seed)
            seed += 1
    return root


def run_main(argv: list, capsys) -> tuple[int, str]:
    """``automl_tl.cli.main`` in this process: exit status and stderr (argparse exits by SystemExit)."""
    from automl_tl.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def error_line(code: int, stderr: str) -> str:
    """The one error line of a refused command; checks status 2 and that nothing else went wrong."""
    assert "Traceback" not in stderr, stderr
    assert code == 2, f"exit status {code}, stderr:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1, f"expected one '{PREFIX}' line, stderr:\n{stderr}"
    assert lines[-1] == errors[0], f"the error must be the last thing on stderr:\n{stderr}"
    return errors[0]


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10  # linux/fs.h


def _set_immutable(directory: Path, on: bool) -> None:
    """``chattr +i`` / ``-i``: an immutable directory refuses new entries even to root."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        wanted = flags[0] | FS_IMMUTABLE_FL if on else flags[0] & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("i", [wanted]))
    finally:
        os.close(fd)


@contextmanager
def read_only_directory(directory: Path) -> Iterator[Path]:
    """``directory``, made read-only for whoever runs the tests, and writable again afterwards.

    chmod 0o500 stops an ordinary user but not root (CI runs as root), whose CAP_DAC_OVERRIDE ignores
    permission bits; for root the directory gets the immutable attribute instead, which stops root
    too. Skips the test where neither mechanism takes effect (a file system without the attribute).
    """
    directory.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    try:
        _set_immutable(directory, True) if as_root else directory.chmod(0o500)
    except OSError as exc:
        pytest.skip(f"cannot make {directory} read-only ({exc.strerror})")
    try:
        try:
            (directory / ".probe").mkdir()
        except OSError:
            pass
        else:
            pytest.skip(f"{directory} stays writable for this user")
        yield directory
    finally:
        _set_immutable(directory, False) if as_root else directory.chmod(0o700)
        shutil.rmtree(directory / ".probe", ignore_errors=True)
