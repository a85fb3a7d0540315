"""Heads fitted in one go on the frozen body's embeddings: nearest centroid and logistic regression.

With a handful of labelled examples per class, gradient training of a head (let alone of the body)
has little to learn from and nothing to stop it early; these two classics are the strong, cheap
baselines of few-shot transfer (nearest centroid as in SimpleShot, Wang et al. 2019; logistic
regression on frozen features as in the linear evaluation of CLIP and SimCLR). Each is fitted on the
cached embeddings in milliseconds to seconds and returned as a plain torch head, so the saved model is
an ordinary body + head in safetensors and predicts exactly what the fitted classifier predicts:

Both see the embeddings centred on the training mean and scaled to unit length (SimpleShot's
"CL2N": centring removes the direction every embedding shares, which otherwise dominates cosine
similarities), and both are saved as a :class:`~automl_tl.train.head_modules.NormalisedLinearHead`:

* nearest centroid: the linear layer's rows are the unit class means times
  :data:`CENTROID_TEMPERATURE`, bias 0 (the argmax is the nearest centroid by cosine);
* logistic regression: scikit-learn's ``LogisticRegression``, its ``C`` chosen by stratified
  cross-validation on the training examples; its ``coef_`` and ``intercept_`` are the linear layer.
  (On Fashion-MNIST and BBC News embeddings, normalised inputs beat standardised ones at 1 and 5
  shots and tied at 20.)

:func:`cross_validated_logits` gives out-of-fold predictions, how these strategies are validated when
there are too few labels to hold any out (see :func:`automl_tl.data.bundle.prepare_dataset`'s ``shots``).
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

from automl_tl.strategies import LOGISTIC_REGRESSION, NEAREST_CENTROID
from automl_tl.train.head_modules import NormalisedLinearHead, SummedBlockHeads

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


def fit_nearest_centroid(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    seed: int = 0,
    *,
    temperature: float = CENTROID_TEMPERATURE,
    balanced: bool = False,
) -> FittedHead:
    """Cosine nearest class mean of centred, L2-normalised embeddings (``seed`` is unused: nothing is random;
    ``balanced`` changes nothing: every class has one centroid, whatever its size)."""
    _check_every_class(y, num_classes)
    head, normalised = _normalised(x, num_classes)
    labels = torch.as_tensor(y)
    with torch.no_grad():
        means = torch.stack([normalised[labels == c].mean(0) for c in range(num_classes)])
        head.linear.weight.copy_(temperature * nn.functional.normalize(means, dim=1))
        head.linear.bias.zero_()
    return FittedHead(head.eval(), {"temperature": temperature})


def _logistic(
    x: np.ndarray, y: np.ndarray, c: float, seed: int, balanced: bool = False, start: LogisticRegression | None = None
) -> LogisticRegression:
    """Logistic regression of strength ``c`` on ``x``; ``start`` (fitted at a smaller C on the same rows) is
    refitted from where it stopped, which saves most iterations along a grid of growing C."""
    # One BLAS thread: these problems are tiny, and on a busy machine several spinning BLAS threads made
    # each fit 50 times slower (measured on 2 shared cores with OMP_NUM_THREADS=2).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # a large C on separable data stops at the iteration cap; that model still predicts well
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = (
            start
            if start is not None
            else LogisticRegression(
                max_iter=LOGISTIC_MAX_ITER,
                random_state=seed,
                class_weight="balanced" if balanced else None,
                warm_start=True,
            )
        )
        return model.set_params(C=c).fit(x, y)


def choose_logistic_c(x: np.ndarray, y: np.ndarray, seed: int, balanced: bool = False) -> float:
    """The grid's ``C`` with the best cross-validated accuracy on ``x`` (``balanced``: balanced accuracy, with
    classes weighted inversely to their frequency; ties: lower log loss, then the smaller C);
    :data:`DEFAULT_LOGISTIC_C` when some class has a single example."""
    folds = min(int(np.bincount(y).min()), MAX_INNER_FOLDS)
    if folds < 2:
        return DEFAULT_LOGISTIC_C
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = {c: np.empty_like(y) for c in LOGISTIC_C_GRID}
    log_loss = dict.fromkeys(LOGISTIC_C_GRID, 0.0)
    for train, held_out in splitter.split(x, y):
        model = None
        for c in LOGISTIC_C_GRID:  # growing C: each fit starts from the last one's solution
            model = _logistic(x[train], y[train], c, seed, balanced, start=model)
            probabilities = model.predict_proba(x[held_out])
            columns = np.searchsorted(model.classes_, y[held_out])
            predicted[c][held_out] = model.classes_[probabilities.argmax(1)]
            log_loss[c] -= float(np.log(np.clip(probabilities[np.arange(len(held_out)), columns], 1e-12, None)).sum())
    best: tuple[float, float] | None = None
    chosen = DEFAULT_LOGISTIC_C
    for c in LOGISTIC_C_GRID:
        hits = predicted[c] == y
        accuracy = float(np.mean([hits[y == k].mean() for k in np.unique(y)])) if balanced else float(hits.mean())
        score = (accuracy, -log_loss[c] / len(y))
        if best is None or score > best:
            best, chosen = score, c
    return chosen


def fit_logistic_regression(
    x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0, *, C: float | None = None, balanced: bool = False
) -> FittedHead:  # noqa: N803 - sklearn's name
    """Multinomial logistic regression on centred, L2-normalised embeddings, ``C`` by cross-validation
    unless given (a refit with the ``C`` an earlier fit chose); ``balanced`` weighs classes inversely to
    their frequency (imbalanced data selected by balanced accuracy or macro F1)."""
    _check_every_class(y, num_classes)
    head, normalised = _normalised(x, num_classes)
    inputs = normalised.numpy().astype(np.float64)
    c = choose_logistic_c(inputs, y, seed, balanced) if C is None else C
    model = _logistic(inputs, y, c, seed, balanced)
    coef, intercept = model.coef_, model.intercept_
    if num_classes == 2:  # scikit-learn keeps one row for two classes: logit(class 1) - logit(class 0)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    return FittedHead(head.eval(), {"C": c, **({"balanced": True} if balanced else {})})


def fit_concatenated_logistic_regression(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    seed: int = 0,
    *,
    widths: list[int],
    C: float | None = None,  # noqa: N803 - sklearn's name
    balanced: bool = False,
) -> FittedHead:
    """Logistic regression on several bodies' embeddings side by side: ``x`` holds the blocks (of ``widths``
    columns each) concatenated. Each block is centred on its own mean and scaled to unit length (so that no
    body outweighs another by the scale of its embeddings), the blocks are joined and divided by the square root
    of their number (unit length again), and one multinomial logistic regression is fitted on that, ``C`` by
    cross-validation as in :func:`fit_logistic_regression` unless given.

    The module is a :class:`~automl_tl.train.head_modules.SummedBlockHeads`: one
    :class:`~automl_tl.train.head_modules.NormalisedLinearHead` per block, holding its columns of the fitted
    layer (the bias shared out evenly), whose logits sum to the fitted classifier's."""
    _check_every_class(y, num_classes)
    if sum(widths) != x.shape[1] or len(widths) < 2:
        raise ValueError(f"blocks of widths {widths} do not split {x.shape[1]} columns into two or more")
    scale = float(np.sqrt(len(widths)))
    heads, normalised = [], []
    for block in np.split(x, np.cumsum(widths)[:-1], axis=1):
        head, inputs = _normalised(block, num_classes)
        heads.append(head)
        normalised.append(inputs.numpy().astype(np.float64) / scale)
    inputs = np.concatenate(normalised, axis=1)
    c = choose_logistic_c(inputs, y, seed, balanced) if C is None else C
    model = _logistic(inputs, y, c, seed, balanced)
    coef, intercept = model.coef_, model.intercept_
    if num_classes == 2:  # (one row for two classes, as in fit_logistic_regression)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    with torch.no_grad():
        for head, columns in zip(heads, np.split(coef, np.cumsum(widths)[:-1], axis=1)):
            head.linear.weight.copy_(torch.as_tensor(columns / scale, dtype=torch.float32))
            head.linear.bias.copy_(torch.as_tensor(intercept / len(widths), dtype=torch.float32))
    return FittedHead(SummedBlockHeads(heads, widths).eval(), {"C": c, **({"balanced": True} if balanced else {})})


