"""Benchmarks that run: every script in ``benchmarks/`` with ``--quick``, as a user would start it.

Each ``--quick`` run is the script's own code path on tiny sizes and data that needs no extra package (the
built-in digits, the BBC News package of the zoo, espeak-ng's spoken digits), so a benchmark that rots
against the engine fails here. The scripts are found by listing the folder: a new benchmark without
``--quick`` fails too (argparse refuses the option). And a data set whose Debian package is missing ends in
one line saying what to install, exit status 2, never in a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_"))
#: a Markdown table: a header row, then the row of dashes under it
TABLE = re.compile(r"^\|.+\|\n\|[-:| ]+\|$", re.MULTILINE)
#: what the quick runs may take at most together, on 2 busy cores (some start interpreters of their own)
LIMIT_SECONDS = 1500
#: the interpreters the quick runs are shared among, run at once (see QuickRuns)
DRIVERS = 2


def run_script(script: Path, *args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` in ``cwd`` (where the scripts' relative default outputs then land); ``prelude`` is
    Python run first in the same interpreter (to hide a data set from it)."""
    command = [sys.executable, str(script), *args]
    if prelude:
        # runpy runs the script as __main__, exactly as 'python SCRIPT' does, after the prelude
        command = [
            sys.executable,
            "-c",
            f"{prelude}\nimport runpy, sys\nsys.argv = {[str(script), *args]!r}\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')",
        ]
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=LIMIT_SECONDS,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_every_benchmark_is_found():
    """The parametrisation below is over the folder's scripts; an empty or renamed folder must not pass."""
    names = {path.stem for path in SCRIPTS}
    assert {"executor_throughput", "fashion_mnist_search", "hands_off", "workers_throughput"} <= names
    assert len(SCRIPTS) >= 13


#: runs each script as ``python SCRIPT ARGS`` would (``runpy``, as ``__main__``, with its own ``sys.argv``, working
#: folder and standard streams at the file-descriptor level), one after another in one interpreter: torch, timm
#: and transformers are imported once for all of them instead of once per script
DRIVER = """
import json, os, runpy, sys, time
plan = json.loads(sys.argv[1])
results = {}
for run in plan:
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(run["stdout"], "w") as out, open(run["stderr"], "w") as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        os.chdir(run["cwd"])
        sys.argv = [run["script"], *run["args"]]
        started, code = time.monotonic(), 0
        try:
            runpy.run_path(run["script"], run_name="__main__")
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    os.close(saved[0]); os.close(saved[1])
    results[run["script"]] = {"code": code, "seconds": round(time.monotonic() - started, 1)}
print(json.dumps(results))
"""


class QuickRuns:
    """Every script's ``--quick`` run under ``root``, shared among :data:`DRIVERS` interpreters run at once (see
    :data:`DRIVER`): most of a quick run is starting interpreters, writing files and waiting on subprocesses, so
    one core each, and with ``low_priority`` (started in the background while the other tests run, see
    ``conftest.py``) at the lowest CPU priority: they take the time those tests leave idle."""

    def __init__(self, root: Path, postgres_url: str, low_priority: bool = False):
        self.plan = []
        for script in SCRIPTS:
            args = ["--quick"]
            if script.stem == "workers_throughput":  # its PostgreSQL row needs a real server
                args += ["--postgres", postgres_url]
            if script.stem == "audio_search" and shutil.which("espeak-ng") is None:
                continue  # skipped below
            cwd = root / script.stem  # where the scripts' relative default outputs land
            cwd.mkdir(parents=True)
            self.plan.append(
                {
                    "script": str(script),
                    "args": args,
                    "cwd": str(cwd),
                    "stdout": str(cwd / "stdout.txt"),
                    "stderr": str(cwd / "stderr.txt"),
                }
            )
        self.started = time.monotonic()
        self.drivers = []
        for half in range(DRIVERS):
            out, err = root / f"driver-{half}.out", root / f"driver-{half}.err"
            with out.open("w") as stdout, err.open("w") as stderr:  # (files: a full pipe would block a driver)
                process = subprocess.Popen(
                    [sys.executable, "-c", DRIVER, json.dumps(self.plan[half::DRIVERS])],
                    stdout=stdout,
                    stderr=stderr,
                    env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                    cwd=root,
                    preexec_fn=(lambda: os.nice(19)) if low_priority else None,
                )
            self.drivers.append((process, out, err))

    def results(self) -> dict[str, dict]:
        """Each script's exit status, seconds, stdout and stderr, once every driver has finished."""
        results: dict[str, dict] = {}
        for process, out, err in self.drivers:
            try:
                process.wait(timeout=max(LIMIT_SECONDS - (time.monotonic() - self.started), 1.0))
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            assert process.returncode == 0, err.read_text()[-4000:]
            results.update(json.loads(out.read_text().strip().splitlines()[-1]))
        for run in self.plan:
            stdout, stderr = Path(run["stdout"]).read_text(), Path(run["stderr"]).read_text()
            results[run["script"]].update(stdout=stdout, stderr=stderr)
        return results

    def stop(self) -> None:
        for process, _, _ in self.drivers:
            if process.poll() is None:
                process.kill()
                process.wait()


