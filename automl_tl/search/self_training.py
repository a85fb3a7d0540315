"""Self-training's choices: the confidence threshold above which the kept model's predictions on the
unlabelled pool are taken as labels, chosen on the validation split, and the pseudo-labelled rows.

The search (:meth:`automl_tl.search.study.Search._self_train`) predicts the pool with the kept model, takes
the rows above the threshold as extra training rows for one fit of the same configuration, and keeps that
model only if it scores better on the validation split, which neither fit learnt from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the share of validation rows above a threshold the kept model must label correctly for the threshold to be
#: chosen. A fixed precision target, not the most accurate quantile: the most accurate one is nearly always
#: the highest, leaving few pseudo-labels, while a known error rate bounds the harm of the wrong labels
#: (a model trained on its own errors confirms them) and lets the lowest such threshold bring in the most rows.
PSEUDO_LABEL_PRECISION = 0.95
#: the candidate thresholds: these quantiles of the kept model's confidence on the validation rows
THRESHOLD_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9)
#: the fewest validation rows above a threshold that its precision is measured on (fewer: not a candidate)
MIN_THRESHOLD_ROWS = 10


@dataclass(frozen=True)
class Threshold:
    """A confidence threshold and what it scored on validation: the kept model's accuracy (``precision``)
    on the ``rows`` validation rows at or above it; ``reached``: whether that meets the precision target."""

    value: float
    precision: float
    rows: int
    reached: bool


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray) -> Threshold | None:
    """The lowest candidate threshold (see :data:`THRESHOLD_QUANTILES`) whose validation precision reaches
    :data:`PSEUDO_LABEL_PRECISION` on at least :data:`MIN_THRESHOLD_ROWS` rows; if none does, the one with the
    highest precision (``reached`` False: the search then pseudo-labels nothing). None: too few validation rows."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    candidates = []
    for value in sorted({float(np.quantile(confidence, q)) for q in THRESHOLD_QUANTILES}):
        above = confidence >= value
        if above.sum() >= MIN_THRESHOLD_ROWS:
            precision = float(correct[above].mean())
            candidates.append(Threshold(value, precision, int(above.sum()), precision >= PSEUDO_LABEL_PRECISION))
    if not candidates:
        return None
    reached = [c for c in candidates if c.reached]
    return reached[0] if reached else max(candidates, key=lambda c: (c.precision, c.value))


def pseudo_labels(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the pool whose confidence is at or above ``threshold``, and their predicted classes."""
    rows = np.flatnonzero(probabilities.max(axis=1) >= threshold)
    return rows, probabilities[rows].argmax(axis=1)
