"""The metrics a search can select by, defined once: how each is computed, which way is better, and the
default for a data set (balanced accuracy when the classes are imbalanced).

Every metric is computed from a split's logits and its integer labels. The search hands Optuna
:func:`signed` values (higher is better for every metric, so ``log_loss`` is negated); everything a person
reads (leaderboard, summary, report) shows the metric in its own units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch and scikit-learn are imported where a metric is computed: reading the names stays cheap
    import torch

#: the largest class at least this many times the smallest makes a data set imbalanced
IMBALANCE_RATIO = 3.0


def _accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == labels).mean())


def _balanced_accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, logits.argmax(1).numpy()))


def _macro_f1(logits: torch.Tensor, labels: np.ndarray) -> float:
    # every class of the logits counts, even one the split happens not to predict (F1 0 then)
    from sklearn.metrics import f1_score

    return float(
        f1_score(labels, logits.argmax(1).numpy(), labels=np.arange(logits.shape[1]), average="macro", zero_division=0)
    )


def _log_loss(logits: torch.Tensor, labels: np.ndarray) -> float:
    import torch

    return float(torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(labels)).item())


#: name -> (compute(logits, labels), greater is better)
METRICS: dict[str, tuple[Callable[[torch.Tensor, np.ndarray], float], bool]] = {
    "accuracy": (_accuracy, True),
    "balanced_accuracy": (_balanced_accuracy, True),
    "macro_f1": (_macro_f1, True),
    "log_loss": (_log_loss, False),
}
METRIC_NAMES = tuple(METRICS)


def metric_value(name: str, logits: torch.Tensor, labels: np.ndarray) -> float:
    """``name`` of ``logits`` against ``labels``, in the metric's own units (nan for an empty split)."""
    if not len(labels):
        return float("nan")
    return METRICS[name][0](logits, np.asarray(labels))


def all_metrics(logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS`, in its own units."""
    return {name: metric_value(name, logits, labels) for name in METRICS}


def signed(name: str, value: float) -> float:
    """``value`` of metric ``name`` turned so that higher is better (what Optuna maximises)."""
    return value if METRICS[name][1] else -value


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def is_imbalanced(labels: np.ndarray, num_classes: int) -> bool:
    """Whether the largest class has at least :data:`IMBALANCE_RATIO` times the examples of the smallest."""
    counts = class_counts(labels, num_classes)
    return bool(counts.min() > 0 and counts.max() >= IMBALANCE_RATIO * counts.min())


def default_metric(labels: np.ndarray, num_classes: int) -> str:
    """The metric a search selects by unless told: balanced accuracy on imbalanced data, else accuracy."""
    return "balanced_accuracy" if is_imbalanced(labels, num_classes) else "accuracy"


def uses_class_weights(metric: str, labels: np.ndarray, num_classes: int) -> bool:
    """Whether training weights each class inversely to its frequency: on imbalanced data, unless the metric
    rewards the frequent classes as they are (accuracy, log loss)."""
    return metric in ("balanced_accuracy", "macro_f1") and is_imbalanced(labels, num_classes)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (k * count)`` per class (scikit-learn's "balanced"): each class weighs as much in the loss."""
    import torch

    counts = class_counts(labels, num_classes).astype(np.float64)
    return torch.as_tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)
