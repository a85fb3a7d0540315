"""Shared fixtures: small real data (scikit-learn's digits) and a clean plugin registry."""

from __future__ import annotations

import os
import tempfile

import pandas as pd
import pytest

from automl_tl.registry import reset_registry

# Tests must never reach a model hub; the offline weights come from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Cached features go to a folder of this test session, never into the user's cache.
os.environ["AUTOML_TL_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="automl_tl-features-")


@pytest.fixture(scope="session")
def digits_frame() -> pd.DataFrame:
    """240 real handwritten digits (24 per class) as uint8 8x8 arrays."""
    from automl_tl_datasets import load_digits

    frame = load_digits()
    return frame.groupby("label", group_keys=False).head(24).reset_index(drop=True)


@pytest.fixture(scope="session")
def digits_bundle(digits_frame):
    from automl_tl.data import prepare_dataset

    return prepare_dataset(digits_frame, label_column="label", input_column="image", seed=0)


@pytest.fixture
def clean_registry():
    """Forget the cached registry before and after a test that registers plugins by hand."""
    reset_registry()
    yield
    reset_registry()
