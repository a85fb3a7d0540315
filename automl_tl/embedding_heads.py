"""Heads fitted in one go on the frozen body's embeddings: nearest centroid and logistic regression.

With a handful of labelled examples per class, gradient training of a head (let alone of the body)
has little to learn from and nothing to stop it early; these two classics are the strong, cheap
baselines of few-shot transfer (nearest centroid as in SimpleShot, Wang et al. 2019; logistic
regression on frozen features as in the linear evaluation of CLIP and SimCLR). Each is fitted on the
cached embeddings in milliseconds to seconds and returned as a plain torch head, so the saved model is
an ordinary body + head in safetensors and predicts exactly what the fitted classifier predicts:

Both see the embeddings centred on the training mean and scaled to unit length (SimpleShot's
"CL2N": centring removes the direction every embedding shares, which otherwise dominates cosine
similarities), and both are saved as a :class:`~automl_tl.heads.NormalisedLinearHead`:

* nearest centroid: the linear layer's rows are the unit class means times
  :data:`CENTROID_TEMPERATURE`, bias 0 (the argmax is the nearest centroid by cosine);
* logistic regression: scikit-learn's ``LogisticRegression``, its ``C`` chosen by stratified
  cross-validation on the training examples; its ``coef_`` and ``intercept_`` are the linear layer.
  (On Fashion-MNIST and BBC News embeddings, normalised inputs beat standardised ones at 1 and 5
  shots and tied at 20.)

:func:`cross_validated_logits` gives out-of-fold predictions, how these strategies are validated when
there are too few labels to hold any out (see :func:`automl_tl.data.prepare_dataset`'s ``shots``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits
from torch import nn

from automl_tl.heads import NormalisedLinearHead

#: scales cosine similarities (in [-1, 1]) into logits; only the probabilities depend on it, never the argmax
CENTROID_TEMPERATURE = 10.0
#: the inverse regularisation strengths cross-validated for logistic regression (on unit-length embeddings)
LOGISTIC_C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
#: used when some class has a single training example, so nothing can be cross-validated
DEFAULT_LOGISTIC_C = 10.0
MAX_FOLDS = 5  # outer folds when cross-validation replaces a validation split
MAX_INNER_FOLDS = 3  # folds for choosing C: the grid makes them cost 6 fits each
LOGISTIC_MAX_ITER = 500


@dataclass
class FittedHead:
    """A head fitted on embeddings, and what the fit chose (e.g. ``{"C": 0.1}``)."""

    module: nn.Module
    details: dict[str, Any] = field(default_factory=dict)


#: fit(embeddings, labels, number of classes, seed) -> FittedHead
#: (x, y, num_classes, seed, **the details an earlier fit chose, to refit with the same choices) -> FittedHead
HeadFitter = Callable[..., FittedHead]


def _check_every_class(labels: np.ndarray, num_classes: int) -> None:
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(f"no training example of class index {missing[0]}: every class needs one")


def _normalised(x: np.ndarray, num_classes: int) -> tuple[NormalisedLinearHead, torch.Tensor]:
    """A head centred on ``x``'s mean, and ``x`` as that head normalises it."""
    head = NormalisedLinearHead(x.shape[1], num_classes)
    features = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        head.center.copy_(features.mean(0))
        return head, head.normalise(features)


def fit_nearest_centroid(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0, *,
                         temperature: float = CENTROID_TEMPERATURE) -> FittedHead:
    """Cosine nearest class mean of centred, L2-normalised embeddings (``seed`` is unused: nothing is random)."""
    _check_every_class(y, num_classes)
    head, normalised = _normalised(x, num_classes)
    labels = torch.as_tensor(y)
    with torch.no_grad():
        means = torch.stack([normalised[labels == c].mean(0) for c in range(num_classes)])
        head.linear.weight.copy_(temperature * nn.functional.normalize(means, dim=1))
        head.linear.bias.zero_()
    return FittedHead(head.eval(), {"temperature": temperature})


def _logistic(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    # One BLAS thread: these problems are tiny, and on a busy machine several spinning BLAS threads made
    # each fit 50 times slower (measured on 2 shared cores with OMP_NUM_THREADS=2).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # a large C on separable data stops at the iteration cap; that model still predicts well
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=LOGISTIC_MAX_ITER, random_state=seed).fit(x, y)


def choose_logistic_c(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The grid's ``C`` with the best cross-validated accuracy on ``x`` (ties: lower log loss, then the
    smaller C); :data:`DEFAULT_LOGISTIC_C` when some class has a single example."""
    folds = min(int(np.bincount(y).min()), MAX_INNER_FOLDS)
    if folds < 2:
        return DEFAULT_LOGISTIC_C
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    best: tuple[float, float] | None = None
    chosen = DEFAULT_LOGISTIC_C
    for c in LOGISTIC_C_GRID:
        correct, log_loss = 0, 0.0
        for train, held_out in splitter.split(x, y):
            model = _logistic(x[train], y[train], c, seed)
            probabilities = model.predict_proba(x[held_out])
            columns = np.searchsorted(model.classes_, y[held_out])
            correct += int((model.classes_[probabilities.argmax(1)] == y[held_out]).sum())
            log_loss -= float(np.log(np.clip(probabilities[np.arange(len(held_out)), columns], 1e-12, None)).sum())
        score = (correct / len(y), -log_loss / len(y))
        if best is None or score > best:
            best, chosen = score, c
    return chosen


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0, *,
                            C: float | None = None) -> FittedHead:  # noqa: N803 - scikit-learn's name
    """Multinomial logistic regression on centred, L2-normalised embeddings, ``C`` by cross-validation
    unless given (a refit with the ``C`` an earlier fit chose)."""
    _check_every_class(y, num_classes)
    head, normalised = _normalised(x, num_classes)
    inputs = normalised.numpy().astype(np.float64)
    c = choose_logistic_c(inputs, y, seed) if C is None else C
    model = _logistic(inputs, y, c, seed)
    coef, intercept = model.coef_, model.intercept_
    if num_classes == 2:  # scikit-learn keeps one row for two classes: logit(class 1) - logit(class 0)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    return FittedHead(head.eval(), {"C": c})


FITTERS: dict[str, HeadFitter] = {"nearest_centroid": fit_nearest_centroid,
                                  "logistic_regression": fit_logistic_regression}


@torch.no_grad()
def head_logits(head: nn.Module, x: np.ndarray) -> torch.Tensor:
    """The head's logits for embeddings ``x`` (float32, on the CPU)."""
    head.eval()
    return head(torch.as_tensor(x, dtype=torch.float32)).float()


def cross_validation_folds(y: np.ndarray) -> int:
    """How many stratified folds ``y`` allows (at most :data:`MAX_FOLDS`); below 2, none."""
    return min(int(np.bincount(y).min()), MAX_FOLDS)


def cross_validated_logits(fit: HeadFitter, x: np.ndarray, y: np.ndarray, num_classes: int,
                           seed: int) -> torch.Tensor:
    """Out-of-fold logits of ``fit`` by stratified k-fold (k = the smallest class's count, at most 5): each
    example is predicted by a head fitted without it, every fold's training part holding every class.

    Refits everything inside each fold, ``C``'s choice included, so the estimate is not biased by it.
    """
    folds = cross_validation_folds(y)
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 examples of every class")
    logits = torch.zeros(len(y), num_classes)
    for train, held_out in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        logits[held_out] = head_logits(fit(x[train], y[train], num_classes, seed).module, x[held_out])
    return logits
