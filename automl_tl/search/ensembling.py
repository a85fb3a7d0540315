"""After the trials, an ensemble of what the search already paid for: which trials can be members, their
validation probabilities on disk, and the decision to keep an ensemble (see
:mod:`automl_tl.results.ensemble_selection` for the selection itself, :mod:`automl_tl.results.ensemble` for
the ensemble on disk).

Every finished trial leaves its best epoch's probabilities on the rows it was validated on (the validation
split's, or every labelled row out of fold) in ``RUN_DIR/trial_predictions/`` (a few kB each, also for trials
run by other workers or before a resume).
The candidates are the best trial (its model is saved) and the frozen-body trials (probes and heads on
embeddings), whose models are rebuilt at the end from the cached features for the cost of their trial;
fine-tuned trials other than the best are not candidates, since their weights were not kept.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch

from automl_tl.config import TrialConfig
from automl_tl.data.bundle import DatasetBundle
from automl_tl.files import write_bytes_atomic
from automl_tl.layout import TRIAL_PREDICTIONS_DIR
from automl_tl.results.ensemble_selection import CrossValidated, Selection, cross_validated_scores, greedy_selection
from automl_tl.strategies import get_strategy
from automl_tl.train.executor import TrialResult

logger = logging.getLogger(__name__)

#: the most candidates selection looks at: the best-scoring finished trials (selection is quadratic in them)
CANDIDATE_POOL = 20
#: the fewest validation rows an ensemble is chosen on (below, its cross-validated score means little)
MIN_VALIDATION_ROWS = 20


def _predictions_file(run_dir: Path, trial_number: int) -> Path:
    return Path(run_dir) / TRIAL_PREDICTIONS_DIR / f"trial_{trial_number:05d}.npy"


def validation_probabilities(result: TrialResult, data: DatasetBundle) -> np.ndarray | None:
    """The best epoch's class probabilities on the rows the trial was validated on: the validation split's,
    or, for a trial cross-validated on training + validation (a small validation split), every labelled row
    out of fold (training rows first, as the executor joins them). None when the trial has none."""
    record = result.best_record
    if record is None or record.val_logits is None or not len(data.val):
        return None
    if len(record.val_logits) not in (len(data.val), len(data.train) + len(data.val)):
        return None
    return torch.softmax(record.val_logits.float(), dim=1).numpy()


def write_trial_predictions(run_dir: Path, trial_number: int, probabilities: np.ndarray) -> None:
    """Keep a finished trial's validation probabilities for the ensemble (float32 ``.npy``, atomic)."""
    buffer = io.BytesIO()
    np.save(buffer, probabilities.astype(np.float32), allow_pickle=False)
    path = _predictions_file(run_dir, trial_number)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def read_trial_predictions(run_dir: Path, trial_number: int, data: DatasetBundle) -> np.ndarray | None:
    """A trial's validation probabilities, if on disk, finite, and shaped as ``data``'s validation rows or its
    training + validation rows (None otherwise: never unpickled, and a torn file is no candidate)."""
    path = _predictions_file(run_dir, trial_number)
    if not path.is_file():
        return None
    try:
        probabilities = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("validation predictions of trial %d unreadable (%s): no ensemble candidate", trial_number, exc)
        return None
    rows = (len(data.val), len(data.train) + len(data.val))
    if probabilities.ndim != 2 or probabilities.shape[0] not in rows or probabilities.shape[1] != len(data.classes):
        return None
    if not np.isfinite(probabilities).all():
        return None
    return probabilities.astype(np.float64)


@dataclass(frozen=True)
class Candidate:
    """A finished trial that can be an ensemble member; or (``joins`` the backbones it joins, no trial or
    config) a probe on several backbones' concatenated features (see :mod:`automl_tl.search.concatenation`)."""

    trial: int | None
    config: TrialConfig | None
    probabilities: np.ndarray  # on the validation rows
    seconds: float  # what its trial's fit took (its features aside, now cached): about what rebuilding it costs
    attrs: dict  # the trial's user attributes (validation figures)
    joins: tuple[str, ...] = ()

    @property
    def single(self) -> bool:
        """Whether it is one model (a trial's), what an ensemble must beat; a concatenated-feature probe is
        already an ensemble of its backbones."""
        return not self.joins


