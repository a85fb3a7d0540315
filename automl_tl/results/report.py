"""What a person reads after a search: the leaderboard and the transferability ranking (CSV and Markdown)
and a JSON summary. (The HTML page and its figures are :mod:`automl_tl.results.html_report` and :mod:`automl_tl.results.plots`.)"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from automl_tl.data.bundle import NO_LABEL, SkippedRow
from automl_tl.files import write_json_atomic, write_text_atomic
from automl_tl.layout import (
    LEADERBOARD_CSV,
    LEADERBOARD_MD,
    SKIPPED_FILE,
    SUMMARY_FILE,
    TRANSFERABILITY_CSV,
    TRANSFERABILITY_MD,
)
from automl_tl.metrics import signed
from automl_tl.results.concatenated import CONCATENATED_FEATURES
from automl_tl.storage import stale_trial_reasons
from automl_tl.strategies import used_parameters
from automl_tl.train.executor import STOP_CALLBACK

logger = logging.getLogger(__name__)

PARAMETERS = [
    "backbone",
    "strategy",
    "trained_groups",
    "backbone_lr",
    "layer_decay",
    "head_lr",
    "head",
    "head_hidden",
    "head_dropout",
    "augmentation",
]
#: Study user attributes that hold what the report needs beyond the trials (see ``Search._finish``):
TEST_EVALUATION_ATTR = "test_evaluation"  # the best model on the test set: metrics, confusion matrix, per class
TRANSFERABILITY_ATTR = "transferability"  # the pre-ranking's scores per backbone
DATA_SUMMARY_ATTR = "data_summary"  # modality, split sizes, columns
ENSEMBLE_ATTR = "ensemble"  # whether an ensemble was kept, why, its members and weights
SELF_TRAINING_ATTR = "self_training"  # the unlabelled pool, threshold, pseudo-labels, scores, kept or not and why
FINISHED_STATES = ("COMPLETE", "PRUNED")
#: every row of the data left out of training (no label, unreadable input): row, file, reason
SKIPPED_COLUMNS = ("row", "line", "file", "reason")
#: a spreadsheet takes a cell starting with one of these for a formula (CSV injection): such a cell is quoted
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: ``val_score`` is the search's metric (``summary.json``'s "metric") in its own units; ``val_loss`` breaks ties
LEADERBOARD_COLUMNS = [
    "trial",
    "state",
    *PARAMETERS,
    "val_score",
    "val_accuracy",
    "val_loss",
    "validation",
    "best_epoch",
    "soup_epochs",
    "epochs_run",
    "stop_reason",
    "seconds",
    "cpu_seconds",
    "error",
    "adapted",
]


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, best validation score first (ties: lower validation loss, then the earlier trial;
    trials without a score last)."""
    rows, order = [], []
    stale = stale_trial_reasons(study)  # failed by Optuna's heartbeat: the reason is the study's
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING:
            continue  # a retry not started yet: it is listed once it runs
        attrs = trial.user_attrs
        if trial.state == optuna.trial.TrialState.FAIL and trial.number in stale:
            attrs = {**attrs, "error": stale[trial.number], "stop_reason": "interrupted"}
        used = used_parameters(trial.params)  # a parameter the trial's strategy ignores is left empty
        accuracy = attrs.get("best_val_accuracy")
        metric = attrs.get("metric", "accuracy")
        score = attrs.get("best_val_score", accuracy if metric == "accuracy" else None)
        loss = attrs.get("best_val_loss")
        order.append(
            (
                math.nan if score is None else -signed(metric, score),
                math.inf if loss is None or math.isnan(loss) else loss,
                trial.number,
            )
        )
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                **{name: used.get(name) for name in PARAMETERS},
                "val_score": score,
                "val_accuracy": accuracy,
                "val_loss": loss,
                "validation": attrs.get("validation"),
                "best_epoch": attrs.get("best_epoch"),
                "soup_epochs": soup_epochs(attrs.get("weight_soup")),
                "epochs_run": attrs.get("epochs_run"),
                "stop_reason": describe_stop(attrs.get("stop_reason"), attrs.get("epochs_run")),
                "seconds": attrs.get("seconds"),
                "cpu_seconds": attrs.get("cpu_seconds"),
                "error": attrs.get("error"),
                # what the budget made the trial give up (fewer epochs, a smaller input, fewer trained layers)
                "adapted": "; ".join(attrs.get("adapted") or []) or None,
            }
        )
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    if frame.empty:
        return frame
    for column in ("trained_groups", "head_hidden", "best_epoch", "epochs_run"):
        frame[column] = frame[column].astype("Int64")  # whole numbers, with gaps where a trial failed
    keys = pd.DataFrame(order, columns=["score", "loss", "trial"])
    ranked = keys.sort_values(["score", "loss", "trial"], na_position="last").index
    return frame.loc[ranked].reset_index(drop=True)


