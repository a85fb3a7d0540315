"""Helpers shared by the benchmark scripts: the command line, the machine, and how busy it was."""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from automl_tl import DatasetBundle, Executor, InputOptions
from automl_tl.registry import get_registry


def command_line() -> str:
    """The command that is running, as it could be typed again."""
    return shlex.join([sys.executable, *sys.argv])


def machine_line(device: torch.device | str) -> str:
    return (f"machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {device}")


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


class OtherLoad:
    """Share of the machine's CPUs that *other* processes used between ``start()`` and ``stop()``.

    On a machine with few cores, a second busy process slows PyTorch's threads several-fold,
    so a benchmark reports this next to its timings. ``None`` where ``/proc/stat`` is missing.
    """

    def __init__(self):
        self.share: float | None = None

    def start(self) -> "OtherLoad":
        self._busy, self._own, self._wall = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def stop(self) -> float | None:
        busy = _busy_cpu_seconds()
        wall = time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        other = (busy - self._busy) - (time.process_time() - self._own)
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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("optuna", "timm", "PIL", "urllib3", "filelock", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def clear_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse an earlier search (it would be resumed, not timed) unless told to delete it."""
    if run_dir.exists():
        if not overwrite:
            sys.exit(f"{run_dir} holds an earlier search, which would be resumed rather than timed; "
                     "pass --overwrite to delete it, or choose another --output")
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
