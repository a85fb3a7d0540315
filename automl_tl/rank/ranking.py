"""Transferability pre-ranking: score each candidate backbone on cached features before fine-tuning.

The features come from the shared feature cache (so the probes and LP-FT trials that follow reuse
them); the scores are those of :mod:`automl_tl.rank.transferability`. Best-ranked first, the ranking
decides which backbones are tried first (warm-start trials) and, with ``top_k``, which are searched
at all. After the search, :func:`with_outcomes` puts each backbone's best fine-tuned accuracy next to
its scores with the Kendall rank correlation.

The pre-ranking keeps to a budget. It scores a stratified sample of at most
:data:`PRERANK_SAMPLE_SIZE` training examples (their features are the first rows of the training
split's cache entry, which the first probe completes). It first measures each backbone's inference on
a few batches, then computes features cheapest first, and under a deadline it uses at most
:data:`PRERANK_BUDGET_SHARE` of the time left: a backbone whose estimated cost does not fit is left
out of the ranking, and of the search (see :func:`searchable_backbones`), with the reason recorded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from automl_tl.backbone import Backbone
from automl_tl.data.bundle import DatasetBundle
from automl_tl.inputs import InputOptions
from automl_tl.rank.transferability import SCORES, kendall_tau, score_features
from automl_tl.train.device import DeadlineReached
from automl_tl.train.feature_cache import measure_inference, pretrained_model, samples_hash

logger = logging.getLogger(__name__)

PRIMARY_SCORE = "logme"  # the score the ranking sorts by
#: the scores are computed on at most this many training examples (stratified, seeded, every class kept):
#: LogME ranks backbones as well on 500-1,000 examples as on all, at a fraction of the features' cost
PRERANK_SAMPLE_SIZE = 1000
#: under a deadline, the pre-ranking (measuring, features, scores) uses at most this share of the time left
PRERANK_BUDGET_SHARE = 0.3
#: of the pre-ranking's time, measuring the backbones' costs uses at most about this share (split among them)
MEASURE_SHARE = 0.2
#: the ranking frame's columns (stored with the study, written to transferability.csv)
RANKING_COLUMNS = (
    "backbone",
    "rank",
    *SCORES,
    "scored_examples",
    "seconds_per_example",
    "estimated_seconds",
    "feature_seconds",
    "score_seconds",
    "skipped",
)


def stratified_sample(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of at most ``size`` examples (all when there are no more), drawn per class in
    proportion to its share (largest remainders), each class keeping at least one example; with more
    classes than ``size``, one example of each."""
    labels = np.asarray(labels)
    if len(labels) <= size:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * size / len(labels)
    taken = np.clip(np.floor(quotas).astype(int), 1, counts)
    while taken.sum() > size and (taken > 1).any():  # the small classes' one example each came from the others
        taken[np.argmax(np.where(taken > 1, taken - quotas, -np.inf))] -= 1
    for position in np.argsort(-(quotas - np.floor(quotas)), kind="stable"):  # largest remainders first
        if taken.sum() >= size:
            break
        if taken[position] < counts[position]:
            taken[position] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), number, replace=False) for label, number in zip(classes, taken)
    ]
    return np.sort(np.concatenate(chosen))


