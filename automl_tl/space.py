"""The search space: the only module that calls ``trial.suggest_*``.

Every parameter keeps one distribution for the whole study, whichever backbone a trial
picks, so that TPE can learn across backbones and a stored study can be resumed.
``freeze_depth`` counts the last layer groups that train (0 = head only); a depth at or
above a backbone's number of groups means full fine-tuning of that backbone.

Epochs are the budget, not a searched parameter: every trial is scheduled for
``max_epochs`` (one warm-up + cosine schedule), and the pruner and early stopping decide how
many it really runs. Searching the epoch count would make the pruner compare, at epoch 1, a
trial whose learning rate has fully decayed with one that is still warm, and prune the latter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from automl_tl.config import DEFAULT_BACKBONE_LR_RANGES, SearchConfig, TrialConfig


@dataclass(frozen=True)
class SearchSpace:
    """The ranges one study searches; stored with the study so a resume can check it matches."""

    backbones: tuple[str, ...]
    max_freeze_depth: int
    backbone_lr_range: tuple[float, float]
    head_lr_range: tuple[float, float]
    max_epochs: int

    @classmethod
    def from_config(cls, config: SearchConfig, backbones: list[str], max_groups: int, modality: str) -> "SearchSpace":
        depth = max_groups if config.max_freeze_depth is None else min(config.max_freeze_depth, max_groups)
        backbone_lrs = config.backbone_lr_range or DEFAULT_BACKBONE_LR_RANGES[modality]
        return cls(tuple(backbones), depth, tuple(backbone_lrs), tuple(config.head_lr_range),
                   config.max_epochs)

    def to_dict(self) -> dict[str, Any]:
        return {"backbones": list(self.backbones), "max_freeze_depth": self.max_freeze_depth,
                "backbone_lr_range": list(self.backbone_lr_range), "head_lr_range": list(self.head_lr_range),
                "max_epochs": self.max_epochs}


def suggest_trial_config(trial: optuna.Trial, space: SearchSpace, search: SearchConfig) -> TrialConfig:
    """Ask the sampler for one point of ``space`` and turn it into a :class:`TrialConfig`."""
    return TrialConfig(
        backbone=trial.suggest_categorical("backbone", list(space.backbones)),
        freeze_depth=trial.suggest_int("freeze_depth", 0, space.max_freeze_depth),
        # Suggested even for head-only trials, which ignore it, so the distribution never changes.
        backbone_lr=trial.suggest_float("backbone_lr", *space.backbone_lr_range, log=True),
        head_lr=trial.suggest_float("head_lr", *space.head_lr_range, log=True),
        epochs=space.max_epochs,
        batch_size=search.batch_size,
        seed=search.seed + trial.number,
        input_options=search.input_options,
    )
