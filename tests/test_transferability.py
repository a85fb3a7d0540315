"""Transferability scores: agreement with plain reference formulas, ordering on
synthetic data whose transferability is known, invariances, and input checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from automl_tl.rank import transferability as tr
from automl_tl.rank.transferability import (
    SCORES,
    h_score,
    kendall_tau,
    knn_accuracy,
    logme,
    score_features,
)


def blobs(separation: float, n_per_class: int = 40, n_classes: int = 3, dim: int = 8, seed: int = 0):
    """Gaussian blobs: unit-variance noise around class means ``separation`` apart in scale.

    The same seed gives the same noise and mean directions at every separation, so only
    the separation changes between calls.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    directions = rng.standard_normal((n_classes, dim))
    noise = rng.standard_normal((labels.size, dim))
    return separation * directions[labels] + noise, labels


# --------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("name", sorted(SCORES))
def test_separated_classes_score_higher_than_noise(name):
    separated, labels = blobs(separation=3.0)
    noise, _ = blobs(separation=0.0)
    assert SCORES[name](separated, labels) > SCORES[name](noise, labels)


@pytest.mark.parametrize("name", ["logme", "h_score"])
def test_score_increases_with_class_separation(name):
    scores = [SCORES[name](*blobs(separation=s)) for s in (0.3, 1.0, 2.0)]
    assert scores[0] < scores[1] < scores[2]


def test_knn_accuracy_does_not_decrease_with_class_separation():
    scores = [knn_accuracy(*blobs(separation=s)) for s in (0.0, 0.5, 2.0)]
    assert scores[0] <= scores[1] <= scores[2]
    assert scores[2] > scores[0] + 0.3


def test_score_features_returns_every_score():
    features, labels = blobs(separation=1.0)
    result = score_features(features, labels)
    assert set(result) == {"logme", "h_score", "knn_accuracy"}
    for name, value in result.items():
        assert isinstance(value, float)
        assert value == pytest.approx(SCORES[name](features, labels), rel=1e-12)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_scores_ignore_sample_order_and_class_ids(name):
    features, labels = blobs(separation=1.0, seed=3)
    score = SCORES[name](features, labels)
    order = np.random.default_rng(1).permutation(labels.size)
    assert SCORES[name](features[order], labels[order]) == pytest.approx(score, rel=1e-9)
    relabel = np.array([2, 0, 1])
    assert SCORES[name](features, relabel[labels]) == pytest.approx(score, rel=1e-9)


# --------------------------------------------------------------------------- LogME


