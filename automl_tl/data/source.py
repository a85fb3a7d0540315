"""Where a data set came from, recorded so that it can be read and split again exactly as before.

A study stores its data's source (a file, a folder or a registered data set; never the data themselves) so that
a worker on another machine, or a resumed search, rebuilds the same bundle; the fingerprint then proves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automl_tl.data.bundle import DatasetBundle, prepare_dataset
from automl_tl.options import DEFAULT_MAX_BAD_FRACTION, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_ON_BAD_INPUT
from automl_tl.registry import get_registry

#: the keys of a data source: how ``prepare_dataset`` was called, with ``data`` an absolute path
#: or ``dataset`` a registered data set's name
DATA_SOURCE_KEYS = (
    "data",
    "dataset",
    "label",
    "input_column",
    "seed",
    "max_samples",
    "modality",
    "val_fraction",
    "test_fraction",
    "shots",
    "on_bad_input",
    "max_bad_fraction",
    "max_image_pixels",
    "group_column",
)
#: prepare_dataset's split fractions, for data sources stored before they were recorded
DEFAULT_FRACTIONS = {"val_fraction": 0.15, "test_fraction": 0.15}
#: the bad-row policy, which decides what rows a worker keeps, and its defaults (for sources stored before it)
BAD_INPUT_DEFAULTS = {
    "on_bad_input": DEFAULT_ON_BAD_INPUT,
    "max_bad_fraction": DEFAULT_MAX_BAD_FRACTION,
    "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS,
}


def data_source(
    data: str | Path | None = None,
    dataset: str | None = None,
    label: str = "label",
    input_column: str | None = None,
    seed: int = 0,
    max_samples: int | None = None,
    modality: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    shots: int | None = None,
    on_bad_input: str = DEFAULT_ON_BAD_INPUT,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    group_column: str | None = None,
) -> dict[str, Any]:
    """How to load a data set again in another process: a file or folder (made absolute), or a registered name."""
    if (data is None) == (dataset is None):
        raise ValueError("a data source is either a path or a registered data set's name")
    return {
        "data": None if data is None else str(Path(data).expanduser().resolve()),
        "dataset": dataset,
        "label": label,
        "input_column": input_column,
        "seed": seed,
        "max_samples": max_samples,
        "modality": modality,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "shots": shots,
        "on_bad_input": on_bad_input,
        "max_bad_fraction": max_bad_fraction,
        "max_image_pixels": max_image_pixels,
        "group_column": group_column,
    }


def load_data_source(source: dict[str, Any]) -> DatasetBundle:
    """The data set a :func:`data_source` describes, prepared (split) exactly as its maker did."""
    if source.get("dataset"):
        dataset = get_registry().get_dataset(source["dataset"])
        data, label, input_column = dataset.load(), dataset.label_column, dataset.input_column
    else:
        data, label, input_column = source["data"], source.get("label", "label"), source.get("input_column")
    return prepare_dataset(
        data,
        label_column=label,
        input_column=input_column,
        seed=source.get("seed", 0),
        max_samples=source.get("max_samples"),
        modality=source.get("modality"),
        shots=source.get("shots"),
        group_column=source.get("group_column"),
        **{key: source.get(key, value) for key, value in DEFAULT_FRACTIONS.items()},
        **{key: source.get(key, value) for key, value in BAD_INPUT_DEFAULTS.items()},
    )
