"""The one fine-tuning loop every trial runs through. It knows nothing of Optuna.

Reads top to bottom: encode the data once (cached across trials), build the model with the
trial's head, then one of two paths that share the same epoch loop:

* **head on features** (linear probe, and the first stage of LP-FT): the frozen body's features
  come from the on-disk :class:`~automl_tl.train.feature_cache.FeatureCache`, and only the head trains;
* **fine-tuning** (last-k groups, full; BitFit, norm-only, LoRA): the body runs on every batch and the trained
  groups learn at layer-wise decayed rates (BitFit's biases, norm-only's norms and LoRA's adapters at one rate;
  LoRA's adapters are merged into the body once the best epoch is restored).

The embedding strategies (nearest centroid, logistic regression) take a third, shorter path: the
head is fitted in one go on the same cached features (:mod:`automl_tl.train.embedding_heads`) and
validated on the validation split, or by cross-validation on the training split when the data set
has too few labels to hold any out; their history has one "epoch".

Both use AdamW, linear warm-up then cosine decay, gradient clipping, per-epoch validation
reported through ``on_epoch``, early stopping, a deadline checked per batch, and restore
the best epoch's weights. Mixed precision on CUDA. Fine-tuning then tries a greedy weight soup of its best
epochs (:mod:`automl_tl.train.weight_soup`) and keeps it if it validates no worse.

Fine-tuning's training batches get the trial's augmentation (:mod:`automl_tl.augmentation`): the preprocessor's
own (:meth:`~automl_tl.backbone.Preprocessor.augmented`) when they are collated, and mixup/CutMix (timm's
``Mixup``) once they are on the device, with soft targets the loss takes as they are. Validation batches and the
cached features of the head-on-features path are never augmented.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn
from tqdm.auto import tqdm

from automl_tl.augmentation import BATCH_AUGMENTATIONS, MIXUP, NO_AUGMENTATION
from automl_tl.backbone import Backbone, Preprocessor
from automl_tl.config import TrialConfig
from automl_tl.data.bundle import VALIDATION_CROSS, VALIDATION_HOLDOUT, DatasetBundle, Split
from automl_tl.errors import ConfigError, first_line
from automl_tl.inputs import InputOptions
from automl_tl.metrics import all_metrics, class_weights, signed
from automl_tl.strategies import BODY_ADAPTERS, BODY_BIASES, BODY_NORMS, FULL, LAST_K, get_strategy
from automl_tl.train.device import (
    DeadlineReached,
    autocast,
    batched_inference,
    default_device,
    move_to,
    on_device,
    release_memory,
)
from automl_tl.train.embedding_heads import FITTERS, cross_validated_logits, cross_validation_folds, head_logits
from automl_tl.train.feature_cache import FeatureCache, samples_hash
from automl_tl.train.head_modules import build_head
from automl_tl.train.lora import add_adapters, merge_adapters
from automl_tl.train.weight_soup import PRUNED, TOO_LARGE, Checkpoints, changing_state_keys, greedy_soup
from automl_tl.transfer_model import TransferModel

logger = logging.getLogger(__name__)

#: called after each epoch with (epoch, validation score: the trial's metric, higher is better); True stops the trial
EpochCallback = Callable[[int, float], bool]

STOP_COMPLETED = "completed"  # ran every epoch
STOP_EARLY = "early_stopping"  # validation accuracy stopped improving
STOP_CALLBACK = "stopped_by_callback"  # on_epoch asked to stop (the search prunes the trial)
STOP_TIME = "time_budget"  # the deadline passed
STOP_OVER_BUDGET = "over_budget"  # the first batches showed that one epoch would not finish before the deadline
#: how validation scored a trial (``TrialResult.extra["validation"]``): cheap trials on a small validation
#: split are cross-validated on training + validation, and their model is then fitted on both
VALIDATED_BY_CROSS_VALIDATION = "cross_validation"
#: ``TrialResult.extra`` key: seconds a frozen-body trial spent getting its features (cache misses computed)
FEATURES_SECONDS = "features_seconds"
FITTED_ON_TRAIN_AND_VAL = "train+validation"
#: training steps timed before an epoch's cost is projected against the deadline
STEPS_BEFORE_PROJECTION = 2
# Kept free before the deadline when epochs are re-planned: a short epoch's wall-clock varies by more than a tenth.
EPOCH_SLACK_SECONDS = 0.5
#: cheaper configurations tried when one epoch of a trial would not fit the budget left (see Executor.fit)
CHEAPER_ATTEMPTS = 2

#: words of the RuntimeErrors that mean an allocation failed (CUDA, MPS, and torch's CPU allocator)
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory")


class StrategyNotApplicable(ValueError):
    """A trial's strategy has nothing of its backbone to train (norm-only tuning of a body with no normalisation
    layer, say): the search prunes it at once, with this message as its reason."""


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of memory at its batch size and again at half of it (see :meth:`Executor.fit`).

    Not an :class:`~automl_tl.errors.AutomlTLError`: the search records the trial as failed and goes on.
    """


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says an allocation failed: ``torch.OutOfMemoryError`` (CUDA), ``MemoryError``, or a
    RuntimeError whose message says so (torch's CPU allocator, MPS)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error).lower() for words in _OUT_OF_MEMORY_MESSAGES)


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    train_seconds: float  # the training batches alone
    val_seconds: float  # evaluating on the validation split
    val_score: float = math.nan  # the trial's metric, higher is better (log loss negated); see automl_tl.metrics
    val_metrics: dict[str, float] = field(default_factory=dict)  # every metric, in its own units
    #: the validation logits (CPU) the metrics came from, for ensemble selection after the search; their rows are
    #: the validation split's, or training + validation's when the trial was cross-validated (see TrialResult)
    val_logits: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def rank_key(self) -> tuple[float, float, int]:
        """How epochs (and trials) are compared: the score, then the lower validation loss, then the earlier."""
        return (self.val_score, -self.val_loss, -self.epoch)


@dataclass
class TrialResult:
    """What one run of :meth:`Executor.fit` produced."""

    config: TrialConfig
    history: list[EpochRecord]
    stop_reason: str
    seconds: float  # wall-clock, including encoding on a cache miss
    cpu_seconds: float  # process CPU time (all threads)
    samples_seen: int  # training examples passed forward, summed over epochs
    model: TransferModel | None = None  # best epoch's weights; None when no epoch finished (see final_model)
    trial_number: int | None = None  # set by the search
    state: str = ""  # set by the search: COMPLETE, PRUNED or FAIL
    error: str | None = None  # set by the search for failed trials
    extra: dict[str, Any] = field(default_factory=dict)
    #: builds ``model`` on demand: a linear probe trains only a head, and the body is loaded only if wanted
    model_builder: Callable[[], TransferModel] | None = None
    #: a frozen-body fit's trained head alone, to predict cached features with (self-training's folds) without
    #: building the body; None for the other fits
    head: nn.Module | None = None
    #: the validation of ``model`` when its weights are a greedy soup of several epochs (see
    #: :mod:`automl_tl.train.weight_soup`), none of ``history``'s: it is then the trial's best record. Kept apart
    #: from ``history`` so that the epochs run, their costs and the pruner's per-epoch scores stay the epochs'.
    soup_record: EpochRecord | None = None

    @property
    def has_model(self) -> bool:
        return self.model is not None or self.model_builder is not None

    @property
    def fit_seconds(self) -> float:
        """Wall-clock seconds of the fit alone: :attr:`seconds` less the time a frozen-body trial spent getting
        its features (``extra["features_seconds"]``: computing them on a cache miss, paid once per backbone).
        What fitting the same head again on cached features costs (an ensemble member, self-training)."""
        return max(self.seconds - float(self.extra.get(FEATURES_SECONDS, 0.0)), 0.0)

    def final_model(self) -> TransferModel | None:
        """The best epoch's whole model (building it from the body and the trained head if needed)."""
        if self.model is None and self.model_builder is not None:
            self.model = self.model_builder()
            self.model_builder = None
        return self.model

    def release_model(self) -> None:
        self.model = self.model_builder = None

    @property
    def best_record(self) -> EpochRecord | None:
        """The epoch whose weights the result keeps: the best score, ties to the lower validation loss; or the
        weight soup's record when the result keeps a soup (:attr:`soup_record`)."""
        if self.soup_record is not None:
            return self.soup_record
        return max(self.history, key=lambda r: r.rank_key) if self.history else None

    @property
    def best_epoch(self) -> int | None:
        return None if not self.history else self.best_record.epoch

    @property
    def best_val_accuracy(self) -> float | None:
        return None if not self.history else self.best_record.val_accuracy

    @property
    def best_score(self) -> float | None:
        """The best epoch's validation score (the trial's metric, higher is better)."""
        return None if not self.history else self.best_record.val_score


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    preprocessor: Preprocessor,
    items: Sequence[Any],
    batch_size: int,
    device: torch.device,
    deadline: float | None = None,
) -> torch.Tensor:
    """Logits for encoded ``items`` in order, in eval mode, on ``device``; returned on the CPU (see
    :func:`~automl_tl.train.device.batched_inference`: past ``deadline``, :class:`DeadlineReached`)."""
    model.eval()

    def forward(batch: Any) -> torch.Tensor:
        with autocast(device):
            return model(batch).float().cpu()

    logits = batched_inference(forward, preprocessor, items, batch_size, device, deadline, what="prediction")
    return torch.empty(0) if logits is None else logits


