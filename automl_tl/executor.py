"""The one fine-tuning loop every trial runs through. It knows nothing of Optuna.

Reads top to bottom: encode the data once (cached across trials), build the model with the
trial's head, then one of two paths that share the same epoch loop:

* **head on features** (linear probe, and the first stage of LP-FT): the frozen body's features
  come from the on-disk :class:`~automl_tl.feature_cache.FeatureCache`, and only the head trains;
* **fine-tuning** (last-k groups, full): the body runs on every batch and the trained groups
  learn at layer-wise decayed rates.

The embedding strategies (nearest centroid, logistic regression) take a third, shorter path: the
head is fitted in one go on the same cached features (:mod:`automl_tl.embedding_heads`) and
validated on the validation split, or by cross-validation on the training split when the data set
has too few labels to hold any out; their history has one "epoch".

Both use AdamW, linear warm-up then cosine decay, gradient clipping, per-epoch validation
reported through ``on_epoch``, early stopping, a deadline checked per batch, and restore
the best epoch's weights. Mixed precision on CUDA.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from automl_tl.backbone import Backbone, InputOptions, Preprocessor, TransferModel, ordered_for_inference
from automl_tl.config import EMBEDDING_STRATEGIES, TrialConfig
from automl_tl.data import VALIDATION_CROSS, VALIDATION_HOLDOUT, DatasetBundle, Split
from automl_tl.embedding_heads import FITTERS, cross_validated_logits, head_logits
from automl_tl.errors import first_line
from automl_tl.feature_cache import DeadlineReached, FeatureCache, samples_hash
from automl_tl.heads import build_head

logger = logging.getLogger(__name__)

#: called after each epoch with (epoch, validation accuracy); returning True stops the trial
EpochCallback = Callable[[int, float], bool]

STOP_COMPLETED = "completed"  # ran every epoch
STOP_EARLY = "early_stopping"  # validation accuracy stopped improving
STOP_CALLBACK = "stopped_by_callback"  # on_epoch asked to stop (the search prunes the trial)
STOP_TIME = "time_budget"  # the deadline passed

#: words of the RuntimeErrors that mean an allocation failed (CUDA, MPS, and torch's CPU allocator)
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory")


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

    @property
    def has_model(self) -> bool:
        return self.model is not None or self.model_builder is not None

    def final_model(self) -> TransferModel | None:
        """The best epoch's whole model (building it from the body and the trained head if needed)."""
        if self.model is None and self.model_builder is not None:
            self.model = self.model_builder()
            self.model_builder = None
        return self.model

    def release_model(self) -> None:
        self.model = self.model_builder = None

    @property
    def best_epoch(self) -> int | None:
        if not self.history:
            return None
        return max(self.history, key=lambda r: (r.val_accuracy, -r.epoch)).epoch

    @property
    def best_val_accuracy(self) -> float | None:
        return None if not self.history else max(r.val_accuracy for r in self.history)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def move_to(batch: torch.Tensor | dict[str, torch.Tensor], device: torch.device):
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