def ensemble_candidates(
    run_dir: Path, study: optuna.Study, data: DatasetBundle, best_trial: int, pool: int = CANDIDATE_POOL
) -> tuple[list[Candidate], np.ndarray]:
    """The best trial and the best-scoring frozen-body trials (at most ``pool`` in all), best first, that
    have their validation probabilities on disk; and the labels of the rows those cover.

    The rows are every labelled one when each candidate was cross-validated on training + validation (more
    rows to choose on), else the validation split's (out-of-fold predictions are cut to them)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    complete = sorted(complete, key=lambda t: (t.number != best_trial, -(t.value or -np.inf), t.number))
    found: list[Candidate] = []
    for trial in complete:
        config_dict = trial.user_attrs.get("trial_config")
        if config_dict is None:  # (a trial of a version that did not record it)
            continue
        config = TrialConfig.from_dict(config_dict)
        if trial.number != best_trial and not get_strategy(config.strategy).frozen_body:
            continue
        probabilities = read_trial_predictions(run_dir, trial.number, data)
        if probabilities is None:
            continue
        # (a trial stored by an earlier version has its whole time only)
        seconds = float(trial.user_attrs.get("fit_seconds", trial.user_attrs.get("seconds")) or 0.0)
        found.append(Candidate(trial.number, config, probabilities, seconds, dict(trial.user_attrs)))
        if len(found) >= pool:
            break
    every_row = len(data.train) + len(data.val)
    if found and all(len(c.probabilities) == every_row for c in found):
        return found, np.concatenate([data.train.labels, data.val.labels])
    cut = [replace(c, probabilities=c.probabilities[-len(data.val) :]) for c in found]
    return cut, np.asarray(data.val.labels)


@dataclass(frozen=True)
class EnsembleChoice:
    """What selection decided: the members (candidates' indices) and weights when an ensemble is worth
    keeping, else None and why."""

    selection: Selection | None
    cross_validated: CrossValidated | None
    reason: str

    @property
    def kept(self) -> bool:
        return self.selection is not None


def choose_ensemble(candidates: list[Candidate], labels: np.ndarray, metric: str, seed: int) -> EnsembleChoice:
    """Greedy selection over ``candidates`` on all the validation rows, kept only when it names two or
    more members (or a concatenated-feature probe alone, itself an ensemble of backbones) and, cross-validated
    over the validation rows, beats the best single model (the best of the trials' candidates)."""
    if len(candidates) < 2:
        return EnsembleChoice(None, None, f"{len(candidates)} candidate(s): nothing to combine")
    if len(labels) < MIN_VALIDATION_ROWS:
        return EnsembleChoice(None, None, f"{len(labels)} validation rows: too few to choose members on")
    probabilities = [c.probabilities for c in candidates]
    singles = [i for i, c in enumerate(candidates) if c.single]
    selection = greedy_selection(probabilities, labels, metric)
    if len(selection.members) < 2 and candidates[selection.members[0]].single:
        return EnsembleChoice(None, None, "the best single model alone scored best on validation")
    checked = cross_validated_scores(probabilities, labels, metric, seed, singles=singles)
    if checked is None:
        return EnsembleChoice(None, None, "a class has fewer than 2 validation rows: the gain cannot be checked")
    if checked.gain <= 0:
        return EnsembleChoice(
            None,
            checked,
            f"not better than the best single model on validation rows it was not chosen on "
            f"({metric} {abs(checked.ensemble):.4f} vs {abs(checked.single):.4f}, {checked.folds}-fold)",
        )
    return EnsembleChoice(
        selection,
        checked,
        f"better than the best single model on validation rows it was not chosen on "
        f"({metric} {abs(checked.ensemble):.4f} vs {abs(checked.single):.4f}, {checked.folds}-fold)",
    )
