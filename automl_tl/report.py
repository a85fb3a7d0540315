"""What a person reads after a search: the leaderboard (CSV and Markdown) and a JSON summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from automl_tl.model_io import write_json_atomic

LEADERBOARD_COLUMNS = ["trial", "state", "backbone", "freeze_depth", "backbone_lr", "head_lr",
                       "val_accuracy", "best_epoch", "epochs_run", "stop_reason", "seconds", "cpu_seconds", "error"]


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, best validation accuracy first (trials without one last)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else attrs.get("best_val_accuracy")
        rows.append({
            "trial": trial.number,
            "state": trial.state.name,
            **{name: trial.params.get(name) for name in ("backbone", "freeze_depth", "backbone_lr", "head_lr")},
            "val_accuracy": value,
            "best_epoch": attrs.get("best_epoch"),
            "epochs_run": attrs.get("epochs_run"),
            "stop_reason": attrs.get("stop_reason"),
            "seconds": attrs.get("seconds"),
            "cpu_seconds": attrs.get("cpu_seconds"),
            "error": attrs.get("error"),
        })
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    if frame.empty:
        return frame
    for column in ("freeze_depth", "best_epoch", "epochs_run"):
        frame[column] = frame[column].astype("Int64")  # whole numbers, with gaps where a trial failed
    return frame.sort_values(["val_accuracy", "trial"], ascending=[False, True], na_position="last").reset_index(drop=True)


def _markdown(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=["error"]).copy()
    for column in ("backbone_lr", "head_lr"):
        shown[column] = shown[column].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2e}")
    for column in ("val_accuracy", "seconds", "cpu_seconds"):
        shown[column] = shown[column].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}")
    return shown.astype(object).where(shown.notna(), "").to_markdown(index=False, disable_numparse=True)


def write_leaderboard(frame: pd.DataFrame, run_dir: Path) -> None:
    """``leaderboard.csv`` (every column) and ``leaderboard.md`` (for reading) in ``run_dir``."""
    frame.to_csv(run_dir / "leaderboard.csv", index=False)
    (run_dir / "leaderboard.md").write_text(_markdown(frame) + "\n" if not frame.empty else "no trials yet\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json``: the best trial, its parameters and metrics, counts of trials by state."""
    write_json_atomic(run_dir / "summary.json", summary)