def reference_logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME written plainly: per class, eigh of F^T F, explicit A, m and log|A|."""
    n, d = features.shape
    gram = features.T @ features
    sigma = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    evidences = []
    for c in range(labels.max() + 1):
        y = (labels == c).astype(float)

        def posterior(alpha, beta):
            a = alpha * np.eye(d) + beta * gram
            m = beta * np.linalg.solve(a, features.T @ y)
            return a, m

        alpha, beta = 1.0, 1.0
        for _ in range(tr.LOGME_MAX_ITER):
            ratio = alpha / beta
            _, m = posterior(alpha, beta)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            alpha = gamma / (m @ m)
            beta = (n - gamma) / np.sum((features @ m - y) ** 2)
            if abs(alpha / beta - ratio) / ratio < tr.LOGME_TOL:
                break
        a, m = posterior(alpha, beta)
        evidence = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((features @ m - y) ** 2)
            - alpha / 2 * (m @ m)
            - np.linalg.slogdet(a)[1] / 2
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n, d", [(25, 40), (60, 12)], ids=["N<D", "N>D"])
def test_logme_matches_reference(n, d):
    rng = np.random.default_rng(n * d)
    labels = np.arange(n) % 3
    features = rng.standard_normal((n, d)) + 0.8 * rng.standard_normal((3, d))[labels]
    assert logme(features, labels) == pytest.approx(reference_logme(features, labels), rel=1e-6)


def test_logme_of_featureless_input_is_the_noise_only_evidence():
    # With F = 0 each one-hot column is pure noise: beta = N / n_c and the evidence/N is
    # 0.5 log(beta) - 0.5 log(2 pi) - 0.5 per class.
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    expected = np.mean([0.5 * np.log(8 / nc) - 0.5 * np.log(2 * np.pi) - 0.5 for nc in (3, 5)])
    assert logme(np.zeros((8, 4)), labels) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- H-score


def test_h_score_without_shrinkage_matches_plain_formula():
    features, labels = blobs(separation=1.0, n_per_class=50, dim=5, seed=2)
    class_means = np.stack([features[labels == c].mean(axis=0) for c in range(3)])
    expected = np.trace(np.linalg.pinv(np.cov(features.T)) @ np.cov(class_means[labels].T))
    assert h_score(features, labels, shrinkage=False) == pytest.approx(expected, rel=1e-9)


def test_h_score_with_shrinkage_matches_ledoit_wolf_formula():
    features, labels = blobs(separation=1.0, n_per_class=20, dim=30, seed=4)
    lw = LedoitWolf().fit(features)
    class_means = np.stack([features[labels == c].mean(axis=0) for c in range(3)])
    between = np.cov(class_means[labels].T, bias=True)
    expected = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * between))
    assert h_score(features, labels) == pytest.approx(expected, rel=1e-9)


def test_shrinkage_keeps_h_score_discriminative_when_dimension_exceeds_samples():
    separated, labels = blobs(separation=1.0, n_per_class=15, dim=120)
    noise, _ = blobs(separation=0.0, n_per_class=15, dim=120)
    # Unshrunk, the singular covariance makes any features reach the maximum, C - 1.
    assert h_score(noise, labels, shrinkage=False) == pytest.approx(2.0, rel=1e-6)
    assert h_score(noise, labels) < h_score(separated, labels) < 2.0


# --------------------------------------------------------------------------- kNN


def on_circle(degrees) -> np.ndarray:
    radians = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def two_clusters_and_an_intruder():
    # Class 0 near 0 degrees, class 1 near 90 degrees, and one class-0 point inside class 1.
    features = on_circle([0, 1, 2, 3, 88, 89, 90, 91, 89.5])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    return features, labels


def test_knn_accuracy_exact_on_hand_made_set():
    features, labels = two_clusters_and_an_intruder()
    # k=3: only the intruder is wrong (its neighbours are all class 1).
    assert knn_accuracy(features, labels, k=3) == pytest.approx(8 / 9)
    # k=1: the intruder, and the two class-1 points whose nearest point is the intruder.
    assert knn_accuracy(features, labels, k=1) == pytest.approx(6 / 9)


def test_knn_accuracy_uses_cosine_similarity():
    features, labels = two_clusters_and_an_intruder()
    scales = np.linspace(0.1, 10.0, labels.size)[:, None]
    assert knn_accuracy(features * scales, labels, k=3) == pytest.approx(8 / 9)


def test_knn_excludes_the_sample_itself():
    # Tight pairs of opposite classes: each point's nearest other point is of the other class.
    features = on_circle([0, 2, 90, 92, 180, 182])
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert knn_accuracy(features, labels, k=1) == 0.0


def test_knn_ties_go_to_the_more_similar_class():
    features = on_circle([0, 6, 10, 120, 250])
    labels = np.array([1, 1, 2, 0, 0])
    # k=2. 0 deg: neighbours 6 (class 1) and 10 (class 2) tie, 6 is nearer -> 1, right.
    # 6 deg: 10 (class 2) and 0 (class 1) tie, 10 is nearer -> 2, wrong. 10 deg: two class 1,
    # wrong. 120 deg: 10 (class 2) and 6 (class 1) tie -> 2, wrong. 250 deg: 0 and 6, wrong.
    # (Breaking ties by lowest class id instead would give 2/5.)
    assert knn_accuracy(features, labels, k=2) == pytest.approx(1 / 5)


def test_knn_chunking_gives_the_same_answer_as_brute_force(monkeypatch):
    features, labels = blobs(separation=0.7, n_per_class=15, seed=5)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    k, correct = 5, 0
    for i in range(labels.size):
        nearest = np.argsort(-sims[i])[:k]
        votes = np.bincount(labels[nearest], minlength=3).astype(float)
        votes += 1e-6 * np.bincount(labels[nearest], weights=sims[i, nearest], minlength=3)
        correct += int(np.argmax(votes) == labels[i])
    monkeypatch.setattr(tr, "_KNN_CHUNK_ELEMENTS", 7 * labels.size)  # 7-row blocks
    assert knn_accuracy(features, labels, k=k) == pytest.approx(correct / labels.size)


def test_knn_caps_k_at_n_minus_one():
    features = on_circle([0, 1, 2, 90])
    labels = np.array([0, 0, 0, 1])
    assert knn_accuracy(features, labels, k=50) == knn_accuracy(features, labels, k=3) == 0.75


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_knn_rejects_bad_k(k):
    features, labels = blobs(separation=1.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_accuracy(features, labels, k=k)


# --------------------------------------------------------------------------- kendall_tau


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant


@pytest.mark.parametrize("x, y", [([1, 2, 3], [5, 5, 5]), ([7, 7], [1, 2]), ([1], [2]), ([], [])])
def test_kendall_tau_undefined_is_nan_without_warnings(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(kendall_tau(x, y))


def test_kendall_tau_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- bad input

GOOD_FEATURES = np.random.default_rng(0).standard_normal((6, 3))
GOOD_LABELS = np.array([0, 0, 0, 1, 1, 1])
NAN_FEATURES = GOOD_FEATURES.copy()
NAN_FEATURES[2, 1] = np.nan

BAD_INPUTS = {
    "1-D features": (GOOD_FEATURES[:, 0], GOOD_LABELS, "2-D"),
    "NaN features": (NAN_FEATURES, GOOD_LABELS, "non-finite"),
    "mismatched lengths": (GOOD_FEATURES, GOOD_LABELS[:5], "different lengths"),
    "single class": (GOOD_FEATURES, np.zeros(6, dtype=int), "at least 2 classes"),
    "single nonzero class": (GOOD_FEATURES, np.full(6, 2), "at least 2 classes; got only class 2"),
    "float labels": (GOOD_FEATURES, GOOD_LABELS.astype(float), "integers"),
    "2-D labels": (GOOD_FEATURES, GOOD_LABELS[:, None], "1-D"),
    "negative label": (GOOD_FEATURES, GOOD_LABELS - 1, "negative"),
    "missing class id": (GOOD_FEATURES, GOOD_LABELS * 2, r"no samples: \[1\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("name", sorted(SCORES) + ["score_features"])
def test_bad_input_raises_value_error_naming_the_problem(name, case):
    score = score_features if name == "score_features" else SCORES[name]
    features, labels, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message) as caught:
        score(features, labels)
    assert "\n" not in str(caught.value)