#: the quick runs started in the background when collection finished (conftest.py), if they were
BACKGROUND: list[QuickRuns] = []


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, dict]:
    """Every script's ``--quick`` run (exit status, stdout, stderr): those started in the background, else now."""
    runs = (
        BACKGROUND[0]
        if BACKGROUND
        else QuickRuns(tmp_path_factory.mktemp("quick"), request.getfixturevalue("postgres_url"))
    )
    try:
        return runs.results()
    finally:
        runs.stop()


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_benchmark_quick_run_prints_its_table(script: Path, quick_runs: dict[str, dict]):
    if script.stem == "audio_search" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (./setup.sh installs it as root); the spoken digits need it")
    result = quick_runs[str(script)]

    # (stderr may hold Optuna's own warnings, with the traceback of a trial that failed by design: not checked)
    assert result["code"] == 0, f"{script.name} --quick exited with {result['code']}:\n{result['stderr'][-4000:]}"
    # the table, headed by the command line that produced it
    assert re.search(rf"^command: .*{re.escape(script.name)} --quick", result["stdout"], re.MULTILINE), result["stdout"]
    assert TABLE.search(result["stdout"]), f"no Markdown table in the output of {script.name}:\n{result['stdout']}"


def test_missing_debian_data_set_is_one_line_naming_the_package(tmp_path: Path):
    """Fashion-MNIST hidden (as on a machine without dataset-fashion-mnist): one line on stderr, exit status 2."""
    hide = "import pathlib, automl_tl_datasets\nautoml_tl_datasets.FASHION_MNIST_DIR = pathlib.Path('/nonexistent')"
    result = run_script(
        BENCHMARKS / "fashion_mnist_search.py", "--output", str(tmp_path / "out"), cwd=tmp_path, prelude=hide
    )

    assert result.returncode == 2, result.stderr[-4000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "apt-get install dataset-fashion-mnist" in lines[0] and "./setup.sh --benchmarks" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("dataset", "module", "attribute", "package"),
    [
        ("fashion-mnist", "automl_tl_datasets", "FASHION_MNIST_DIR", "dataset-fashion-mnist"),
        ("asterisk-languages", "automl_tl_datasets.audio", "ASTERISK_DIR", "asterisk-core-sounds-ru-wav"),
    ],
)
def test_require_data_names_the_debian_packages(
    dataset: str, module: str, attribute: str, package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import importlib

    from automl_tl.errors import DataError

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _common import require_data

    monkeypatch.setattr(importlib.import_module(module), attribute, tmp_path / "absent")
    with pytest.raises(DataError, match=re.escape(package)) as raised:
        require_data(dataset)
    assert "\n" not in str(raised.value) and "sudo ./setup.sh --benchmarks" in str(raised.value)
    require_data("digits", "bbc-news")  # no Debian package: nothing to check, nothing refused


def test_setup_benchmarks_installs_the_packages_the_benchmarks_name(monkeypatch: pytest.MonkeyPatch):
    """``./setup.sh --benchmarks`` apt-installs exactly the Debian data packages that ``require_data`` asks for."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _common import DEBIAN_DATA

    setup = (BENCHMARKS.parent / "setup.sh").read_text()
    listed = re.search(r"BENCHMARK_PACKAGES=\(([^)]*)\)", setup)
    assert listed, "setup.sh lists no BENCHMARK_PACKAGES"
    assert sorted(listed.group(1).split()) == sorted(p for packages in DEBIAN_DATA.values() for p in packages)


def test_setup_refuses_an_unknown_option_at_once():
    """A misspelt ``--benchmarks`` stops setup.sh before it installs anything (it would take minutes), saying
    what the option is called."""
    result = subprocess.run(
        ["bash", str(BENCHMARKS.parent / "setup.sh"), "--benchmark"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--benchmarks" in result.stderr
    assert result.stdout == ""