class WarmupCosine:
    """Multiplier of the peak learning rate at each step: linear warm-up, then cosine decay to 0.

    ``total_steps`` may be lowered while training (a trial re-planned to fewer epochs to fit the budget):
    the decay then ends with the new last step instead of being cut off high."""

    def __init__(self, total_steps: int, warmup_fraction: float):
        self.warmup_fraction = warmup_fraction
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        warmup = max(1, int(round(self.warmup_fraction * self.total_steps)))
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_trained_body(model: TransferModel, config: TrialConfig, lora_targets: Sequence[str] = ()) -> None:
    """Make trainable what ``config``'s strategy trains (:attr:`Strategy.body <automl_tl.strategies.Strategy>`):
    the head, and the body's biases (BitFit), its normalisation layers' parameters (norm-only), or its last
    ``trained_groups`` layer groups (all of them for full fine-tuning, none for a frozen body), or LoRA adapters
    added beside its ``lora_targets`` (the backbone's, see :attr:`Backbone.lora_targets`; merged by
    :func:`~automl_tl.train.lora.merge_adapters` once trained).
    :class:`StrategyNotApplicable` when the body has none of the parameters the strategy trains."""
    body = get_strategy(config.strategy).body
    if body == BODY_ADAPTERS:
        if not lora_targets:
            raise StrategyNotApplicable(f"{config.backbone} offers no layers for LoRA to adapt")
        try:
            add_adapters(model, lora_targets, config.lora_rank, config.lora_alpha, config.lora_dropout)
        except ValueError as exc:
            raise StrategyNotApplicable(f"{config.backbone}: {exc}") from exc
        return
    if body not in (BODY_BIASES, BODY_NORMS):
        model.set_trained_groups(config.trained_depth(model.num_groups))
        return
    names = model.bias_names() if body == BODY_BIASES else model.norm_parameter_names()
    if not names:
        kind = "bias parameters" if body == BODY_BIASES else "normalisation layers"
        raise StrategyNotApplicable(f"{config.backbone} has no {kind} for {config.strategy} to train")
    model.set_trained_parameters(names)  # (a batch norm's statistics follow its parameters: see TransferModel.train)
    if body == BODY_BIASES:
        model.freeze_norm_statistics = True  # biases alone change: the batch norms keep their statistics