def soup_epochs(weight_soup: dict[str, Any] | None) -> str | None:
    """The epochs whose weights a fine-tuning trial's greedy soup averaged, as the leaderboard shows them
    ("4 and 1", its best epoch first); None when the trial kept one epoch's weights (or made no soup)."""
    ingredients = (weight_soup or {}).get("ingredients")
    if not ingredients:
        return None
    epochs = [str(epoch) for epoch in ingredients]
    return ", ".join(epochs[:-1]) + " and " + epochs[-1] if len(epochs) > 1 else epochs[0]


def describe_stop(reason: str | None, epochs_run: int | None) -> str | None:
    """A trial's stop reason as the leaderboard shows it: the pruner's stop as "pruned at epoch N"."""
    if reason == STOP_CALLBACK and epochs_run:
        return f"pruned at epoch {epochs_run}"
    return reason


def best_accuracy_by_backbone(board: pd.DataFrame) -> dict[str, float]:
    """Each backbone's best validation accuracy over its finished (complete or pruned) trials."""
    finished = board[board["state"].isin(FINISHED_STATES)].dropna(subset=["val_accuracy"])
    return {name: float(value) for name, value in finished.groupby("backbone")["val_accuracy"].max().items()}


def _markdown(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=["error"]).copy()
    for column in ("backbone_lr", "head_lr"):
        shown[column] = shown[column].map(
            lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2e}"
        )
    for column in ("layer_decay", "head_dropout", "val_score", "val_accuracy", "val_loss", "seconds", "cpu_seconds"):
        shown[column] = shown[column].map(
            lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
        )
    return shown.astype(object).where(shown.notna(), "").to_markdown(index=False, disable_numparse=True)


def write_leaderboard(frame: pd.DataFrame, run_dir: Path) -> None:
    """``leaderboard.csv`` (every column) and ``leaderboard.md`` (for reading) in ``run_dir``."""
    # Written aside and renamed into place: several workers may write them at once, and a kill mid-write
    # must not leave half a file.
    write_text_atomic(run_dir / LEADERBOARD_CSV, frame.to_csv(index=False))
    write_text_atomic(run_dir / LEADERBOARD_MD, _markdown(frame) + "\n" if not frame.empty else "no trials yet\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json``: the best trial, its parameters and metrics, counts of trials by state."""
    write_json_atomic(run_dir / SUMMARY_FILE, summary)


def write_transferability(frame: pd.DataFrame, kendall_tau: dict[str, float | None], run_dir: Path) -> None:
    """``transferability.csv`` and ``transferability.md``: each backbone's scores, its rank and its best
    fine-tuned validation accuracy, and the Kendall tau of each score against that accuracy."""
    write_text_atomic(run_dir / TRANSFERABILITY_CSV, frame.to_csv(index=False))
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}")
    taus = ", ".join(f"{name} {'n/a' if tau is None else f'{tau:+.3f}'}" for name, tau in kendall_tau.items())
    write_text_atomic(
        run_dir / TRANSFERABILITY_MD,
        shown.to_markdown(index=False, disable_numparse=True)
        + f"\n\nKendall tau between each score and the best validation accuracy: {taus}\n",
    )


def spreadsheet_safe(text: str) -> str:
    """``text`` as a spreadsheet shows it but never runs it: a leading ``= + - @`` (or tab, carriage return)
    gets a ``'`` before it, which spreadsheets read as "this cell is text"."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def spreadsheet_safe_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` for a CSV that people open in a spreadsheet: every text cell (and text column
    name) passed through :func:`spreadsheet_safe`; numbers and empty cells stay as they are."""
    safe = frame.rename(columns=lambda name: spreadsheet_safe(name) if isinstance(name, str) else name)
    for column in range(safe.shape[1]):
        values = safe.iloc[:, column]
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            # (not Series.map, which would make a column of whole numbers and gaps floats: 1 written as 1.0)
            safe.isetitem(
                column,
                pd.Series(
                    [spreadsheet_safe(v) if isinstance(v, str) else v for v in values],
                    index=values.index,
                    dtype=values.dtype,
                ),
            )
    return safe


