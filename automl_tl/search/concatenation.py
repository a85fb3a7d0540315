"""A feature-level ensemble candidate: one logistic-regression probe on the concatenated frozen embeddings of the
best-scoring backbones that had frozen-body trials.

Their features are cached already (the trials computed them, with the same input options), so the probe costs
about what those backbones' probes cost. It is fitted with the logistic-regression strategy's code (its ``C``
cross-validated; see :func:`automl_tl.train.embedding_heads.fit_concatenated_logistic_regression`) and scored on
the rows the trials were scored on: the validation split's (fitted on the training split), or every labelled
row out of fold when the trials were cross-validated on training + validation (then fitted on both). Its
validation probabilities make it one more candidate of the greedy ensemble selection
(:mod:`automl_tl.search.ensembling`), which keeps it only when the cross-validated gain over the best single
model is positive. On disk it is an ensemble member of its own kind (:mod:`automl_tl.results.concatenated`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from automl_tl.backbone import Backbone
from automl_tl.config import TrialConfig
from automl_tl.data.bundle import DatasetBundle
from automl_tl.heads import HeadSpec
from automl_tl.search.ensembling import Candidate
from automl_tl.strategies import LOGISTIC_REGRESSION, get_strategy
from automl_tl.train.embedding_heads import (
    FittedHead,
    cross_validated_logits,
    fit_concatenated_logistic_regression,
    head_logits,
)
from automl_tl.train.executor import FITTED_ON_TRAIN_AND_VAL, Executor

logger = logging.getLogger(__name__)

#: the most backbones one probe joins (the best-scoring ones): each adds its embedding's width to the probe
CONCATENATED_BACKBONES = 3
#: how the summary, the report and the card call the candidate
CONCATENATED_PROBE_NAME = "logistic regression on concatenated features"


@dataclass(frozen=True)
class ConcatenatedProbe:
    """A fitted concatenated-feature probe: the trial configs of its parts (a logistic regression on each joined
    backbone, with their shared input options), in the order their blocks were joined; the fitted head (one
    :class:`~automl_tl.train.head_modules.NormalisedLinearHead` per part, their logits summed) and its ``C``;
    what it was fitted on; its probabilities on the candidates' rows; the seconds it took."""

    configs: tuple[TrialConfig, ...]
    fitted: FittedHead
    fitted_on: str
    probabilities: np.ndarray
    seconds: float

    @property
    def backbones(self) -> tuple[str, ...]:
        return tuple(config.backbone for config in self.configs)

    def candidate(self) -> Candidate:
        """The probe as a candidate of ensemble selection (no trial of its own)."""
        return Candidate(None, None, self.probabilities, self.seconds, {}, joins=self.backbones)


def joinable(candidates: list[Candidate], limit: int = CONCATENATED_BACKBONES) -> list[Candidate]:
    """One frozen-body candidate per backbone, the best-scoring backbones first (``candidates`` come best first),
    at most ``limit``, all with the input options of the first (so that each backbone's cached features are
    those its trials used)."""
    chosen: list[Candidate] = []
    for candidate in candidates:
        if candidate.config is None or not get_strategy(candidate.config.strategy).frozen_body:
            continue
        if any(c.config.backbone == candidate.config.backbone for c in chosen):
            continue
        if chosen and candidate.config.input_options != chosen[0].config.input_options:
            continue
        chosen.append(candidate)
        if len(chosen) >= limit:
            break
    return chosen


def estimated_seconds(joined: list[Candidate], candidates: list[Candidate]) -> float:
    """What fitting the probe on ``joined``'s backbones should take: the sum, over them, of the mean seconds of
    their frozen-body trials among ``candidates`` (a probe costs about its features' width in fitting)."""
    total = 0.0
    for representative in joined:
        seconds = [
            c.seconds
            for c in candidates
            if c.config is not None
            and c.config.backbone == representative.config.backbone
            and get_strategy(c.config.strategy).frozen_body
        ]
        total += sum(seconds) / len(seconds)
    return total


def part_config(representative: Candidate) -> TrialConfig:
    """The trial config a part of the probe is saved with: its backbone's logistic regression, with the
    representative trial's input options and seed."""
    return replace(representative.config, strategy=LOGISTIC_REGRESSION, head=HeadSpec(kind="normalised_linear"))


def fit_concatenated_probe(
    executor: Executor,
    backbones: dict[str, Backbone],
    joined: list[Candidate],
    data: DatasetBundle,
    every_row: bool,
    seed: int,
    deadline: float | None = None,
) -> ConcatenatedProbe:
    """Fit the probe on the cached features of ``joined``'s backbones and score it on the candidates' rows:
    every labelled row out of fold when ``every_row`` (the folds reuse the ``C`` a fit on all of them chose, as
    the trials did; that fit is the probe), else the validation split (fitted on the training split).
    Computing features that are not cached stops with :class:`~automl_tl.train.device.DeadlineReached` once
    ``deadline`` passes."""
    started = time.perf_counter()
    configs = tuple(part_config(c) for c in joined)
    train, val = [], []
    for config in configs:
        backbone = backbones[config.backbone]
        train.append(executor.features(backbone, config.input_options, data, data.train, deadline=deadline))
        val.append(executor.features(backbone, config.input_options, data, data.val, deadline=deadline))
    widths = [block.shape[1] for block in train]
    balanced = configs[0].class_weighted
    num_classes = len(data.classes)

    fit = partial(fit_concatenated_logistic_regression, widths=widths, balanced=balanced)

    if every_row:
        x = np.concatenate([np.concatenate(train, axis=1), np.concatenate(val, axis=1)])
        y = np.concatenate([data.train.labels, data.val.labels])
        fitted = fit(x, y, num_classes, seed)
        logits = cross_validated_logits(fit, x, y, num_classes, seed, fitted.details)
        fitted_on = FITTED_ON_TRAIN_AND_VAL
    else:
        fitted = fit(np.concatenate(train, axis=1), data.train.labels, num_classes, seed)
        logits = head_logits(fitted.module, np.concatenate(val, axis=1))
        fitted_on = "train"
    probabilities = torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
    seconds = time.perf_counter() - started
    logger.info(
        "%s of %s (C=%g): fitted in %.1fs",
        CONCATENATED_PROBE_NAME,
        " + ".join(c.backbone for c in configs),
        fitted.details["C"],
        seconds,
    )
    return ConcatenatedProbe(configs, fitted, fitted_on, probabilities, seconds)


def refit_on_train_and_val(
    probe: ConcatenatedProbe, executor: Executor, backbones: dict[str, Backbone], data: DatasetBundle, seed: int
) -> FittedHead:
    """The probe fitted again on training + validation with the ``C`` it chose (its features are cached)."""
    blocks = [
        np.concatenate(
            [
                executor.features(backbones[c.backbone], c.input_options, data, data.train),
                executor.features(backbones[c.backbone], c.input_options, data, data.val),
            ]
        )
        for c in probe.configs
    ]
    y = np.concatenate([data.train.labels, data.val.labels])
    return fit_concatenated_logistic_regression(
        np.concatenate(blocks, axis=1),
        y,
        len(data.classes),
        seed,
        widths=[block.shape[1] for block in blocks],
        **probe.fitted.details,
    )
