"""Transferability estimators: how well a frozen backbone's features suit a labelled task.

Each score is computed *before* fine-tuning, from the features a pretrained backbone
produces on the target data (an ``N x D`` float array) and the integer labels (``N``,
values ``0..C-1``). Higher is better for every score, so backbones can be ranked by
any of them; :func:`kendall_tau` measures how well such a ranking agrees with the
accuracies reached after fine-tuning.

- :func:`logme` -- You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained
  Models for Transfer Learning", ICML 2021.
- :func:`h_score` -- Bao et al., "An Information-theoretic Approach to Transferability
  in Task Transfer Learning", ICIP 2019; shrinkage form from Ibrahim, Ponomareva,
  Mazumder, "Newer is not always better: rethinking transferability metrics, their
  peculiarities, stability and performance", 2022.
- :func:`knn_accuracy` -- leave-one-out cosine k-nearest-neighbour accuracy.

All scores work in float64 and are vectorised: seconds for N=5000, D=1280, C=10.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg
from scipy.stats import kendalltau as _scipy_kendalltau
from sklearn.covariance import ledoit_wolf

from automl_tl.errors import DataError

__all__ = [
    "LOGME_MAX_ITER",
    "LOGME_TOL",
    "SCORES",
    "TransferabilityInputError",
    "h_score",
    "kendall_tau",
    "knn_accuracy",
    "logme",
    "score_features",
]

# LogME's fixed-point iteration stops when alpha/beta changes by less than this
# (relative), or after this many steps; the paper's released setting is 1e-3 / 11 steps,
# a larger cap only matters for the rare slowly converging class.
LOGME_TOL = 1e-3
LOGME_MAX_ITER = 50

# kNN similarity rows are computed in chunks of about this many float64 entries
# (32 MiB), so memory stays bounded whatever N is.
_KNN_CHUNK_ELEMENTS = 1 << 22

# Floor for LogME's alpha, beta and squared norms: keeps logs and divisions finite on
# degenerate inputs (all-zero features, exact fits) without touching ordinary values.
_TINY = math.sqrt(np.finfo(np.float64).tiny)


class TransferabilityInputError(DataError, ValueError):
    """Features or labels that no transferability score can use (a ``ValueError``)."""


# --------------------------------------------------------------------------- inputs


def _validate_features(features: object) -> np.ndarray:
    try:
        array = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TransferabilityInputError(f"features must be a numeric array: {exc}") from None
    if array.ndim != 2:
        raise TransferabilityInputError(f"features must be a 2-D array (samples x dimensions); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise TransferabilityInputError(
            f"features must have at least one sample and one dimension; got shape {array.shape}"
        )
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise TransferabilityInputError(f"features contain {bad} non-finite value(s) (NaN or inf)")
    return array


def _validate_labels(labels: object, n_samples: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise TransferabilityInputError(f"labels must be a 1-D array; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TransferabilityInputError(f"labels must be integers 0..C-1; got dtype {array.dtype}")
    if array.shape[0] != n_samples:
        raise TransferabilityInputError(
            f"features and labels have different lengths: {n_samples} feature rows vs {array.shape[0]} labels"
        )
    if array.min() < 0:
        raise TransferabilityInputError(f"labels must be in 0..C-1; got negative label {int(array.min())}")
    counts = np.bincount(array)
    if np.count_nonzero(counts) < 2:
        raise TransferabilityInputError(f"labels must contain at least 2 classes; got only class {int(array[0])}")
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise TransferabilityInputError(
            f"labels must cover every class 0..{counts.size - 1} with at least one sample; "
            f"classes with no samples: {missing.tolist()}"
        )
    return array.astype(np.intp, copy=False)


def _validate(features: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 features (N x D) and intp labels (N,), or raise a one-line error."""
    array = _validate_features(features)
    return array, _validate_labels(labels, array.shape[0])


# --------------------------------------------------------------------------- LogME