def rank_backbones(
    backbones: Sequence[Backbone],
    data: DatasetBundle,
    executor: Any,
    options: InputOptions,
    deadline: float | None = None,
    budget_share: float = PRERANK_BUDGET_SHARE,
    sample_size: int = PRERANK_SAMPLE_SIZE,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per backbone: its ``rank`` (1 = best), each transferability score on the features of a
    stratified sample of at most ``sample_size`` training examples (``scored_examples``), the measured
    ``seconds_per_example`` of its inference, the ``estimated_seconds`` of the features the ranking needed,
    and the seconds spent (``feature_seconds``: from the cache when present; ``score_seconds``).

    Backbones are measured first (:func:`~automl_tl.train.feature_cache.measure_inference`), then their features
    computed cheapest first. With ``deadline`` (a ``time.monotonic()`` value), the ranking ends within
    ``budget_share`` of the time left: a backbone whose features would not fit is left unranked, its reason in
    ``skipped``. Ranked backbones come first, best first; the unranked follow, cheapest first.
    """
    started = time.monotonic()
    allowance = None if deadline is None else budget_share * max(deadline - started, 0.0)
    until = None if allowance is None else started + allowance
    measure_allowance = None if allowance is None else MEASURE_SHARE * allowance / max(len(backbones), 1)
    split = data.train
    index = stratified_sample(split.labels, sample_size, seed) if len(split) > sample_size else None
    labels = split.labels if index is None else split.labels[index]
    examples = len(labels)
    samples = samples_hash(split.inputs)
    cache = executor.feature_cache

    rows: list[dict[str, Any]] = []
    built: dict[str, Any] = {}  # the models measured, kept for their features: each is built (loaded) once
    for backbone in backbones:  # what each backbone's features would cost
        preprocessor = backbone.preprocessor(options)
        row: dict[str, Any] = {
            **dict.fromkeys(RANKING_COLUMNS, math.nan),
            "backbone": backbone.name,
            "scored_examples": examples,
            "skipped": None,
        }
        out_of_time = until is not None and time.monotonic() >= until
        cached = (
            None
            if out_of_time
            else cache.cached_seconds_per_example(backbone, preprocessor, samples, len(split), index)
        )
        if out_of_time:
            row["skipped"] = "no time left to measure its cost"
        elif cached is not None:
            row.update(seconds_per_example=cached, estimated_seconds=0.0)  # reading them costs next to nothing
        else:
            items = executor.encoded(preprocessor, data, split)
            built[backbone.name] = pretrained_model(backbone, executor.device)
            cost = measure_inference(
                backbone,
                preprocessor,
                items,
                executor.device,
                max_seconds=measure_allowance,
                seed=seed,
                model=built[backbone.name],
            )
            row.update(seconds_per_example=cost.seconds_per_example, estimated_seconds=cost.estimate(examples))
        rows.append(row)
    by_name = {backbone.name: backbone for backbone in backbones}
    rows.sort(key=lambda row: math.inf if math.isnan(row["estimated_seconds"]) else row["estimated_seconds"])

    for row in rows:  # cheapest first
        if row["skipped"] is not None:
            continue
        backbone = by_name[row["backbone"]]
        left = None if until is None else until - time.monotonic()
        if left is not None and row["estimated_seconds"] > left:
            row["skipped"] = (
                f"its features were estimated at {row['estimated_seconds']:.1f}s; "
                f"{max(left, 0.0):.1f}s were left of the pre-ranking's share of the budget"
            )
            logger.warning("pre-ranking leaves %s out: %s", backbone.name, row["skipped"])
            continue
        logger.info(
            "pre-ranking: features of %s on %d examples (estimated %.1fs)",
            backbone.name,
            examples,
            row["estimated_seconds"],
        )
        feature_started = time.perf_counter()
        preprocessor = backbone.preprocessor(options)
        try:
            features = cache.features(
                backbone,
                preprocessor,
                lambda preprocessor=preprocessor: executor.encoded(preprocessor, data, split),
                samples,
                len(split),
                executor.device,
                deadline=until,
                index=index,
                model=built.pop(backbone.name, None),
            )
        except DeadlineReached:
            row["skipped"] = "the pre-ranking's share of the budget ran out while computing its features"
            logger.warning("pre-ranking leaves %s out: %s", backbone.name, row["skipped"])
            continue
        score_started = time.perf_counter()
        scores = score_features(features, labels)
        row.update(
            scores,
            feature_seconds=round(score_started - feature_started, 3),
            score_seconds=round(time.perf_counter() - score_started, 3),
        )
        logger.info(
            "transferability of %s: %s",
            backbone.name,
            ", ".join(f"{name} {value:.4g}" for name, value in scores.items()),
        )

    frame = pd.DataFrame(rows, columns=[c for c in RANKING_COLUMNS if c != "rank"])
    ranked = frame["skipped"].isna()
    frame = pd.concat(
        [frame[ranked].sort_values(PRIMARY_SCORE, ascending=False, kind="stable"), frame[~ranked]], ignore_index=True
    )
    frame.insert(1, "rank", pd.array([*range(1, int(ranked.sum()) + 1), *[None] * int((~ranked).sum())], dtype="Int64"))
    return frame


def searchable_backbones(ranking: pd.DataFrame) -> list[str]:
    """The backbones a search over ``ranking`` may use: the ranked ones, best first. When none could be
    ranked in time, the one estimated cheapest (unranked), so the search still has something to try."""
    ranked = ranking.dropna(subset=["rank"]).sort_values("rank")
    if len(ranked):
        return list(ranked["backbone"])
    by_cost = ranking.sort_values("estimated_seconds", na_position="last", kind="stable")
    return list(by_cost["backbone"][:1])


def with_outcomes(ranking: pd.DataFrame, best_accuracy: dict[str, float]) -> tuple[pd.DataFrame, dict[str, float]]:
    """``ranking`` with each backbone's best validation accuracy after fine-tuning, and the Kendall tau
    between each score and that accuracy over the backbones that finished a trial (nan under two)."""
    frame = ranking.copy()
    frame["best_val_accuracy"] = frame["backbone"].map(best_accuracy)
    taus = {}
    for name in SCORES:
        tried = frame.dropna(subset=["best_val_accuracy", name])  # an unranked backbone has no scores
        tau = kendall_tau(tried[name].tolist(), tried["best_val_accuracy"].tolist()) if len(tried) >= 2 else math.nan
        taus[name] = None if math.isnan(tau) else round(float(tau), 4)
    return frame, taus
