"""Loading what a search kept, whichever it is: its ensemble when one was kept, else its best model."""

from __future__ import annotations

from pathlib import Path

import torch

from automl_tl.errors import AutomlTLError
from automl_tl.layout import ENSEMBLE_DIR
from automl_tl.results.ensemble import is_ensemble_dir, load_ensemble_dir
from automl_tl.results.model_io import Predictor, load_model_dir, model_dir_of


def kept_model_dir(run_dir: Path) -> Path:
    """The folder :func:`load` reads: ``RUN_DIR/ensemble_model`` when the search kept an ensemble, else
    ``RUN_DIR/best_model``; a model or ensemble folder given directly is itself."""
    run_dir = Path(run_dir)
    if is_ensemble_dir(run_dir / ENSEMBLE_DIR):
        return run_dir / ENSEMBLE_DIR
    return model_dir_of(run_dir)


def load_kept_model(directory: Path, device: torch.device | str | None = None) -> Predictor:
    """A model folder or an ensemble folder, loaded (see :func:`kept_model_dir`)."""
    directory = Path(directory)
    if is_ensemble_dir(directory):
        return load_ensemble_dir(directory, device)
    return load_model_dir(directory, device)


def load(run_dir: str | Path, device: torch.device | str | None = None) -> Predictor:
    """What a search kept (``RUN_DIR/ensemble_model`` if it kept an ensemble, else ``RUN_DIR/best_model``),
    or a model or ensemble folder itself, ready to predict."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AutomlTLError(f"run directory not found: {run_dir}")
    return load_kept_model(kept_model_dir(run_dir), device)
