"""Which finished trials to average, from their validation predictions alone (no model is run here).

Greedy ensemble selection with replacement (Caruana et al., 2004, "Ensemble selection from libraries of
models"): start from the best single model, then add, one at a time and possibly again, the model whose
addition makes the average of the probabilities score best on validation; keep the best of those
averages. Choosing the members on the validation rows and scoring them there too flatters the ensemble,
so whether it beats the best single model is decided by cross-validation over the validation rows
(:func:`cross_validated_scores`): the members, and the single model to compare with, are chosen on k-1
folds and scored on the fold left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from automl_tl.metrics import metric_value, signed

#: the most additions greedy selection makes (members may repeat: a member's weight is its count / rounds)
ENSEMBLE_ROUNDS = 25
#: cross-validation folds over the validation rows that decide whether the ensemble is kept
SELECTION_FOLDS = 5
#: probabilities are clipped to this before their logarithm (a member sure and wrong would be log(0))
_EPSILON = 1e-7


@dataclass(frozen=True)
class Selection:
    """Greedy selection's result: each candidate's weight (summing to 1; 0 for those not chosen) and the
    chosen average's validation score (the metric signed so that higher is better)."""

    weights: np.ndarray
    score: float

    @property
    def members(self) -> list[int]:
        """The candidates with a weight, in order."""
        return [int(i) for i in np.flatnonzero(self.weights > 0)]


def _score(metric: str, probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(the metric, signed; the negated log loss): how averages are compared, ties to the lower log loss."""
    import torch

    logits = torch.from_numpy(np.log(np.clip(probabilities, _EPSILON, 1.0)).astype(np.float32))
    return signed(metric, metric_value(metric, logits, labels)), -metric_value("log_loss", logits, labels)


def greedy_selection(
    probabilities: Sequence[np.ndarray], labels: np.ndarray, metric: str, rounds: int = ENSEMBLE_ROUNDS
) -> Selection:
    """Caruana's greedy selection with replacement over candidates' validation ``probabilities`` (each
    (rows, classes), rows in the order of ``labels``), scored by ``metric``.

    Round one takes the best single candidate; each further round adds the candidate that makes the
    running average score best (ties: lower log loss, then the earlier candidate). The best average of
    the ``rounds`` is returned, so the result is never worse on these rows than the best single candidate.
    """
    if not len(probabilities):
        raise ValueError("no candidates to select from")
    labels = np.asarray(labels)
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    counts = np.zeros(len(stacked), dtype=np.int64)
    total = np.zeros_like(stacked[0])
    best_key, best_counts = None, counts.copy()
    for round_number in range(1, rounds + 1):
        keys = [_score(metric, (total + candidate) / round_number, labels) for candidate in stacked]
        chosen = max(range(len(keys)), key=lambda i: (keys[i], -i))
        counts[chosen] += 1
        total += stacked[chosen]
        if best_key is None or keys[chosen] > best_key:
            best_key, best_counts = keys[chosen], counts.copy()
    return Selection(best_counts / best_counts.sum(), best_key[0])


def best_single(probabilities: Sequence[np.ndarray], labels: np.ndarray, metric: str) -> int:
    """The candidate that scores best alone (ties: lower log loss, then the earlier candidate)."""
    keys = [_score(metric, np.asarray(p, dtype=np.float64), np.asarray(labels)) for p in probabilities]
    return max(range(len(keys)), key=lambda i: (keys[i], -i))


@dataclass(frozen=True)
class CrossValidated:
    """The ensemble's and the best single model's scores on validation rows neither was chosen on
    (metric signed: higher is better), and the number of folds."""

    ensemble: float
    single: float
    folds: int

    @property
    def gain(self) -> float:
        return self.ensemble - self.single


def cross_validated_scores(
    probabilities: Sequence[np.ndarray],
    labels: np.ndarray,
    metric: str,
    seed: int = 0,
    rounds: int = ENSEMBLE_ROUNDS,
    folds: int = SELECTION_FOLDS,
    singles: Sequence[int] | None = None,
) -> CrossValidated | None:
    """Greedy selection and best-single choice each made on k-1 stratified folds of the validation rows and
    scored on the fold left out; the scores of the out-of-fold predictions so assembled. The best single model
    is chosen among the candidates ``singles`` lists (default: all; a candidate that is itself an ensemble is
    no single model to compare with). None when a class has fewer than two validation rows (no fold could
    hold it out)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    present = np.bincount(labels)
    smallest = int(present[present > 0].min()) if len(labels) else 0
    splits = min(folds, smallest)
    if splits < 2:
        return None
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    singles = list(range(len(stacked))) if singles is None else list(singles)
    ensemble_oof = np.zeros_like(stacked[0])
    single_oof = np.zeros_like(stacked[0])
    for chosen_on, held_out in StratifiedKFold(splits, shuffle=True, random_state=seed).split(stacked[0], labels):
        selection = greedy_selection(list(stacked[:, chosen_on]), labels[chosen_on], metric, rounds)
        ensemble_oof[held_out] = np.tensordot(selection.weights, stacked[:, held_out], axes=1)
        best = singles[best_single(list(stacked[singles][:, chosen_on]), labels[chosen_on], metric)]
        single_oof[held_out] = stacked[best, held_out]
    return CrossValidated(_score(metric, ensemble_oof, labels)[0], _score(metric, single_oof, labels)[0], splits)