def write_skipped(run_dir: Path, skipped: Sequence[SkippedRow]) -> Path:
    """``skipped.csv``: one line per row of the data left out (see :class:`~automl_tl.data.bundle.SkippedRow`),
    columns ``row`` (from 0), ``line`` (in the table file, as messages name it; empty for a folder), ``file``,
    ``reason``. Written even when nothing was skipped (the header alone), so
    that a run directory always says so, and a list from an earlier run on other data never lingers."""
    rows = [(row.row, row.line, spreadsheet_safe(row.file), spreadsheet_safe(row.reason)) for row in skipped]
    path = Path(run_dir) / SKIPPED_FILE
    write_text_atomic(path, pd.DataFrame(rows, columns=list(SKIPPED_COLUMNS)).to_csv(index=False))
    if rows:
        logger.info(
            "%d row(s) of the data are not trained on (no label, or an input that cannot be read): listed in %s",
            len(rows),
            path,
        )
    return path


def describe_self_training(record: dict[str, Any] | None) -> str | None:
    """One line for people from the self-training record (see ``Search._self_train``; None when there was no
    unlabelled pool): "kept: 205 of 400 unlabelled inputs pseudo-labelled above confidence 0.93 (95% right on
    40 validation rows); validation accuracy 0.7875 -> 0.8375"."""
    if not record:
        return None
    pool = f"{record.get('pool', 0)} unlabelled input(s)"
    if record.get("capped_from"):
        pool += f" (a seeded sample of {record['capped_from']})"
    if record.get("unreadable"):
        pool += f", {record['unreadable']} unreadable skipped"
    verdict = "kept" if record.get("kept") else "not kept"
    if "threshold" not in record:
        return f"{verdict}: {record.get('reason', 'not recorded')}; {pool}"
    rows = "out-of-fold" if record.get("mode") == "cross-validated" else "validation"
    line = (
        f"{verdict}: {record.get('pseudo_labelled', 0)} of {pool} pseudo-labelled above confidence "
        f"{record['threshold']:.2f} ({record.get('threshold_precision', math.nan):.0%} right on "
        f"{record.get('threshold_rows')} {rows} rows)"
    )
    return f"{line}; {record.get('reason', '')}"  # (the reason gives the validation scores before and after)


def describe_candidates(ensemble: dict[str, Any]) -> str:
    """What greedy selection chose among, in words: "7 candidates (6 finished trials and a probe on
    concatenated features)", or "6 finished trials"."""
    count = ensemble.get("candidates")
    if not (ensemble.get("concatenated_features") or {}).get("candidate") or not isinstance(count, int):
        return f"{count} finished trials"
    return f"{count} candidates ({count - 1} finished trials and a probe on concatenated features)"


def describe_concatenated(ensemble: dict[str, Any] | None) -> str | None:
    """The sentence the report and the card say about the concatenated-feature probe of a search's ensemble
    record: which backbones it joins, and whether the kept ensemble includes it or why it is no member; None
    when the record says nothing of it (an earlier version's)."""
    ensemble = ensemble or {}
    probe = ensemble.get("concatenated_features")
    if not probe:
        return None
    joined = [m for m in ensemble.get("members") or [] if m.get("kind") == CONCATENATED_FEATURES]
    if joined:
        member = joined[0]
        return (
            f"The ensemble includes a logistic-regression probe on the concatenated embeddings of "
            f"{' and '.join(member.get('backbones') or [member.get('backbone')])} (weight {member.get('weight')}): "
            "one linear layer on their frozen bodies' normalised features side by side."
        )
    backbones = " and ".join(probe.get("backbones") or [])
    if probe.get("candidate"):
        return (
            f"A logistic-regression probe on the concatenated embeddings of {backbones} was a candidate, "
            "and not chosen."
        )
    return f"No probe on concatenated embeddings was tried: {probe.get('reason', 'not recorded')}."


def describe_skipped(counts: dict[str, Any] | None) -> str | None:
    """One line for people from :meth:`~automl_tl.data.bundle.DatasetBundle.skipped_counts` (None when not recorded):
    "3 without a label (kept as unlabelled), 2 unreadable (corrupt or truncated: 1, too large: 1); listed in
    skipped.csv"."""
    if not counts:
        return None
    unlabelled, unreadable = counts.get("unlabelled", 0), counts.get("unreadable", 0)
    if not unlabelled and not unreadable:
        return f"none: every row was labelled and readable ({SKIPPED_FILE} is empty)"
    parts = []
    if unlabelled:
        parts.append(f"{unlabelled} without a label (kept as unlabelled, not trained on)")
    if unreadable:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in (counts.get("by_reason") or {}).items() if kind != NO_LABEL)
        parts.append(f"{unreadable} unreadable ({kinds})")
    return f"{', '.join(parts)}; listed in {SKIPPED_FILE}"