def _with_and_without_decay(parameters: list[nn.Parameter], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    # Biases and normalisation weights (1-D) get no weight decay.
    decay = [p for p in parameters if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in parameters if p.requires_grad and p.ndim < 2]
    return ([{"params": decay, "lr": lr, "weight_decay": weight_decay}] if decay else []) + (
        [{"params": no_decay, "lr": lr, "weight_decay": 0.0}] if no_decay else []
    )


def parameter_groups(model: TransferModel, config: TrialConfig, head_lr: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups: the head at ``head_lr`` (default ``config.head_lr``); each trained body layer group
    at ``backbone_lr * layer_decay ** k``, k counting groups down from the top one (for the strategies that
    use ``layer_decay``; the others train the whole body at ``backbone_lr``)."""
    groups = _with_and_without_decay(
        list(model.head.parameters()), config.head_lr if head_lr is None else head_lr, config.weight_decay
    )
    if get_strategy(config.strategy).trains_few_parameters:
        # Biases, norms or adapters, wherever they are: one rate (no layer decay: see FEW_BODY_PARAMETERS), and
        # no layer groups to follow (adapters are not in them).
        return groups + _with_and_without_decay(list(model.body.parameters()), config.backbone_lr, config.weight_decay)
    body = dict(model.body.named_parameters())
    for distance, names in enumerate(reversed(model.layer_groups)):
        lr = config.backbone_lr * config.layer_decay**distance
        groups += _with_and_without_decay([body[name] for name in names], lr, config.weight_decay)
    return groups


@dataclass
class _Loop:
    """What the epoch loop needs, whichever path: the trained module and how to feed and judge it."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    batches: Callable[[torch.Generator], Iterator[tuple[Any, torch.Tensor]]]  # one epoch of (inputs, targets)
    #: validation logits on the CPU, given the deadline; None (a refit): nothing to validate, the last epoch is kept
    validate: Callable[[float | None], torch.Tensor] | None
    description: str
    num_classes: int
    train_labels: np.ndarray  # for the class weights of the loss
    val_labels: np.ndarray | None
    #: examples validated per epoch: with ``project``, the first steps' cost is projected over a whole epoch and its
    #: validation, and the trial stops at once (STOP_OVER_BUDGET) when that would not finish before the deadline
    val_examples: int = 0
    project: bool = False
    notes: dict[str, Any] = field(default_factory=dict)  # what the loop measured (``projected_epoch_seconds``)
    #: mixes a training batch on the device: (inputs, class indices) -> (mixed inputs, soft targets); None: not mixed
    mix: Callable[[Any, torch.Tensor], tuple[Any, torch.Tensor]] | None = None
    #: the best epochs' changing tensors, kept for a weight soup; None: no soup
    checkpoints: Checkpoints[EpochRecord] | None = None


def _empty_result(
    config: TrialConfig,
    started: float,
    cpu_started: float,
    stop_reason: str = STOP_TIME,
    extra: dict[str, Any] | None = None,
) -> TrialResult:
    """A trial that produced no model (the budget ran out first)."""
    return TrialResult(
        config=config,
        history=[],
        stop_reason=stop_reason,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        samples_seen=0,
        extra=extra or {},
    )


def epoch_record(
    epoch: int,
    train_loss: float,
    val_logits: torch.Tensor | None,
    val_labels: np.ndarray | None,
    metric: str,
    train_seconds: float,
    val_seconds: float,
) -> EpochRecord:
    """An epoch's record with every validation metric of ``val_logits`` (None: not validated, all nan)."""
    if val_logits is None:
        return EpochRecord(epoch, train_loss, math.nan, math.nan, train_seconds, val_seconds)
    metrics = all_metrics(val_logits, val_labels)
    return EpochRecord(
        epoch,
        train_loss,
        metrics["log_loss"],
        metrics["accuracy"],
        train_seconds,
        val_seconds,
        signed(metric, metrics[metric]),
        metrics,
        val_logits,
    )


class Executor:
    """Runs trials. Keeps encoded data between trials, so each preprocessing is computed once per process."""

    def __init__(
        self,
        device: torch.device | str | None = None,
        show_progress: bool | None = None,
        max_cached_encodings: int = 6,
        feature_cache: FeatureCache | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        # Progress bars only on a terminal by default: in logs, the per-trial log lines say enough.
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self._encoded: OrderedDict[tuple[str, str, str], list[Any]] = OrderedDict()
        self._max_cached = max_cached_encodings
        self.feature_cache = feature_cache if feature_cache is not None else FeatureCache()
        self._samples_hashes: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------ data

    def encoded(self, preprocessor: Preprocessor, data: DatasetBundle, split: Split) -> list[Any]:
        """``split`` encoded by ``preprocessor``, computed on first use and kept (least recently used first out)."""
        if split.parts:
            return [item for part in split.parts for item in self.encoded(preprocessor, data, part)]
        if split.rows_of is not None:
            items = self.encoded(preprocessor, data, split.rows_of)
            return [items[row] for row in split.rows]
        key = (json.dumps(preprocessor.cache_key(), sort_keys=True), data.fingerprint, split.name)
        if key in self._encoded:
            self._encoded.move_to_end(key)
            return self._encoded[key]
        started = time.perf_counter()
        items = preprocessor.encode(split.inputs)
        logger.debug("encoded %d %s examples in %.1fs", len(items), split.name, time.perf_counter() - started)
        self._encoded[key] = items
        while len(self._encoded) > self._max_cached:
            self._encoded.popitem(last=False)
        return items

    def features(
        self,
        backbone: Backbone,
        options: InputOptions,
        data: DatasetBundle,
        split: Split,
        batch_size: int = 64,
        deadline: float | None = None,
    ) -> np.ndarray:
        """The pretrained body's features of ``split`` (float32, one row per example), from the feature cache.

        Computing them (on a cache miss) stops with :class:`DeadlineReached` once ``deadline`` passes."""
        if split.parts:
            return np.concatenate(
                [self.features(backbone, options, data, part, batch_size, deadline) for part in split.parts]
            )
        if split.rows_of is not None:
            return self.features(backbone, options, data, split.rows_of, batch_size, deadline)[list(split.rows)]
        key = (data.fingerprint, split.name)
        if key not in self._samples_hashes:
            self._samples_hashes[key] = samples_hash(split.inputs)
        preprocessor = backbone.preprocessor(options)
        return self.feature_cache.features(
            backbone,
            preprocessor,
            lambda: self.encoded(preprocessor, data, split),
            self._samples_hashes[key],
            len(split),
            self.device,
            batch_size,
            deadline,
        )

    # ------------------------------------------------------------ training

    def fit(
        self,
        config: TrialConfig,
        backbone: Backbone,
        data: DatasetBundle,
        on_epoch: EpochCallback | None = None,
        deadline: float | None = None,
        refit: bool = False,
    ) -> TrialResult:
        """Train ``backbone`` on ``data.train`` as ``config`` says, validating on ``data.val`` after each epoch.

        ``deadline`` is a ``time.monotonic()`` value; the loop stops at the first batch past it. A trial that
        trains the body projects its cost from its first batches: it is re-planned to fewer epochs when not all
        of them would end in time, and stops at once when not even one would (``STOP_OVER_BUDGET``), to be
        run again cheaper (:func:`cheaper_trial`, up to :data:`CHEAPER_ATTEMPTS` times; not for a refit).
        ``extra["adapted"]`` lists what was given up, and the result's ``config`` is what ran.
        The result holds the best epoch's weights (see :meth:`TrialResult.final_model`).

        Heads on cached features (linear probe, nearest centroid, logistic regression) are scored by
        cross-validation on training + validation when the validation split is small
        (:attr:`DatasetBundle.small_validation`), and their model is then fitted on both.

        ``refit``: train on training + validation for ``config.epochs`` with nothing validated, keeping the last
        epoch (the search's refit of its best configuration).

        A trial that runs out of memory is tried once more at half the batch size (see
        :func:`fit_with_out_of_memory_retry`); if that runs out of memory too, :class:`TrialOutOfMemory`.
        """

        def attempt(trial_config: TrialConfig) -> TrialResult:
            strategy = get_strategy(trial_config.strategy)
            if not strategy.runs_epochs:
                return self._fit_embedding_head(trial_config, backbone, data, on_epoch, deadline, refit)
            if strategy.frozen_body:
                return self._fit_probe(trial_config, backbone, data, on_epoch, deadline, refit)
            return self._fit_body(trial_config, backbone, data, on_epoch, deadline, refit)

        started, cpu_started = time.perf_counter(), time.process_time()
        result = fit_with_out_of_memory_retry(attempt, config)
        if not refit:
            result = self._cheaper_when_over_budget(attempt, result, backbone, started, cpu_started)
        if not get_strategy(config.strategy).frozen_body:
            # Free what the trial held (optimizer state can be as big as the model) before the next one starts:
            # once, not after each cheaper attempt, since a full collection costs half a second outside a search.
            release_memory()
        return result

    @staticmethod
    def _cheaper_when_over_budget(
        attempt: Callable[[TrialConfig], TrialResult],
        result: TrialResult,
        backbone: Backbone,
        started: float,
        cpu_started: float,
    ) -> TrialResult:
        """While ``result`` says one epoch would not fit the budget, run the trial again at a cheaper
        configuration (see :func:`cheaper_trial`), up to :data:`CHEAPER_ATTEMPTS` times. What changed is
        listed in ``extra["adapted"]``, and the result's seconds are those of every attempt since ``started``
        (``time.perf_counter()``; ``cpu_started``: ``time.process_time()``), memory released between them included."""
        adapted: list[str] = []
        for _ in range(CHEAPER_ATTEMPTS):
            if result.stop_reason != STOP_OVER_BUDGET:
                break
            cheaper = cheaper_trial(result.config, backbone, result.extra.get("layer_groups"))
            if cheaper is None:
                break
            config, change = cheaper
            projected = result.extra.get("projected_epoch_seconds")
            adapted.append(f"{change} (one epoch would have taken about {projected:.0f}s)")
            logger.info(
                "%s %s: one epoch would take about %.0fs, more than the budget left; trying %s",
                result.config.backbone,
                result.config.strategy,
                projected,
                change,
            )
            result = fit_with_out_of_memory_retry(attempt, config)
        if adapted:
            result.extra["adapted"] = adapted + result.extra.get("adapted", [])
            result.seconds = time.perf_counter() - started
            result.cpu_seconds = time.process_time() - cpu_started
        return result

    def _fit_probe(
        self,
        config: TrialConfig,
        backbone: Backbone,
        data: DatasetBundle,
        on_epoch: EpochCallback | None,
        deadline: float | None,
        refit: bool,
    ) -> TrialResult:
        """A linear probe: the head alone, on cached features; the whole model is built only if asked for."""
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            train_x = self.features(backbone, config.input_options, data, data.train, deadline=deadline)
            val_x = self.features(backbone, config.input_options, data, data.val, deadline=deadline)
        except DeadlineReached:  # the budget ran out while computing features: no epoch, nothing stored
            return _empty_result(config, started, cpu_started)
        passes, extra = config.epochs * config.probe_passes, {FEATURES_SECONDS: time.perf_counter() - started}
        if refit or data.small_validation:
            every_x, every_y = np.concatenate([train_x, val_x]), np.concatenate([data.train.labels, data.val.labels])
            extra["fitted_on"] = FITTED_ON_TRAIN_AND_VAL
        if refit:
            head, history, stop_reason, seen = self._train_head(
                config, len(data.classes), every_x, every_y, None, None, passes, config.epochs, None, deadline
            )
        elif data.small_validation:
            # Scored by out-of-fold predictions on every labelled example; then fitted on all of them for as many
            # epochs as scored best.
            history, stop_reason = self._cross_validated_probe(config, len(data.classes), every_x, every_y, deadline)
            head, seen = None, 0
            if stop_reason != STOP_TIME:
                epochs = max(history, key=lambda r: r.rank_key).epoch
                head, _, stop_reason, seen = self._train_head(
                    config,
                    len(data.classes),
                    every_x,
                    every_y,
                    None,
                    None,
                    epochs * config.probe_passes,
                    epochs,
                    None,
                    deadline,
                )
                stop_reason = STOP_TIME if stop_reason == STOP_TIME else STOP_COMPLETED
                head = None if stop_reason == STOP_TIME else head
            extra["validation"] = VALIDATED_BY_CROSS_VALIDATION
        else:
            head, history, stop_reason, seen = self._train_head(
                config,
                len(data.classes),
                train_x,
                data.train.labels,
                val_x,
                data.val.labels,
                passes,
                config.epochs,
                on_epoch,
                deadline,
            )

        def model_builder() -> TransferModel:
            # The body is loaded only if the model is wanted (the search saves the best trial's alone).
            model = self._build(backbone, config, len(data.classes))
            model.head.load_state_dict(head.state_dict())
            model.set_trained_groups(0)
            return model.eval()

        # No release_memory() here: a head holds next to nothing, and a full garbage collection
        # would cost more than the whole probe.
        return TrialResult(
            config=config,
            history=history,
            stop_reason=stop_reason,
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu_started,
            samples_seen=seen,
            model_builder=model_builder if head is not None else None,
            extra=extra,
            head=head,
        )

    def _cross_validated_probe(
        self, config: TrialConfig, num_classes: int, x: np.ndarray, y: np.ndarray, deadline: float | None
    ) -> tuple[list[EpochRecord], str]:
        """Per-epoch records of a probe scored by stratified k-fold out-of-fold logits (every fold trains every
        epoch: no early stopping, so the folds' epochs line up); STOP_TIME if the deadline passed."""
        folds = StratifiedKFold(n_splits=cross_validation_folds(y), shuffle=True, random_state=config.seed)
        whole = replace(config, early_stopping_patience=config.epochs + 1)
        out_of_fold = [torch.zeros(len(y), num_classes) for _ in range(config.epochs)]
        train_losses = np.zeros(config.epochs)
        fold_started = time.perf_counter()
        for train, held_out in folds.split(x, y):
            logits_by_epoch: list[torch.Tensor] = []
            _, fold_history, stop_reason, _ = self._train_head(
                whole,
                num_classes,
                x[train],
                y[train],
                x[held_out],
                y[held_out],
                config.epochs * config.probe_passes,
                config.epochs,
                None,
                deadline,
                logits_by_epoch,
            )
            if stop_reason == STOP_TIME:
                return [], STOP_TIME
            for epoch, logits in enumerate(logits_by_epoch):
                out_of_fold[epoch][held_out] = logits
                train_losses[epoch] += fold_history[epoch].train_loss / folds.n_splits
        seconds = (time.perf_counter() - fold_started) / config.epochs
        return [
            epoch_record(epoch + 1, float(train_losses[epoch]), logits, y, config.metric, seconds, 0.0)
            for epoch, logits in enumerate(out_of_fold)
        ], STOP_COMPLETED

    def _fit_embedding_head(
        self,
        config: TrialConfig,
        backbone: Backbone,
        data: DatasetBundle,
        on_epoch: EpochCallback | None,
        deadline: float | None,
        refit: bool,
    ) -> TrialResult:
        """Nearest centroid or logistic regression, fitted at once on the cached features.

        Validated on the validation split ("holdout"), or, when it is small, by out-of-fold predictions on
        training + validation, the model then fitted on both; with few-shot data that holds nothing out, by
        out-of-fold predictions on the training split ("cross_validation"), or with one example per class
        ("none") on the training split itself. One epoch is recorded.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        holdout = data.validation == VALIDATION_HOLDOUT
        try:
            train_x = self.features(backbone, config.input_options, data, data.train, deadline=deadline)
            val_x = (
                self.features(backbone, config.input_options, data, data.val, deadline=deadline) if holdout else None
            )
        except DeadlineReached:  # the budget ran out while computing features: nothing fitted
            return _empty_result(config, started, cpu_started)
        fit = partial(FITTERS[config.strategy], balanced=config.class_weighted)
        num_classes, extra = len(data.classes), {FEATURES_SECONDS: time.perf_counter() - started}
        x, y = train_x, data.train.labels
        if holdout and (refit or data.small_validation):
            x, y = np.concatenate([train_x, val_x]), np.concatenate([data.train.labels, data.val.labels])
            extra["fitted_on"] = FITTED_ON_TRAIN_AND_VAL
        fit_started = time.perf_counter()
        fitted = fit(x, y, num_classes, config.seed)
        train_logits = head_logits(fitted.module, x)
        train_seconds = time.perf_counter() - fit_started
        if refit:
            val_logits, val_y = None, None
        elif holdout and not data.small_validation:
            val_logits, val_y = head_logits(fitted.module, val_x), data.val.labels
        elif holdout or data.validation == VALIDATION_CROSS:
            # (a small validation split: the folds reuse the choices of the fit on all; few shots: nested)
            val_logits = cross_validated_logits(
                fit, x, y, num_classes, config.seed, fitted.details if holdout else None
            )
            val_y = y
            extra["validation"] = VALIDATED_BY_CROSS_VALIDATION
        else:  # nothing can be held out of one example per class
            val_logits, val_y = train_logits, y
        train_loss = nn.functional.cross_entropy(train_logits, torch.as_tensor(y)).item()
        record = epoch_record(
            1,
            train_loss,
            val_logits,
            val_y,
            config.metric,
            train_seconds,
            time.perf_counter() - fit_started - train_seconds,
        )
        stop_reason = STOP_CALLBACK if on_epoch is not None and on_epoch(1, record.val_score) else STOP_COMPLETED
        extra.update(fitted.details, validation=extra.get("validation", data.validation))

        def model_builder() -> TransferModel:
            model = self._build(backbone, config, num_classes)
            model.head.load_state_dict(fitted.module.state_dict())
            model.set_trained_groups(0)
            return model.eval()

        return TrialResult(
            config=config,
            history=[record],
            stop_reason=stop_reason,
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu_started,
            samples_seen=len(y),
            model_builder=model_builder,
            extra=extra,
            head=fitted.module,
        )

    def _fit_body(
        self,
        config: TrialConfig,
        backbone: Backbone,
        data: DatasetBundle,
        on_epoch: EpochCallback | None,
        deadline: float | None,
        refit: bool,
    ) -> TrialResult:
        """Last-k, full fine-tuning, LP-FT, BitFit, norm-only and LoRA: the body runs on every batch."""
        started, cpu_started = time.perf_counter(), time.process_time()
        extra: dict[str, Any] = {"fitted_on": FITTED_ON_TRAIN_AND_VAL} if refit else {}
        train_split = data.train_and_val() if refit else data.train
        probe_head = None
        if get_strategy(config.strategy).probe_first:
            try:
                train_x = self.features(backbone, config.input_options, data, train_split, deadline=deadline)
                val_x = (
                    None if refit else self.features(backbone, config.input_options, data, data.val, deadline=deadline)
                )
            except DeadlineReached:
                return _empty_result(config, started, cpu_started)
            probe_head, probe_history, _, _ = self._train_head(
                config,
                len(data.classes),
                train_x,
                train_split.labels,
                val_x,
                None if refit else data.val.labels,
                config.probe_passes,
                1,
                None,
                deadline,
            )
            extra["probe_val_accuracy"] = probe_history[-1].val_accuracy if probe_history and not refit else None
            if probe_head is None:
                return _empty_result(config, started, cpu_started, extra=extra)
        model = self._build(backbone, config, len(data.classes))
        if probe_head is not None:
            model.head.load_state_dict(probe_head.state_dict())
            model.freeze_norm_statistics = True
        set_trained_body(model, config, backbone.lora_targets)
        checkpoints = None
        if not refit:  # a refit validates nothing: no soup
            soup_keys = changing_state_keys(model)  # (LoRA's adapters, before they are merged, among them)
            if soup_keys is None:
                extra["weight_soup"] = {"reason": TOO_LARGE}
            else:
                checkpoints = Checkpoints(soup_keys, rank=lambda record: record.rank_key[:2])
        # LP-FT's second stage moves the head as gently as the body, so the probe is not undone.
        head_lr = config.backbone_lr if get_strategy(config.strategy).probe_first else config.head_lr
        optimizer = torch.optim.AdamW(parameter_groups(model, config, head_lr))
        preprocessor = backbone.preprocessor(config.input_options)
        train_items = self.encoded(preprocessor, data, train_split)
        val_items = [] if refit else self.encoded(preprocessor, data, data.val)
        train_labels = torch.as_tensor(train_split.labels)
        if config.augmentation not in backbone.augmentations:
            raise ConfigError(
                f"{backbone.name} offers no augmentation {config.augmentation!r}; expected one of "
                f"{', '.join(backbone.augmentations)}"
            )
        # (the training batches alone are augmented: validation goes through the plain preprocessor)
        by_batch = config.augmentation in BATCH_AUGMENTATIONS
        train_preprocessor = preprocessor.augmented(NO_AUGMENTATION if by_batch else config.augmentation)

        def batches(generator: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
            order = torch.randperm(len(train_items), generator=generator)
            for start in range(0, len(order), config.batch_size):
                index = order[start : start + config.batch_size]
                yield train_preprocessor.collate([train_items[i] for i in index], train=True), train_labels[index]

        def validate(deadline: float | None) -> torch.Tensor:
            return predict_logits(model, preprocessor, val_items, config.batch_size * 2, self.device, deadline)

        loop = _Loop(
            model,
            optimizer,
            math.ceil(len(train_items) / config.batch_size),
            batches,
            None if refit else validate,
            f"{config.backbone} {config.strategy}"
            + (f" groups={config.trained_depth(model.num_groups)}" if get_strategy(config.strategy).uses_depth else ""),
            len(data.classes),
            train_split.labels,
            None if refit else data.val.labels,
            len(val_items),
            project=True,
            mix=mixup(len(data.classes)) if config.augmentation == MIXUP else None,
            checkpoints=checkpoints,
        )
        history, best_state, stop_reason, seen = self._run_epochs(loop, config, config.epochs, on_epoch, deadline)
        extra.update(loop.notes, layer_groups=model.num_groups)
        if "epochs_fitted" in extra:  # the result says what ran: its model, refit and card follow it
            config = replace(config, epochs=extra["epochs_fitted"])
        soup_record = None
        if best_state is not None:
            model.load_state_dict(best_state)
            if checkpoints is not None:
                soup_record = self._weight_soup(
                    model, checkpoints, validate, data.val.labels, config, history, stop_reason, deadline, extra
                )
                if soup_record is None:
                    model.load_state_dict(best_state)
            if get_strategy(config.strategy).body == BODY_ADAPTERS:
                merge_adapters(model)  # the model handed on (saved, refitted, exported) is a plain one
            model.eval()
        result = TrialResult(
            config=config,
            history=history,
            stop_reason=stop_reason,
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu_started,
            samples_seen=seen,
            model=model if best_state is not None else None,
            extra=extra,
            soup_record=soup_record,
        )
        del optimizer, loop, best_state, checkpoints  # freed by fit(), once for all its attempts
        return result

    @staticmethod
    def _weight_soup(
        model: TransferModel,
        checkpoints: Checkpoints[EpochRecord],
        validate: Callable[[float | None], torch.Tensor],
        val_labels: np.ndarray,
        config: TrialConfig,
        history: list[EpochRecord],
        stop_reason: str,
        deadline: float | None,
        extra: dict[str, Any],
    ) -> EpochRecord | None:
        """A greedy soup of the trial's best epochs (:func:`~automl_tl.train.weight_soup.greedy_soup`), ``model``
        holding the best epoch's weights. Returns the soup's validation record, ``model`` then holding the soup's
        weights; None when no soup is kept (``model`` may then hold a rejected average). ``extra["weight_soup"]``
        says which."""
        if stop_reason == STOP_CALLBACK:  # the search prunes the trial: its model is not used
            extra["weight_soup"] = {"reason": PRUNED}
            return None
        # Each soup is validated only if, taking as long as the slowest validation pass so far, it ends in time.
        val_seconds = max(record.val_seconds for record in history)

        def validated(state: dict[str, torch.Tensor]) -> EpochRecord | None:
            if deadline is not None and time.monotonic() + val_seconds > deadline:
                return None
            model.load_state_dict(state, strict=False)  # the frozen rest is the same in every epoch
            started = time.perf_counter()
            try:
                logits = validate(deadline)
            except DeadlineReached:
                return None
            return epoch_record(0, math.nan, logits, val_labels, config.metric, 0.0, time.perf_counter() - started)

        soup = greedy_soup(checkpoints, validated)
        best_single = checkpoints.kept[0][0].val_score if checkpoints.kept else None
        if soup.state is None:  # (the caller restores the best epoch: a rejected average may be loaded)
            extra["weight_soup"] = {"reason": soup.reason, "best_single": best_single, "validated": soup.validated}
            return None
        model.load_state_dict(soup.state, strict=False)
        epochs = [record.epoch for record in soup.ingredients]
        extra["weight_soup"] = {
            "ingredients": epochs,
            "val_score": soup.record.val_score,
            "best_single": best_single,
            "validated": soup.validated,
        }
        if soup.reason is not None:
            extra["weight_soup"]["stopped"] = soup.reason
        # The soup's record carries its best ingredient's epoch: the trial's best_epoch, and the refit's length
        # (a refit averages nothing), stay what they were without the soup.
        return replace(soup.record, epoch=epochs[0], train_loss=math.nan)

    def _build(self, backbone: Backbone, config: TrialConfig, num_classes: int) -> TransferModel:
        """The pretrained body with the trial's head, freshly initialised from the trial's seed
        (the same initial head as a probe of the same seed gets)."""
        model = backbone.build(num_classes=num_classes)
        torch.manual_seed(config.seed)
        model.head = build_head(config.head, backbone.embedding_dim, num_classes)
        return on_device(model, self.device)

    def _train_head(
        self,
        config: TrialConfig,
        num_classes: int,
        train_x: np.ndarray,
        train_y: np.ndarray,
        val_x: np.ndarray | None,
        val_y: np.ndarray | None,
        passes: int,
        epochs: int,
        on_epoch: EpochCallback | None,
        deadline: float | None,
        logits_by_epoch: list[torch.Tensor] | None = None,
    ) -> tuple[nn.Module | None, list[EpochRecord], str, int]:
        """Train the trial's head alone on the frozen body's features ``train_x``.

        ``passes`` over the training features are spread over ``epochs`` reported epochs (a pass costs so
        little that a probe needs many). Without ``val_x`` nothing is validated and the last epoch is kept.
        ``logits_by_epoch`` collects each epoch's validation logits. Returns the best head (None if no epoch
        finished), its history, why it stopped and how many examples went forward.
        """
        train_x = torch.as_tensor(train_x).to(self.device)
        features_of_val = None if val_x is None else torch.as_tensor(val_x).to(self.device)
        train_targets = torch.as_tensor(train_y)
        torch.manual_seed(config.seed)
        head = build_head(config.head, train_x.shape[1], num_classes).to(self.device)
        optimizer = torch.optim.AdamW(
            _with_and_without_decay(list(head.parameters()), config.head_lr, config.weight_decay)
        )
        passes_per_epoch = max(1, passes // epochs)
        steps_per_pass = math.ceil(len(train_x) / config.batch_size)

        def batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for _ in range(passes_per_epoch):
                order = torch.randperm(len(train_x), generator=generator)
                for start in range(0, len(order), config.batch_size):
                    index = order[start : start + config.batch_size]
                    yield train_x[index.to(self.device)], train_targets[index]

        @torch.no_grad()
        def validate(deadline: float | None) -> torch.Tensor:  # one matrix product: too quick to interrupt
            head.eval()
            logits = head(features_of_val).float().cpu()
            if logits_by_epoch is not None:
                logits_by_epoch.append(logits)
            return logits

        loop = _Loop(
            head,
            optimizer,
            steps_per_pass * passes_per_epoch,
            batches,
            None if val_x is None else validate,
            f"{config.backbone} head on features",
            num_classes,
            np.asarray(train_y),
            None if val_y is None else np.asarray(val_y),
        )
        history, best_state, stop_reason, seen = self._run_epochs(loop, config, epochs, on_epoch, deadline)
        if best_state is None:
            return None, history, stop_reason, seen
        head.load_state_dict(best_state)
        return head.eval(), history, stop_reason, seen

    def _run_epochs(
        self,
        loop: _Loop,
        config: TrialConfig,
        epochs: int,
        on_epoch: EpochCallback | None,
        deadline: float | None,
    ) -> tuple[list[EpochRecord], dict[str, torch.Tensor] | None, str, int]:
        """The epoch loop every path shares; returns the history, the best epoch's state (without validation:
        the last epoch's), why it stopped and how many training examples went forward."""
        generator = torch.Generator().manual_seed(config.seed)
        factor = WarmupCosine(loop.steps_per_epoch * epochs, config.warmup_fraction)
        schedule = torch.optim.lr_scheduler.LambdaLR(loop.optimizer, factor)
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        weights = class_weights(loop.train_labels, loop.num_classes).to(self.device) if config.class_weighted else None
        # (soft targets of a mixed batch too: each class's term weighed by its weight, averaged over the batch)
        loss_fn = nn.CrossEntropyLoss(weight=weights)
        trained = [p for group in loop.optimizer.param_groups for p in group["params"]]

        history: list[EpochRecord] = []
        best_state: dict[str, torch.Tensor] | None = None
        stop_reason, samples_seen, epochs_without_gain = STOP_COMPLETED, 0, 0
        epoch_walls: list[float] = []  # each finished epoch's wall-clock, validation and bookkeeping included
        progress = tqdm(
            range(1, epochs + 1), desc=loop.description, unit="epoch", leave=False, disable=not self.show_progress
        )
        for epoch in progress:
            if epoch > epochs:  # re-planned to fewer epochs by the first one's measured cost
                break
            epoch_started = time.perf_counter()
            loop.module.train()
            loss_sum, seen, timed_from = 0.0, 0, None
            step_started = time.monotonic()
            for step, (inputs, targets) in enumerate(
                tqdm(
                    loop.batches(generator),
                    total=loop.steps_per_epoch,
                    desc=f"epoch {epoch}",
                    unit="batch",
                    leave=False,
                    disable=not self.show_progress,
                )
            ):
                # A step is begun only if, taking as long as the one before it, it ends before the deadline.
                now = time.monotonic()
                last_step_seconds, step_started = (now - step_started if step else 0.0), now
                if deadline is not None and now + last_step_seconds > deadline:
                    stop_reason = STOP_TIME
                    break
                if step == 1:
                    timed_from = time.perf_counter()  # the first step pays one-off costs: time the next ones
                if (
                    loop.project
                    and epoch == 1
                    and deadline is not None
                    and timed_from is not None
                    and step == 1 + STEPS_BEFORE_PROJECTION
                ):
                    fitting = self._epochs_that_fit(loop, timed_from, deadline, epochs)
                    if fitting == 0:
                        stop_reason = STOP_OVER_BUDGET
                        break
                    if fitting < epochs:
                        loop.notes["adapted"] = [
                            f"epochs {epochs} -> {fitting} (one takes about "
                            f"{loop.notes['projected_epoch_seconds']:.0f}s)"
                        ]
                        loop.notes["epochs_fitted"] = epochs = fitting
                        factor.total_steps = loop.steps_per_epoch * fitting
                        progress.total = fitting
                        progress.refresh()
                inputs, targets = move_to(inputs, self.device), targets.to(self.device)
                if loop.mix is not None:
                    inputs, targets = loop.mix(inputs, targets)
                with autocast(self.device):
                    loss = loss_fn(loop.module(inputs).float(), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, step {step}")
                loop.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(loop.optimizer)
                nn.utils.clip_grad_norm_(trained, config.grad_clip_norm)
                scaler.step(loop.optimizer)
                scaler.update()
                schedule.step()
                loss_sum += loss.item() * len(targets)
                seen += len(targets)
            samples_seen += seen
            if stop_reason in (STOP_TIME, STOP_OVER_BUDGET):
                break

            train_seconds = time.perf_counter() - epoch_started
            if loop.validate is None:  # a refit: nothing held out; the last epoch is the model
                history.append(
                    epoch_record(epoch, loss_sum / max(seen, 1), None, None, config.metric, train_seconds, 0.0)
                )
                best_state = {k: v.detach().clone() for k, v in loop.module.state_dict().items()}
                continue
            try:
                val_logits = loop.validate(deadline)
            except DeadlineReached:  # an epoch counts only once validated: this one does not
                stop_reason = STOP_TIME
                break
            record = epoch_record(
                epoch,
                loss_sum / max(seen, 1),
                val_logits,
                loop.val_labels,
                config.metric,
                train_seconds,
                time.perf_counter() - epoch_started - train_seconds,
            )
            is_best = not history or record.rank_key[:2] > max(r.rank_key for r in history)[:2]
            history.append(record)
            if loop.checkpoints is not None:
                loop.checkpoints.offer(record, loop.module)
            progress.set_postfix(val_acc=f"{record.val_accuracy:.3f}")
            logger.debug(
                "epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f, %s %.4f",
                epoch,
                record.train_loss,
                record.val_loss,
                record.val_accuracy,
                config.metric,
                record.val_metrics[config.metric],
            )
            if is_best:
                best_state = {k: v.detach().clone() for k, v in loop.module.state_dict().items()}
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
            if on_epoch is not None and on_epoch(epoch, record.val_score):
                stop_reason = STOP_CALLBACK
                break
            if epochs_without_gain >= config.early_stopping_patience and epoch < epochs:
                stop_reason = STOP_EARLY
                break
            epoch_walls.append(time.perf_counter() - epoch_started)
            if loop.project and deadline is not None and epoch < epochs:
                fitting = epoch + self._more_epochs_that_fit(epoch_walls, deadline)
                if fitting < epochs:  # later epochs ran slower than the first steps said: plan again
                    first_plan = loop.notes.get("adapted", [f"epochs {epochs} -> "])[0].split(" -> ")[0]
                    loop.notes["projected_epoch_seconds"] = round(float(np.mean(epoch_walls)), 1)
                    loop.notes["adapted"] = [
                        f"{first_plan} -> {fitting} (one takes about {loop.notes['projected_epoch_seconds']:.0f}s)"
                    ]
                    loop.notes["epochs_fitted"] = epochs = fitting
                    factor.total_steps = loop.steps_per_epoch * fitting
                    progress.total = fitting
                    progress.refresh()
        progress.close()
        return history, best_state, stop_reason, samples_seen

    @staticmethod
    def _more_epochs_that_fit(epoch_walls: list[float], deadline: float) -> int:
        """How many more epochs, each costing what the finished ones did on average plus a tenth, end before
        ``deadline``: the first steps' projection misses per-epoch overheads and a machine whose load grows."""
        left = deadline - time.monotonic() - EPOCH_SLACK_SECONDS
        return int(max(0.0, left) // (1.1 * float(np.mean(epoch_walls))))

    @staticmethod
    def _epochs_that_fit(loop: _Loop, timed_from: float, deadline: float, epochs: int) -> int:
        """How many of ``epochs`` (with their validation) end before ``deadline``, projected from the steps
        timed so far; 0 when not even the first does. Validating an example is taken to cost as much as
        training on it (true of a frozen body, three times too much for a trained one): better to plan an
        epoch fewer than to have the deadline cut the last one short. Epochs after the first get a tenth
        more for the load of the machine changing."""
        per_step = (time.perf_counter() - timed_from) / STEPS_BEFORE_PROJECTION
        batch_size = max(1, math.ceil(len(loop.train_labels) / loop.steps_per_epoch))
        validation = per_step * loop.val_examples / batch_size
        epoch_seconds = per_step * loop.steps_per_epoch + validation
        loop.notes["projected_epoch_seconds"] = round(epoch_seconds, 1)
        rest_of_first = per_step * (loop.steps_per_epoch - 1 - STEPS_BEFORE_PROJECTION) + validation
        left = deadline - time.monotonic() - rest_of_first
        if left < 0:
            return 0
        return min(epochs, 1 + int(left // (1.1 * epoch_seconds)))


#: mixup's and CutMix's Beta(alpha, alpha), one of the two drawn per batch at even odds (DeiT's recipe)
MIXUP_ALPHA, CUTMIX_ALPHA = 0.8, 1.0


def mixup(num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """timm's ``Mixup`` (mixup or CutMix, no label smoothing) as a batch transform: a batch of images and its class
    indices -> the mixed batch and its soft targets, ``(batch, num_classes)``. timm mixes each example with the
    batch reversed and needs an even batch: the last example of an odd one is left unmixed, its target one-hot."""
    from timm.data import Mixup

    mix = Mixup(
        mixup_alpha=MIXUP_ALPHA,
        cutmix_alpha=CUTMIX_ALPHA,
        switch_prob=0.5,
        label_smoothing=0.0,
        num_classes=num_classes,
    )

    def transform(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = nn.functional.one_hot(targets, num_classes).float()
        even = len(targets) - len(targets) % 2
        if even >= 2:
            inputs = inputs.clone()
            # (timm mixes in place: the view of the first ``even`` examples mixes them in ``inputs``)
            _, soft[:even] = mix(inputs[:even], targets[:even])
        return inputs, soft

    return transform


def cheaper_trial(config: TrialConfig, backbone: Backbone, layer_groups: int | None) -> tuple[TrialConfig, str] | None:
    """``config`` made about half as costly per epoch, and what changed: the backbone's smaller input first
    (:meth:`Backbone.cheaper_input`), else half as many trained layer groups; None when neither is left."""
    smaller = backbone.cheaper_input(config.input_options)
    if smaller is not None:
        options, change = smaller
        return replace(config, input_options=options), change
    groups = config.trained_depth(layer_groups) if layer_groups else config.trained_groups
    strategy_record = get_strategy(config.strategy)
    # (BitFit, norm-only and LoRA cost a whole body's forward and backward pass: no fewer groups to train)
    if strategy_record.frozen_body or strategy_record.trains_few_parameters or groups < 2:
        return None
    strategy = LAST_K if config.strategy == FULL else config.strategy
    return (
        replace(config, strategy=strategy, trained_groups=groups // 2),
        f"{groups} -> {groups // 2} trained layer groups",
    )


def fit_with_out_of_memory_retry(attempt: Callable[[TrialConfig], TrialResult], config: TrialConfig) -> TrialResult:
    """``attempt(config)``; if it runs out of memory, free memory and run ``attempt`` once more at half the
    batch size (at least 1). The result of a retry says so in ``extra["oom_retry"]`` (the batch size asked
    for and the one used), and its ``config`` holds the batch size used.

    Raises :class:`TrialOutOfMemory` if the retry runs out of memory too, or at once at batch size 1.
    """
    # A batch size that fits one backbone or input size may not fit another, and the search
    # chooses both. One retry at half the batch saves most such trials; a second failure means the
    # model itself does not fit, and the trial fails with that reason instead of stopping the search.
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        return attempt(config)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        first_error = first_line(error, limit=200)
    lost_seconds, lost_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    # Out of the except block on purpose: the traceback, whose frames hold the failed attempt's model,
    # optimizer and activations, is gone, so release_memory() can really free them.
    release_memory()
    size = config.batch_size
    if size <= 1:
        raise TrialOutOfMemory(f"out of memory at batch size {size} ({first_error})")
    smaller = max(1, size // 2)
    logger.warning(
        "%s %s ran out of memory at batch size %d (%s); retrying it once at batch size %d",
        config.backbone,
        config.strategy,
        size,
        first_error,
        smaller,
    )
    try:
        result = attempt(replace(config, batch_size=smaller))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        message = f"out of memory at batch size {size}, and again at {smaller} ({first_line(error, limit=200)})"
    else:
        result.extra["oom_retry"] = {"batch_size": size, "retried_with": smaller}
        # The trial's cost includes the attempt that ran out of memory.
        result.seconds += lost_seconds
        result.cpu_seconds += lost_cpu_seconds
        return result
    release_memory()  # again outside the except block, for the same reason
    raise TrialOutOfMemory(message)


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    """Share of rows whose highest logit is the true label."""
    return float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else float("nan")
