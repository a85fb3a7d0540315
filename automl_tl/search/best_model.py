"""The best model a run directory keeps: how trials are ranked, and how a model made elsewhere is put in place.

Every process that runs trials compares its trial with ``RUN_DIR/best_model`` under one lock and replaces it
only with a better one (:meth:`automl_tl.search.study.Search._keep_if_best`). Trials on a Ray cluster run
where the run directory may not be: their worker sends the files of a model that beats the driver's best
(:func:`model_files`), and the driver puts them in place (:func:`install_model_files`), so that one best
model exists even without a shared file system.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from automl_tl.errors import AutomlTLError
from automl_tl.files import exclusive_lock, with_usual_permissions, write_bytes_atomic
from automl_tl.layout import BEST_MODEL_DIR, BEST_MODEL_LOCK, CONFIG_FILE, TRIAL_PREDICTIONS_DIR, WEIGHTS_FILE
from automl_tl.results.model_io import repair_interrupted_save, replace_directory

#: a trial's validation rank: (score, minus its validation loss, minus its number); higher is better
RankKey = tuple[float, float, int]

#: what a best-model folder that a worker sends may hold (nothing else is written)
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE)


def rank_key(score: float, val_loss: float | None, trial: int) -> RankKey:
    """How trials are compared: the score (higher is better), then the lower validation loss, then the earlier
    trial (a NaN loss, from models saved before losses were kept, counts as the worst)."""
    loss = math.inf if val_loss is None or math.isnan(val_loss) else val_loss
    return (score, -loss, -trial)


def saved_best_config(run_dir: Path) -> dict[str, Any] | None:
    """The config of the model in ``run_dir/best_model``, if there is one."""
    path = Path(run_dir) / BEST_MODEL_DIR / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def saved_best_accuracy(run_dir: Path) -> float | None:
    """Validation accuracy of the model in ``run_dir/best_model``, if there is one."""
    config = saved_best_config(run_dir)
    return None if config is None else config.get("val_accuracy")


def config_rank_key(config: dict[str, Any]) -> RankKey:
    """The rank key of a saved model's config (see :func:`rank_key`)."""
    score = config.get("val_score", config.get("val_accuracy"))  # models saved before scores were kept
    return rank_key(score, config.get("val_loss"), config.get("trial", -1))


def saved_best(run_dir: Path) -> RankKey | None:
    """The rank key of the model in ``run_dir/best_model``, if there is one."""
    config = saved_best_config(run_dir)
    return None if config is None else config_rank_key(config)


def model_files(run_dir: Path) -> dict[str, bytes]:
    """The files of ``run_dir/best_model`` (weights and config), to send to the process that keeps the best."""
    folder = Path(run_dir) / BEST_MODEL_DIR
    return {name: (folder / name).read_bytes() for name in MODEL_FILES}


def install_model_files(run_dir: Path, files: dict[str, bytes]) -> bool:
    """Make ``files`` (from :func:`model_files`) ``run_dir/best_model`` if they rank above the model there;
    returns whether they did. Under the best-model lock, and atomic like every save."""
    if set(files) != set(MODEL_FILES):
        raise AutomlTLError(f"a model sent by a worker holds {sorted(files)}, not {sorted(MODEL_FILES)}")
    key = config_rank_key(json.loads(files[CONFIG_FILE]))
    run_dir = Path(run_dir)
    directory = run_dir / BEST_MODEL_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run_dir / BEST_MODEL_LOCK):
        repair_interrupted_save(directory)
        saved = saved_best(run_dir)
        if saved is not None and saved >= key:
            return False
        staging = with_usual_permissions(Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=run_dir)))
        for name, data in files.items():
            write_bytes_atomic(staging / name, data)
        replace_directory(staging, directory)
    return True


def trial_prediction_files(run_dir: Path, names: set[str] | frozenset[str] = frozenset()) -> dict[str, bytes]:
    """The files of ``run_dir/trial_predictions`` (what the ensemble is chosen from) not among ``names``."""
    folder = Path(run_dir) / TRIAL_PREDICTIONS_DIR
    if not folder.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(folder.glob("trial_*.npy")) if path.name not in names}


def install_trial_predictions(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write trial prediction files (from :func:`trial_prediction_files`) into ``run_dir/trial_predictions``."""
    folder = Path(run_dir) / TRIAL_PREDICTIONS_DIR
    for name, data in files.items():
        if Path(name).name != name or not name.startswith("trial_") or not name.endswith(".npy"):
            raise AutomlTLError(f"a worker sent trial predictions named {name!r}, not trial_NNNNN.npy")
        write_bytes_atomic(folder / name, data)
