"""The one fine-tuning loop every trial runs through. It knows nothing of Optuna.

Reads top to bottom: encode the data once (cached across trials), build the model,
freeze by depth, AdamW with one learning rate for the head and one for the body,
linear warm-up then cosine decay, gradient clipping, AMP on CUDA, per-epoch
validation reported through ``on_epoch``, early stopping, best weights restored.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from automl_tl.backbone import Backbone, Preprocessor, TransferModel
from automl_tl.config import TrialConfig
from automl_tl.data import DatasetBundle, Split

logger = logging.getLogger(__name__)

#: called after each epoch with (epoch, validation accuracy); returning True stops the trial
EpochCallback = Callable[[int, float], bool]

STOP_COMPLETED = "completed"  # ran every epoch
STOP_EARLY = "early_stopping"  # validation accuracy stopped improving
STOP_CALLBACK = "stopped_by_callback"  # on_epoch asked to stop (the search prunes the trial)
STOP_TIME = "time_budget"  # the deadline passed


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
    model: TransferModel | None = None  # best epoch's weights; None when no epoch finished
    trial_number: int | None = None  # set by the search
    state: str = ""  # set by the search: COMPLETE, PRUNED or FAIL
    error: str | None = None  # set by the search for failed trials
    extra: dict[str, Any] = field(default_factory=dict)

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
                   device: torch.device) -> torch.Tensor:
    """Logits for encoded ``items`` in order, in eval mode, on ``device``; returned on the CPU."""
    model.eval()
    outputs = []
    for start in range(0, len(items), batch_size):
        batch = move_to(preprocessor.collate(items[start:start + batch_size], train=False), device)
        with _autocast(device):
            outputs.append(model(batch).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


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


def parameter_groups(model: TransferModel, config: TrialConfig) -> list[dict[str, Any]]:
    """AdamW groups: head and body get their own learning rate; biases and norms get no weight decay."""
    groups = []
    for part, lr in ((model.head, config.head_lr), (model.body, config.backbone_lr)):
        trained = [p for p in part.parameters() if p.requires_grad]
        decay = [p for p in trained if p.ndim >= 2]
        no_decay = [p for p in trained if p.ndim < 2]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


class Executor:
    """Runs trials. Keeps encoded data between trials, so each preprocessing is computed once per process."""

    def __init__(self, device: torch.device | str | None = None, show_progress: bool | None = None,
                 max_cached_encodings: int = 6):
        self.device = torch.device(device) if device is not None else default_device()
        # Progress bars only on a terminal by default: in logs, the per-trial log lines say enough.
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self._encoded: OrderedDict[tuple[str, str, str], list[Any]] = OrderedDict()
        self._max_cached = max_cached_encodings

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

    # ------------------------------------------------------------ training

    def fit(self, config: TrialConfig, backbone: Backbone, data: DatasetBundle,
            on_epoch: EpochCallback | None = None, deadline: float | None = None) -> TrialResult:
        """Fine-tune ``backbone`` on ``data.train``, validate on ``data.val`` after each epoch.

        ``deadline`` is a ``time.monotonic()`` value; the loop stops at the first batch past it.
        The returned model holds the best epoch's weights.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)

        preprocessor = backbone.preprocessor(config.input_options)
        train_items = self.encoded(preprocessor, data, data.train)
        val_items = self.encoded(preprocessor, data, data.val)
        train_labels = torch.as_tensor(data.train.labels)
        val_labels = torch.as_tensor(data.val.labels)

        model = backbone.build(num_classes=len(data.classes)).to(self.device)
        model.set_freeze_depth(config.freeze_depth)
        optimizer = torch.optim.AdamW(parameter_groups(model, config))
        steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(steps_per_epoch * config.epochs, config.warmup_fraction))
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        loss_fn = nn.CrossEntropyLoss()

        history: list[EpochRecord] = []
        best_state: dict[str, torch.Tensor] | None = None
        stop_reason, samples_seen, epochs_without_gain = STOP_COMPLETED, 0, 0
        epochs = tqdm(range(1, config.epochs + 1), desc=f"{config.backbone} depth={config.freeze_depth}",
                      unit="epoch", leave=False, disable=not self.show_progress)
        for epoch in epochs:
            epoch_started = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_items), generator=generator)
            loss_sum, seen = 0.0, 0
            batches = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", unit="batch", leave=False,
                           disable=not self.show_progress)
            for step in batches:
                if deadline is not None and time.monotonic() > deadline:
                    stop_reason = STOP_TIME
                    break
                index = order[step * config.batch_size:(step + 1) * config.batch_size]
                batch = move_to(preprocessor.collate([train_items[i] for i in index], train=True), self.device)
                targets = train_labels[index].to(self.device)
                with _autocast(self.device):
                    loss = loss_fn(model(batch).float(), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, step {step}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                loss_sum += loss.item() * len(index)
                seen += len(index)
            samples_seen += seen
            if stop_reason == STOP_TIME:
                break

            train_seconds = time.perf_counter() - epoch_started
            val_logits = predict_logits(model, preprocessor, val_items, config.batch_size * 2, self.device)
            val_loss = loss_fn(val_logits, val_labels).item()
            val_accuracy = (val_logits.argmax(1) == val_labels).float().mean().item()
            record = EpochRecord(epoch, loss_sum / max(seen, 1), val_loss, val_accuracy, train_seconds,
                                 time.perf_counter() - epoch_started - train_seconds)
            is_best = not history or val_accuracy > max(r.val_accuracy for r in history)
            history.append(record)
            epochs.set_postfix(val_acc=f"{val_accuracy:.3f}")
            logger.debug("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f",
                         epoch, record.train_loss, val_loss, val_accuracy)
            if is_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
            if on_epoch is not None and on_epoch(epoch, val_accuracy):
                stop_reason = STOP_CALLBACK
                break
            if epochs_without_gain >= config.early_stopping_patience and epoch < config.epochs:
                stop_reason = STOP_EARLY
                break
        epochs.close()

        if best_state is not None:
            model.load_state_dict(best_state)
            model.eval()
        result = TrialResult(
            config=config, history=history, stop_reason=stop_reason,
            seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
            samples_seen=samples_seen, model=model if best_state is not None else None,
        )
        # Free what the trial held before the next one starts (optimizer state can be as big as the model).
        del optimizer, schedule, best_state
        release_memory()
        return result


def release_memory() -> None:
    """Return freed tensors to the system between trials."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    """Share of rows whose highest logit is the true label."""
    return float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else float("nan")