@torch.no_grad()
def predict_logits(model: nn.Module, preprocessor: Preprocessor, items: Sequence[Any], batch_size: int,
                   device: torch.device, deadline: float | None = None) -> torch.Tensor:
    """Logits for encoded ``items`` in order, in eval mode, on ``device``; returned on the CPU.

    The batches follow the preprocessor's inference order (texts by length), the logits the order of ``items``.
    ``deadline`` (a ``time.monotonic()`` value) is checked before every batch: past it,
    :class:`DeadlineReached` is raised.
    """
    model.eval()
    ordered, restore = ordered_for_inference(preprocessor, items)
    outputs = []
    for start in range(0, len(ordered), batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineReached(f"prediction stopped after {start} of {len(items)} examples")
        batch = move_to(preprocessor.collate(ordered[start:start + batch_size], train=False), device)
        with _autocast(device):
            outputs.append(model(batch).float().cpu())
    return restore(torch.cat(outputs)) if outputs else torch.empty(0)


def _autocast(device: torch.device):
    # Mixed precision only where it pays: on CUDA. On the CPU, float32 is faster for these models.
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: linear warm-up, then cosine decay to 0."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _with_and_without_decay(parameters: list[nn.Parameter], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    # Biases and normalisation weights (1-D) get no weight decay.
    decay = [p for p in parameters if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in parameters if p.requires_grad and p.ndim < 2]
    return ([{"params": decay, "lr": lr, "weight_decay": weight_decay}] if decay else []) + \
           ([{"params": no_decay, "lr": lr, "weight_decay": 0.0}] if no_decay else [])


def parameter_groups(model: TransferModel, config: TrialConfig, head_lr: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups: the head at ``head_lr`` (default ``config.head_lr``); each trained body layer group
    at ``backbone_lr * layer_decay ** k``, k counting groups down from the top one."""
    groups = _with_and_without_decay(list(model.head.parameters()), config.head_lr if head_lr is None else head_lr,
                                     config.weight_decay)
    body = dict(model.body.named_parameters())
    for distance, names in enumerate(reversed(model.layer_groups)):
        lr = config.backbone_lr * config.layer_decay ** distance
        groups += _with_and_without_decay([body[name] for name in names], lr, config.weight_decay)
    return groups


@dataclass
class _Loop:
    """What the epoch loop needs, whichever path: the trained module and how to feed and judge it."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    batches: Callable[[torch.Generator], Iterator[tuple[Any, torch.Tensor]]]  # one epoch of (inputs, targets)
    validate: Callable[[float | None], torch.Tensor]  # validation logits on the CPU, given the deadline
    description: str


class Executor:
    """Runs trials. Keeps encoded data between trials, so each preprocessing is computed once per process."""

    def __init__(self, device: torch.device | str | None = None, show_progress: bool | None = None,
                 max_cached_encodings: int = 6, feature_cache: FeatureCache | None = None):
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

    def features(self, backbone: Backbone, options: InputOptions, data: DatasetBundle, split: Split,
                 batch_size: int = 64, deadline: float | None = None) -> np.ndarray:
        """The pretrained body's features of ``split`` (float32, one row per example), from the feature cache.

        Computing them (on a cache miss) stops with :class:`DeadlineReached` once ``deadline`` passes."""
        key = (data.fingerprint, split.name)
        if key not in self._samples_hashes:
            self._samples_hashes[key] = samples_hash(split.inputs)
        preprocessor = backbone.preprocessor(options)
        return self.feature_cache.features(backbone, preprocessor, lambda: self.encoded(preprocessor, data, split),
                                           self._samples_hashes[key], len(split), self.device, batch_size,
                                           deadline)

    # ------------------------------------------------------------ training

    def fit(self, config: TrialConfig, backbone: Backbone, data: DatasetBundle,
            on_epoch: EpochCallback | None = None, deadline: float | None = None) -> TrialResult:
        """Train ``backbone`` on ``data.train`` as ``config`` says, validating on ``data.val`` after each epoch.

        ``deadline`` is a ``time.monotonic()`` value; the loop stops at the first batch past it.
        The result holds the best epoch's weights (see :meth:`TrialResult.final_model`).

        A trial that runs out of memory is tried once more at half the batch size (see
        :func:`fit_with_out_of_memory_retry`); if that runs out of memory too, :class:`TrialOutOfMemory`.
        """
        def attempt(trial_config: TrialConfig) -> TrialResult:
            if trial_config.strategy == "linear_probe":
                return self._fit_probe(trial_config, backbone, data, on_epoch, deadline)
            if trial_config.strategy in EMBEDDING_STRATEGIES:
                return self._fit_embedding_head(trial_config, backbone, data, on_epoch, deadline)
            return self._fit_body(trial_config, backbone, data, on_epoch, deadline)

        return fit_with_out_of_memory_retry(attempt, config)

    def _fit_probe(self, config: TrialConfig, backbone: Backbone, data: DatasetBundle,
                   on_epoch: EpochCallback | None, deadline: float | None) -> TrialResult:
        """A linear probe: the head alone, on cached features; the whole model is built only if asked for."""
        started, cpu_started = time.perf_counter(), time.process_time()
        head, history, stop_reason, seen = self._train_head_on_features(
            config, backbone, data, config.epochs * config.probe_passes, config.epochs, on_epoch, deadline)

        def model_builder() -> TransferModel:
            # The body is loaded only if the model is wanted (the search saves the best trial's alone).
            model = self._build(backbone, config, len(data.classes))
            model.head.load_state_dict(head.state_dict())
            model.set_freeze_depth(0)
            return model.eval()

        # No release_memory() here: a head holds next to nothing, and a full garbage collection
        # would cost more than the whole probe.
        return TrialResult(config=config, history=history, stop_reason=stop_reason,
                           seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                           samples_seen=seen, model_builder=model_builder if head is not None else None)

    def _fit_embedding_head(self, config: TrialConfig, backbone: Backbone, data: DatasetBundle,
                            on_epoch: EpochCallback | None, deadline: float | None) -> TrialResult:
        """Nearest centroid or logistic regression, fitted at once on the cached training features.

        Validated as ``data.validation`` says: on the validation split ("holdout"); by out-of-fold
        predictions on the training split ("cross_validation", when few-shot data holds nothing out); or,
        with one example per class ("none"), on the training split itself. One epoch is recorded. With
        few-shot data and a held-out validation split, the model built for saving is fitted again on the
        training and validation shots together.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        holdout = data.validation == VALIDATION_HOLDOUT
        try:
            train_x = self.features(backbone, config.input_options, data, data.train, deadline=deadline)
            val_x = self.features(backbone, config.input_options, data, data.val, deadline=deadline) if holdout else None
        except DeadlineReached:  # the budget ran out while computing features: nothing fitted
            return TrialResult(config=config, history=[], stop_reason=STOP_TIME, seconds=time.perf_counter() - started,
                               cpu_seconds=time.process_time() - cpu_started, samples_seen=0)
        fit, num_classes, train_y = FITTERS[config.strategy], len(data.classes), data.train.labels
        fit_started = time.perf_counter()
        fitted = fit(train_x, train_y, num_classes, config.seed)
        train_logits = head_logits(fitted.module, train_x)
        train_seconds = time.perf_counter() - fit_started
        if holdout:
            val_logits, val_y = head_logits(fitted.module, val_x), data.val.labels
        elif data.validation == VALIDATION_CROSS:
            val_logits, val_y = cross_validated_logits(fit, train_x, train_y, num_classes, config.seed), train_y
        else:  # nothing can be held out of one example per class
            val_logits, val_y = train_logits, train_y
        loss_fn = nn.CrossEntropyLoss()
        val_accuracy = float((val_logits.argmax(1).numpy() == val_y).mean())
        record = EpochRecord(1, loss_fn(train_logits, torch.as_tensor(train_y)).item(),
                             loss_fn(val_logits, torch.as_tensor(val_y)).item(), val_accuracy, train_seconds,
                             time.perf_counter() - fit_started - train_seconds)
        stop_reason = STOP_CALLBACK if on_epoch is not None and on_epoch(1, val_accuracy) else STOP_COMPLETED
        extra = {**fitted.details, "validation": data.validation}
        refit = holdout and data.shots is not None
        if refit:
            # Few labels: once validated, the saved head learns from every labelled example (training and
            # validation shots), as scikit-learn's refit does; the validation accuracy is the held-out one.
            extra["refit_on"] = "train+validation"

        def final_head() -> nn.Module:
            if not refit:
                return fitted.module
            every_x, every_y = np.concatenate([train_x, val_x]), np.concatenate([train_y, data.val.labels])
            return fit(every_x, every_y, num_classes, config.seed, **fitted.details).module  # the same choices

        def model_builder() -> TransferModel:  # only the trial kept as the best pays for the refit
            model = self._build(backbone, config, num_classes)
            model.head.load_state_dict(final_head().state_dict())
            model.set_freeze_depth(0)
            return model.eval()

        return TrialResult(config=config, history=[record], stop_reason=stop_reason,
                           seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                           samples_seen=len(train_y), model_builder=model_builder, extra=extra)

    def _fit_body(self, config: TrialConfig, backbone: Backbone, data: DatasetBundle,
                  on_epoch: EpochCallback | None, deadline: float | None) -> TrialResult:
        """Last-k, full fine-tuning and LP-FT: the body runs on every batch."""
        started, cpu_started = time.perf_counter(), time.process_time()
        extra: dict[str, Any] = {}
        probe_head = None
        if config.strategy == "lp_ft":
            probe_head, probe_history, _, _ = self._train_head_on_features(
                config, backbone, data, config.probe_passes, 1, None, deadline)
            extra["probe_val_accuracy"] = probe_history[-1].val_accuracy if probe_history else None
        model = self._build(backbone, config, len(data.classes))
        if probe_head is not None:
            model.head.load_state_dict(probe_head.state_dict())
            model.freeze_norm_statistics = True
        model.set_freeze_depth(config.trained_depth(model.num_groups))
        # LP-FT's second stage moves the head as gently as the body, so the probe is not undone.
        head_lr = config.backbone_lr if config.strategy == "lp_ft" else config.head_lr
        optimizer = torch.optim.AdamW(parameter_groups(model, config, head_lr))
        preprocessor = backbone.preprocessor(config.input_options)
        train_items = self.encoded(preprocessor, data, data.train)
        val_items = self.encoded(preprocessor, data, data.val)
        train_labels = torch.as_tensor(data.train.labels)

        def batches(generator: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
            order = torch.randperm(len(train_items), generator=generator)
            for start in range(0, len(order), config.batch_size):
                index = order[start:start + config.batch_size]
                yield preprocessor.collate([train_items[i] for i in index], train=True), train_labels[index]

        loop = _Loop(model, optimizer, math.ceil(len(train_items) / config.batch_size), batches,
                     lambda deadline: predict_logits(model, preprocessor, val_items, config.batch_size * 2,
                                                     self.device, deadline),
                     f"{config.backbone} {config.strategy} depth={config.trained_depth(model.num_groups)}")
        history, best_state, stop_reason, seen = self._run_epochs(loop, config, data, config.epochs, on_epoch,
                                                                  deadline)
        if best_state is not None:
            model.load_state_dict(best_state)
            model.eval()
        result = TrialResult(
            config=config, history=history, stop_reason=stop_reason,
            seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
            samples_seen=seen, model=model if best_state is not None else None, extra=extra,
        )
        # Free what the trial held before the next one starts (optimizer state can be as big as the model).
        del optimizer, loop, best_state
        release_memory()
        return result

    def _build(self, backbone: Backbone, config: TrialConfig, num_classes: int) -> TransferModel:
        """The pretrained body with the trial's head, freshly initialised from the trial's seed
        (the same initial head as a probe of the same seed gets)."""
        model = backbone.build(num_classes=num_classes)
        torch.manual_seed(config.seed)
        model.head = build_head(config.head, backbone.embedding_dim, num_classes)
        return model.to(self.device)

    def _train_head_on_features(self, config: TrialConfig, backbone: Backbone, data: DatasetBundle, passes: int,
                                epochs: int, on_epoch: EpochCallback | None, deadline: float | None,
                                ) -> tuple[nn.Module | None, list[EpochRecord], str, int]:
        """Train the trial's head alone on the frozen body's cached features.

        ``passes`` over the training features are spread over ``epochs`` reported epochs (a pass costs so
        little that a probe needs many). Returns the best head (None if no epoch finished) and its history.
        """
        try:
            train_x = self.features(backbone, config.input_options, data, data.train, deadline=deadline)
            val_x = self.features(backbone, config.input_options, data, data.val, deadline=deadline)
        except DeadlineReached:  # the budget ran out while computing features: no epoch, nothing stored
            return None, [], STOP_TIME, 0
        train_x, val_x = torch.as_tensor(train_x).to(self.device), torch.as_tensor(val_x).to(self.device)
        train_y = torch.as_tensor(data.train.labels)
        torch.manual_seed(config.seed)
        head = build_head(config.head, train_x.shape[1], len(data.classes)).to(self.device)
        optimizer = torch.optim.AdamW(_with_and_without_decay(list(head.parameters()), config.head_lr,
                                                              config.weight_decay))
        passes_per_epoch = max(1, passes // epochs)
        steps_per_pass = math.ceil(len(train_x) / config.batch_size)

        def batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for _ in range(passes_per_epoch):
                order = torch.randperm(len(train_x), generator=generator)
                for start in range(0, len(order), config.batch_size):
                    index = order[start:start + config.batch_size]
                    yield train_x[index.to(self.device)], train_y[index]

        @torch.no_grad()
        def validate(deadline: float | None) -> torch.Tensor:  # one matrix product: too quick to interrupt
            head.eval()
            return head(val_x).float().cpu()

        loop = _Loop(head, optimizer, steps_per_pass * passes_per_epoch, batches, validate,
                     f"{config.backbone} head on features")
        history, best_state, stop_reason, seen = self._run_epochs(loop, config, data, epochs, on_epoch, deadline)
        if best_state is None:
            return None, history, stop_reason, seen
        head.load_state_dict(best_state)
        return head.eval(), history, stop_reason, seen

    def _run_epochs(self, loop: _Loop, config: TrialConfig, data: DatasetBundle, epochs: int,
                    on_epoch: EpochCallback | None, deadline: float | None,
                    ) -> tuple[list[EpochRecord], dict[str, torch.Tensor] | None, str, int]:
        """The epoch loop both paths share; returns the history, the best epoch's state, why it stopped and
        how many training examples went forward."""
        generator = torch.Generator().manual_seed(config.seed)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            loop.optimizer, warmup_cosine(loop.steps_per_epoch * epochs, config.warmup_fraction))
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        loss_fn = nn.CrossEntropyLoss()
        val_labels = torch.as_tensor(data.val.labels)
        trained = [p for group in loop.optimizer.param_groups for p in group["params"]]

        history: list[EpochRecord] = []
        best_state: dict[str, torch.Tensor] | None = None
        stop_reason, samples_seen, epochs_without_gain = STOP_COMPLETED, 0, 0
        progress = tqdm(range(1, epochs + 1), desc=loop.description, unit="epoch", leave=False,
                        disable=not self.show_progress)
        for epoch in progress:
            epoch_started = time.perf_counter()
            loop.module.train()
            loss_sum, seen = 0.0, 0
            for step, (inputs, targets) in enumerate(tqdm(loop.batches(generator), total=loop.steps_per_epoch,
                                                          desc=f"epoch {epoch}", unit="batch", leave=False,
                                                          disable=not self.show_progress)):
                if deadline is not None and time.monotonic() > deadline:
                    stop_reason = STOP_TIME
                    break
                inputs, targets = move_to(inputs, self.device), targets.to(self.device)
                with _autocast(self.device):
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
            if stop_reason == STOP_TIME:
                break

            train_seconds = time.perf_counter() - epoch_started
            try:
                val_logits = loop.validate(deadline)
            except DeadlineReached:  # an epoch counts only once validated: this one does not
                stop_reason = STOP_TIME
                break
            val_loss = loss_fn(val_logits, val_labels).item()
            val_accuracy = (val_logits.argmax(1) == val_labels).float().mean().item()
            record = EpochRecord(epoch, loss_sum / max(seen, 1), val_loss, val_accuracy, train_seconds,
                                 time.perf_counter() - epoch_started - train_seconds)
            is_best = not history or val_accuracy > max(r.val_accuracy for r in history)
            history.append(record)
            progress.set_postfix(val_acc=f"{val_accuracy:.3f}")
            logger.debug("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f",
                         epoch, record.train_loss, val_loss, val_accuracy)
            if is_best:
                best_state = {k: v.detach().clone() for k, v in loop.module.state_dict().items()}
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
            if on_epoch is not None and on_epoch(epoch, val_accuracy):
                stop_reason = STOP_CALLBACK
                break
            if epochs_without_gain >= config.early_stopping_patience and epoch < epochs:
                stop_reason = STOP_EARLY
                break
        progress.close()
        return history, best_state, stop_reason, samples_seen


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
    logger.warning("%s %s ran out of memory at batch size %d (%s); retrying it once at batch size %d",
                   config.backbone, config.strategy, size, first_error, smaller)
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


def release_memory() -> None:
    """Return freed tensors to the system between trials."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    """Share of rows whose highest logit is the true label."""
    return float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else float("nan")
