"""Calibrated probabilities: temperature scaling (Guo et al. 2017, "On calibration of modern neural
networks") and how calibration is measured (expected calibration error, the reliability table).

One number, the temperature T, divides the logits before the softmax: T > 1 softens over-confident
probabilities, T < 1 sharpens timid ones (an ensemble's average often is), and the predicted class never
changes. T is fitted by minimising the log loss on validation predictions the model was not trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: the temperatures a fit may return (and a saved model may hold): beyond, the validation rows are too few or
#: too easy to say anything (all right, or all wrong with certainty)
TEMPERATURE_RANGE = (0.05, 20.0)
#: equal-width confidence bins of the expected calibration error and the reliability diagram
CALIBRATION_BINS = 15
#: probabilities are clipped to this before their logarithm (an ensemble's exported graph clips alike)
PROBABILITY_FLOOR = 1e-7


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logits whose softmax is ``probabilities`` (their logarithms, clipped away from 0)."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, 1.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` over the last axis."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def _log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(probabilities, 1e-12, 1.0)).mean())


def classifies_every_row(logits: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the top logit of every row is its label's. Then the log loss falls ever lower as T falls, so
    the temperature "fitted" there is the range's floor: a model that is right on every validation row only
    says it has nothing left to calibrate, not that it should be a twentieth as unsure on new data (a fine-tune
    right on all 42 validation clips of the voices it trained on was sharpened to T = 0.05, then met new voices)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    return bool(len(labels)) and bool((logits.argmax(axis=1) == labels).all())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in :data:`TEMPERATURE_RANGE` that minimises the log loss of ``logits`` (rows of
    validation examples) against ``labels``: a bounded one-dimensional search over log T; 1 (no scaling) when
    the logits classify every row right (:func:`classifies_every_row`) or there are none."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if not len(labels) or classifies_every_row(logits, labels):
        return 1.0
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: _log_loss(logits, labels, math.exp(log_t)), bounds=(low, high), method="bounded"
    )
    temperature = float(math.exp(found.x))
    # never worse than no scaling on the rows it was fitted on (a flat loss can leave the search anywhere)
    return temperature if _log_loss(logits, labels, temperature) < _log_loss(logits, labels, 1.0) else 1.0


def reliability_table(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, float]]:
    """Per confidence bin (equal widths over [0, 1]) with examples: its range, the examples in it, their
    mean confidence (the top probability) and their accuracy."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for index in range(bins):
        inside = which == index
        if inside.any():
            rows.append(
                {
                    "low": float(edges[index]),
                    "high": float(edges[index + 1]),
                    "examples": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(right[inside].mean()),
                }
            )
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The examples' weighted mean gap between confidence and accuracy over the bins (0: calibrated)."""
    table = reliability_table(probabilities, labels, bins)
    total = sum(row["examples"] for row in table)
    if not total:
        return math.nan
    return float(sum(row["examples"] * abs(row["confidence"] - row["accuracy"]) for row in table) / total)


def check_temperature(value: object) -> bool:
    """Whether ``value`` is a temperature a saved model may hold (a number within :data:`TEMPERATURE_RANGE`)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and TEMPERATURE_RANGE[0] <= value <= TEMPERATURE_RANGE[1]
    )


def calibration_summary(
    logits: np.ndarray, labels: Sequence[int], temperature: float
) -> dict[str, float | list[dict[str, float]]]:
    """ECE before and after dividing ``logits`` by ``temperature``, and the calibrated reliability table."""
    labels = np.asarray(labels)
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "reliability_before": reliability_table(before, labels),
        "reliability_after": reliability_table(after, labels),
    }