def _gram_spectrum(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values ``sigma`` of F and projected targets ``q = diag(s) U^T Y``.

    Equivalent to one thin SVD ``F = U diag(s) V^T`` but computed from the smaller Gram
    matrix (D x D when N >= D, N x N otherwise), which is several times faster than a
    full SVD; LogME only needs ``s^2`` and ``s * (U^T y)``, never ``s`` alone.
    """
    n, d = features.shape
    if n >= d:
        sigma, right = np.linalg.eigh(features.T @ features)
        # s_i (U^T y)_i = (V^T F^T y)_i: no division by possibly tiny singular values.
        projected = right.T @ (features.T @ targets)
    else:
        sigma, left = np.linalg.eigh(features @ features.T)
        projected = np.sqrt(np.clip(sigma, 0.0, None))[:, None] * (left.T @ targets)
    # Round-off can make null eigenvalues slightly negative; they are exactly 0.
    return np.clip(sigma, 0.0, None), projected


def _logme_class_evidence(sigma: np.ndarray, q: np.ndarray, y_sq_norm: float, n: int, d: int) -> float:
    """Maximised log evidence / N of a Bayesian linear model for one target column.

    Model (You et al. 2021): ``w ~ N(0, alpha^-1 I)``, ``y | F, w ~ N(F w, beta^-1 I)``.
    With ``A = alpha I + beta F^T F`` and posterior mean ``m = beta A^-1 F^T y`` every
    quantity is a sum over the spectrum of ``F^T F``:
    ``gamma = sum beta sigma / (alpha + beta sigma)``,
    ``|m|^2 = sum beta^2 q^2 / (alpha + beta sigma)^2``,
    ``|F m - y|^2 = |y|^2 - sum beta q^2 (2 alpha + beta sigma) / (alpha + beta sigma)^2``.
    """
    q2 = q * q
    rank = sigma.size  # the other d - rank eigenvalues of F^T F are 0

    def moments(alpha: float, beta: float) -> tuple[float, float, float, np.ndarray]:
        denom = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denom))
        m_sq = float(beta * beta * np.sum(q2 / denom**2))
        residual_sq = float(y_sq_norm - beta * np.sum(q2 * (2.0 * alpha + beta * sigma) / denom**2))
        # Floors: an exact fit or an all-zero projection would otherwise divide by 0.
        return gamma, max(m_sq, _TINY), max(residual_sq, _TINY * y_sq_norm, _TINY), denom

    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITER):
        ratio = alpha / beta
        gamma, m_sq, residual_sq, _ = moments(alpha, beta)
        # MacKay's fixed point for the evidence maximum (Algorithm 1 of the paper).
        alpha = max(gamma / m_sq, _TINY)
        beta = max((n - gamma) / residual_sq, _TINY)
        # m depends on alpha and beta only through alpha / beta, so that is what must settle.
        if abs(alpha / beta - ratio) / ratio < LOGME_TOL:
            break

    _, m_sq, residual_sq, denom = moments(alpha, beta)
    log_det_a = float(np.sum(np.log(denom))) + (d - rank) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2.0 * math.pi)
        - 0.5 * beta * residual_sq
        - 0.5 * alpha * m_sq
        - 0.5 * log_det_a
    )
    return evidence / n


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: mean over classes of the maximised, per-sample log evidence.

    From You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
    Transfer Learning" (ICML 2021). Each class's one-hot column is regressed on the
    features with a Bayesian linear model whose prior precision ``alpha`` and noise
    precision ``beta`` are set by the paper's fixed-point iteration; the log evidence at
    the optimum, divided by N, is averaged over classes. One spectral decomposition of
    the features serves every class, so each iteration costs O(min(N, D)).
    """
    features, labels = _validate(features, labels)
    n, d = features.shape
    n_classes = int(labels.max()) + 1
    one_hot = np.zeros((n, n_classes))
    one_hot[np.arange(n), labels] = 1.0
    sigma, projected = _gram_spectrum(features, one_hot)
    class_sizes = np.bincount(labels, minlength=n_classes)  # |y|^2 of a one-hot column
    evidences = [_logme_class_evidence(sigma, projected[:, c], float(class_sizes[c]), n, d) for c in range(n_classes)]
    return float(np.mean(evidences))


# --------------------------------------------------------------------------- H-score


def _between_class_factor(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``B`` (C x D) with ``B^T B = cov(E[f | y])``: rows ``sqrt(p_c) (mu_c - mu)``."""
    n_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    class_means = sums / counts[:, None]
    overall_mean = features.mean(axis=0)
    return np.sqrt(counts / features.shape[0])[:, None] * (class_means - overall_mean)


def _solve_covariance(covariance: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``covariance^-1 rhs`` by Cholesky; pseudo-inverse if it is singular."""
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(covariance, lower=True), rhs)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(covariance, hermitian=True) @ rhs


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score ``tr(cov(f)^-1 cov(E[f | y]))``, optionally with Ledoit-Wolf shrinkage.

    From Bao et al., "An Information-theoretic Approach to Transferability in Task
    Transfer Learning" (ICIP 2019). The plain score (``shrinkage=False``) uses the
    pseudo-inverse of the sample covariance; once D approaches N that covariance is
    singular and every feature set scores about C - 1. With ``shrinkage=True`` the
    covariance is the Ledoit-Wolf estimate ``(1 - a) cov(f) + a mu I`` and the
    between-class covariance is scaled by the same ``1 - a``, as in Ibrahim, Ponomareva,
    Mazumder, "Newer is not always better: rethinking transferability metrics, their
    peculiarities, stability and performance" (2022), which keeps the score stable.
    """
    features, labels = _validate(features, labels)
    between = _between_class_factor(features, labels)
    # tr(S^-1 B^T B) = sum(B * (S^-1 B^T)^T): C right-hand sides instead of a D x D inverse.
    if shrinkage:
        covariance, amount = ledoit_wolf(features)
        solved = _solve_covariance(covariance, between.T)
        scale = 1.0 - float(amount)
    else:
        centred = features - features.mean(axis=0)
        # Same 1/N normalisation as cov(E[f|y]); the trace does not depend on it.
        covariance = centred.T @ centred / features.shape[0]
        solved = np.linalg.pinv(covariance, hermitian=True) @ between.T
        scale = 1.0
    return float(scale * np.sum(between.T * solved))


# --------------------------------------------------------------------------- kNN


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # A zero row has no direction: leave it at 0 (cosine similarity 0 to everything).
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def _vote(neighbour_labels: np.ndarray, neighbour_sims: np.ndarray, n_classes: int) -> np.ndarray:
    """Majority class of each row's neighbours; ties go to the larger summed similarity."""
    rows = np.arange(neighbour_labels.shape[0])
    counts = np.zeros((rows.size, n_classes))
    sim_sums = np.zeros((rows.size, n_classes))
    for j in range(neighbour_labels.shape[1]):  # k is small; each step is one scatter
        counts[rows, neighbour_labels[:, j]] += 1.0
        sim_sums[rows, neighbour_labels[:, j]] += neighbour_sims[:, j]
    tied = counts == counts.max(axis=1, keepdims=True)
    return np.argmax(np.where(tied, sim_sums, -np.inf), axis=1)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy under cosine similarity.

    Each sample is classified by majority vote of its ``k`` most similar *other*
    samples (ties broken by summed similarity); ``k`` is capped at N - 1. Similarities
    are computed a block of rows at a time, so memory stays bounded for large N.
    """
    features, labels = _validate(features, labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TransferabilityInputError(f"k must be a positive integer; got {k!r}")
    n = features.shape[0]
    k = min(int(k), n - 1)
    n_classes = int(labels.max()) + 1
    unit = _l2_normalise(features)
    chunk = max(1, min(n, _KNN_CHUNK_ELEMENTS // n))
    correct = 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = unit[start:stop] @ unit.T
        local = np.arange(stop - start)
        sims[local, start + local] = -np.inf  # leave-one-out: a sample is not its own neighbour
        neighbours = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        predicted = _vote(labels[neighbours], np.take_along_axis(sims, neighbours, axis=1), n_classes)
        correct += int(np.count_nonzero(predicted == labels[start:stop]))
    return correct / n


# --------------------------------------------------------------------------- all scores

SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "logme": logme,
    "h_score": h_score,
    "knn_accuracy": knn_accuracy,
}


def score_features(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every score in :data:`SCORES` (with default settings), keyed by name."""
    features, labels = _validate(features, labels)  # once, so each score reuses the float64 copy
    return {name: float(score(features, labels)) for name, score in SCORES.items()}


# --------------------------------------------------------------------------- ranking


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences.

    Used to check a score's ranking of backbones against their fine-tuned accuracy.
    Returns NaN (without warnings) when there are fewer than 2 pairs or either sequence
    is constant, since tau-b is undefined there.
    """
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"kendall_tau needs sequences of equal length; got {xs.size} and {ys.size}")
    if xs.size < 2 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on degenerate input; NaN says enough
        return float(_scipy_kendalltau(xs, ys, variant="b").statistic)