FITTERS: dict[str, HeadFitter] = {NEAREST_CENTROID: fit_nearest_centroid, LOGISTIC_REGRESSION: fit_logistic_regression}


@torch.no_grad()
def head_logits(head: nn.Module, x: np.ndarray) -> torch.Tensor:
    """The head's logits for embeddings ``x`` (float32, on the CPU)."""
    head.eval()
    return head(torch.as_tensor(x, dtype=torch.float32)).float()


def cross_validation_folds(y: np.ndarray) -> int:
    """How many stratified folds ``y`` allows (at most :data:`MAX_FOLDS`); below 2, none."""
    return min(int(np.bincount(y).min()), MAX_FOLDS)


def cross_validated_logits(
    fit: HeadFitter, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, choices: dict[str, Any] | None = None
) -> torch.Tensor:
    """Out-of-fold logits of ``fit`` by stratified k-fold (k = the smallest class's count, at most 5): each
    example is predicted by a head fitted without it, every fold's training part holding every class.

    Without ``choices``, everything is refitted inside each fold, ``C``'s choice included, so the estimate is
    not biased by it (few shots, where that bias is large). With ``choices`` (what a fit on all of ``x``
    chose, e.g. ``{"C": 1.0}``), the folds reuse them: five times cheaper, and on hundreds of examples the
    choice hardly depends on the fold.
    """
    folds = cross_validation_folds(y)
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 examples of every class")
    logits = torch.zeros(len(y), num_classes)
    for train, held_out in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        fitted = fit(x[train], y[train], num_classes, seed, **(choices or {}))
        logits[held_out] = head_logits(fitted.module, x[held_out])
    return logits
