"""Shared fixtures: small real data (scikit-learn's digits) and a clean plugin registry."""

from __future__ import annotations

import os
import shutil
import tempfile

import pandas as pd
import pytest

from automl_tl.registry import reset_registry

# Tests must never reach a model hub; the offline weights come from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Cached features go to a folder of this test session, never into the user's cache.
os.environ["AUTOML_TL_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="automl_tl-features-")


QUICK_BENCHMARKS = "tests/test_benchmarks_quick.py"


def pytest_collection_modifyitems(session, config, items):
    """The benchmarks' quick runs last: they run in the background meanwhile (see pytest_collection_finish)."""
    items.sort(key=lambda item: item.nodeid.startswith(QUICK_BENCHMARKS))  # (a stable sort: the order otherwise)


def pytest_collection_finish(session):
    """Start the benchmarks' quick runs in the background, at the lowest CPU priority, when their tests are
    selected and a PostgreSQL server is named (as .ci/run names one): they take the time the other tests leave
    idle, and their tests, run last, collect them (tests/test_benchmarks_quick.py, QuickRuns)."""
    selected = any(item.nodeid.startswith(QUICK_BENCHMARKS) for item in session.items)
    if not selected or not os.environ.get("AUTOML_TL_TEST_POSTGRES"):
        return
    from pathlib import Path

    import test_benchmarks_quick as quick

    root = Path(tempfile.mkdtemp(prefix="automl_tl-quick-"))
    quick.BACKGROUND.append(quick.QuickRuns(root, os.environ["AUTOML_TL_TEST_POSTGRES"], low_priority=True))
    session.config.stash[_QUICK_ROOT] = root


_QUICK_ROOT = pytest.StashKey()


def pytest_sessionfinish(session, exitstatus):
    """Remove this session's feature cache (left behind, every test run would leave megabytes in /tmp) and the
    background quick runs' folder."""
    shutil.rmtree(os.environ["AUTOML_TL_FEATURE_CACHE"], ignore_errors=True)
    root = session.config.stash.get(_QUICK_ROOT, None)
    if root is not None:
        import test_benchmarks_quick as quick

        for runs in quick.BACKGROUND:
            runs.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_frame() -> pd.DataFrame:
    """240 real handwritten digits (24 per class) as uint8 8x8 arrays."""
    from automl_tl_datasets import load_digits

    frame = load_digits()
    return frame.groupby("label", group_keys=False).head(24).reset_index(drop=True)


@pytest.fixture(scope="session")
def digits_bundle(digits_frame):
    from automl_tl.data.bundle import prepare_dataset

    return prepare_dataset(digits_frame, label_column="label", input_column="image", seed=0)


@pytest.fixture
def clean_registry():
    """Forget the cached registry before and after a test that registers plugins by hand."""
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 for this test session (started by tests/postgres.sh).

    ``AUTOML_TL_TEST_POSTGRES`` names a server to use instead. Without PostgreSQL installed the
    tests that need it are skipped, except in CI (``CI=true``), where that is a failure.
    """
    import socket
    import subprocess
    from pathlib import Path

    if os.environ.get("AUTOML_TL_TEST_POSTGRES"):
        yield os.environ["AUTOML_TL_TEST_POSTGRES"]
        return
    script = Path(__file__).with_name("postgres.sh")
    with socket.socket() as probe:  # a free port on the loopback address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tempfile.mkdtemp(prefix="automl_tl-postgres-")
    os.chmod(state, 0o755)
    started = subprocess.run(["bash", str(script), "start", state, str(port)], capture_output=True, text=True)
    if started.returncode != 0:
        message = f"no PostgreSQL server: {started.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", state], capture_output=True)


@pytest.fixture(scope="session")
def ray_address():
    """A real Ray head for this test session (started by tests/ray_head.sh), as ``ray.init`` takes its address.

    ``AUTOML_TL_TEST_RAY`` names a running head instead (.ci/run starts one). Without Ray installed the tests
    that need it are skipped, except in CI (``CI=true``), where that is a failure.
    """
    import subprocess
    from pathlib import Path

    if os.environ.get("AUTOML_TL_TEST_RAY"):
        yield os.environ["AUTOML_TL_TEST_RAY"]
        return
    script = Path(__file__).with_name("ray_head.sh")
    state = tempfile.mkdtemp(prefix="automl_tl-ray-")
    started = subprocess.run(["bash", str(script), "start", state, "63795"], capture_output=True, text=True)
    if started.returncode != 0 or not started.stdout.strip():
        message = f"no Ray head: {started.stderr.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", state], capture_output=True)
