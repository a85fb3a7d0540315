"""Self-training's choices: the confidence threshold above which the kept model's predictions on the
unlabelled pool are taken as labels, chosen on the validation split, and the pseudo-labelled rows; and, for a
kept model scored by cross-validation, the fold-by-fold check (:func:`cross_validated_self_training`).

The search (:meth:`automl_tl.search.study.Search._self_train`) predicts the pool with the kept model, takes
the rows above the threshold as extra training rows for one fit of the same configuration, and keeps that
model only if it scores better on the validation split, which neither fit learnt from; or, when the kept
model was cross-validated, only if the same folds score better with the pseudo-labelled rows than without.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from automl_tl.backbone import Backbone
from automl_tl.config import TrialConfig
from automl_tl.data.bundle import VALIDATION_HOLDOUT, DatasetBundle, Split
from automl_tl.train.device import DeadlineReached
from automl_tl.train.embedding_heads import cross_validation_folds
from automl_tl.train.executor import STOP_OVER_BUDGET, STOP_TIME, EpochRecord, Executor, TrialResult, epoch_record

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


@dataclass(frozen=True)
class FoldCheck:
    """One fold of :func:`cross_validated_self_training`: the labelled rows its fits learnt from
    (``training_rows``) and the ``held_out`` rows they were scored on, how many pool rows the fold's own
    train-only fit pseudo-labelled, and the held-out scores without (``before``) and with them (``after``)."""

    training_rows: np.ndarray
    held_out: np.ndarray
    pseudo_labelled: int
    before: EpochRecord
    after: EpochRecord


@dataclass(frozen=True)
class CrossValidatedCheck:
    """The folds of :func:`cross_validated_self_training` and the with-pseudo-labels fits' out-of-fold logits
    on every labelled row (in the labelled split's order)."""

    folds: list[FoldCheck]
    out_of_fold: torch.Tensor

    @property
    def score_before(self) -> float:
        """The mean held-out score (higher is better) of the fits without pseudo-labelled rows."""
        return float(np.mean([f.before.val_score for f in self.folds]))

    @property
    def score_after(self) -> float:
        """The mean held-out score (higher is better) of the fits with the pseudo-labelled rows."""
        return float(np.mean([f.after.val_score for f in self.folds]))

    def mean_metric(self, metric: str, after: bool) -> float:
        """The folds' mean of ``metric`` in its own units, with (``after``) or without the pseudo-labelled rows."""
        return float(np.mean([(f.after if after else f.before).val_metrics[metric] for f in self.folds]))


def fit_head(
    executor: Executor,
    config: TrialConfig,
    backbone: Backbone,
    data: DatasetBundle,
    train: Split,
    deadline: float | None,
) -> TrialResult:
    """``config`` (a frozen-body one) fitted on ``train`` alone, nothing validated, for ``config.epochs``
    (the executor's refit: the last epoch kept); :class:`DeadlineReached` when the budget ran out."""
    nothing = Split.subset("nothing held out", train, (), np.empty(0, dtype=np.int64))
    bundle = replace(data, train=train, val=nothing, validation=VALIDATION_HOLDOUT)
    result = executor.fit(config, backbone, bundle, deadline=deadline, refit=True)
    if result.head is None or result.stop_reason in (STOP_TIME, STOP_OVER_BUDGET):
        result.release_model()
        raise DeadlineReached("the budget ran out during a fit of self-training")
    return result


@torch.no_grad()
def head_logits_of(head: torch.nn.Module, features: np.ndarray) -> torch.Tensor:
    """``head``'s logits (on the CPU) for cached ``features``, on the head's device."""
    device = next(head.parameters()).device
    return head.eval()(torch.as_tensor(features, dtype=torch.float32, device=device)).float().cpu()


def cross_validated_self_training(
    executor: Executor,
    config: TrialConfig,
    backbone: Backbone,
    data: DatasetBundle,
    labelled: Split,
    pool: Split,
    threshold: float,
    deadline: float | None = None,
) -> CrossValidatedCheck:
    """Whether pseudo-labelled pool rows help ``config``, by the stratified folds the executor cross-validates
    with (``config.seed``, :func:`~automl_tl.train.embedding_heads.cross_validation_folds`) on ``labelled``:
    in each fold, ``config`` is fitted on the fold's training rows alone, that fit pseudo-labels the pool
    (rows at or above ``threshold``), and ``config`` is fitted again on the training rows + those rows; both
    are scored on the held-out rows. The pseudo-labeller never saw the held-out rows, so nothing leaks into
    the score (a fold whose labeller takes no pool row scores the same both ways). Features are the cached
    ones; :class:`DeadlineReached` when the budget runs out."""
    y = np.asarray(labelled.labels)
    folds = cross_validation_folds(y)
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 labelled examples of every class")
    options = config.input_options
    labelled_x = executor.features(backbone, options, data, labelled, deadline=deadline)
    pool_x = executor.features(backbone, options, data, pool, deadline=deadline)
    checks: list[FoldCheck] = []
    out_of_fold = torch.zeros(len(y), len(data.classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for number, (training_rows, held_out) in enumerate(splitter.split(np.zeros(len(y)), y), 1):
        fold_train = Split.subset(f"fold {number} training rows", labelled, training_rows, y[training_rows])
        labeller = fit_head(executor, config, backbone, data, fold_train, deadline)
        before_logits = head_logits_of(labeller.head, labelled_x[held_out])
        rows, labels = pseudo_labels(torch.softmax(head_logits_of(labeller.head, pool_x), 1).numpy(), threshold)
        labeller.release_model()
        after_logits = before_logits
        if len(rows):
            pseudo = Split.subset(f"fold {number} pseudo-labelled", pool, rows, labels)
            student = fit_head(
                executor, config, backbone, data, Split.union(f"fold {number} + pseudo", fold_train, pseudo), deadline
            )
            after_logits = head_logits_of(student.head, labelled_x[held_out])
            student.release_model()
        out_of_fold[held_out] = after_logits
        checks.append(
            FoldCheck(
                training_rows,
                held_out,
                len(rows),
                epoch_record(1, 0.0, before_logits, y[held_out], config.metric, 0.0, 0.0),
                epoch_record(1, 0.0, after_logits, y[held_out], config.metric, 0.0, 0.0),
            )
        )
    return CrossValidatedCheck(checks, out_of_fold)
