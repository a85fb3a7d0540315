"""Transferability pre-ranking: score each candidate backbone on cached features before fine-tuning.

The features of the training split come from the shared feature cache (so the probes and
LP-FT trials that follow reuse them); the scores are those of :mod:`automl_tl.transferability`.
Best-ranked first, the ranking decides which backbones are tried first (warm-start trials)
and, with ``top_k``, which are searched at all. After the search, :func:`with_outcomes` puts
each backbone's best fine-tuned accuracy next to its scores with the Kendall rank correlation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from automl_tl.backbone import Backbone, InputOptions
from automl_tl.data import DatasetBundle
from automl_tl.space import SearchSpace
from automl_tl.transferability import SCORES, kendall_tau, score_features

logger = logging.getLogger(__name__)

PRIMARY_SCORE = "logme"  # the score the ranking sorts by
#: kNN's cost grows with the square of the samples: beyond this many, score a fixed random subset
MAX_SCORED_SAMPLES = 5000


def rank_backbones(backbones: Sequence[Backbone], data: DatasetBundle, executor: Any,
                   options: InputOptions) -> pd.DataFrame:
    """One row per backbone: each transferability score on the training features, and the seconds spent
    (features, from the cache when present, plus scoring). Sorted best first, with a 1-based ``rank``."""
    rows = []
    for backbone in backbones:
        started = time.perf_counter()
        features = executor.features(backbone, options, data, data.train)
        feature_seconds = time.perf_counter() - started
        labels = data.train.labels
        if len(labels) > MAX_SCORED_SAMPLES:
            chosen = np.random.default_rng(0).choice(len(labels), MAX_SCORED_SAMPLES, replace=False)
            features, labels = features[chosen], labels[chosen]
        scores = score_features(features, labels)
        rows.append({"backbone": backbone.name, **scores, "feature_seconds": round(feature_seconds, 3),
                     "score_seconds": round(time.perf_counter() - started - feature_seconds, 3)})
        logger.info("transferability of %s: %s", backbone.name,
                    ", ".join(f"{name} {value:.4g}" for name, value in scores.items()))
    frame = pd.DataFrame(rows).sort_values(PRIMARY_SCORE, ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(1, "rank", range(1, len(frame) + 1))
    return frame


def warm_start_params(ranking: pd.DataFrame, space: SearchSpace) -> list[dict[str, Any]]:
    """The trials to run first, best-ranked backbone first, cheapest kind first.

    A nearest centroid of every backbone (a moment on the cached embeddings), then a linear probe of every
    backbone (nearly free on cached features, and it checks the ranking against real accuracy), then one
    fine-tuning of the best-ranked backbone at middle-of-the-range settings, so the sampler starts from a
    strong point instead of random ones, then a logistic regression of every backbone (seconds each: its
    regularisation is cross-validated).
    """
    order = [name for name in ranking["backbone"] if name in space.backbones]
    base = space.default_params()

    def of_every_backbone(strategy: str) -> list[dict[str, Any]]:
        return [{**base, "backbone": name, "strategy": strategy} for name in order] if strategy in space.strategies else []

    trials = of_every_backbone("nearest_centroid") + of_every_backbone("linear_probe")
    fine_tune = next((s for s in ("lp_ft", "full", "last_k") if s in space.strategies), None)
    if order and fine_tune is not None:
        trials.append({**base, "backbone": order[0], "strategy": fine_tune})
    return trials + of_every_backbone("logistic_regression")


def with_outcomes(ranking: pd.DataFrame, best_accuracy: dict[str, float]) -> tuple[pd.DataFrame, dict[str, float]]:
    """``ranking`` with each backbone's best validation accuracy after fine-tuning, and the Kendall tau
    between each score and that accuracy over the backbones that finished a trial (nan under two)."""
    frame = ranking.copy()
    frame["best_val_accuracy"] = frame["backbone"].map(best_accuracy)
    tried = frame.dropna(subset=["best_val_accuracy"])
    taus = {}
    for name in SCORES:
        tau = kendall_tau(tried[name].tolist(), tried["best_val_accuracy"].tolist()) if len(tried) >= 2 else math.nan
        taus[name] = None if math.isnan(tau) else round(float(tau), 4)
    return frame, taus
