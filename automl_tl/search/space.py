"""The search space: the only module that calls ``trial.suggest_*``.

Every parameter is suggested in every trial with one distribution for the whole study,
whichever backbone or strategy a trial picks (a head-only trial still draws a body learning
rate it ignores). TPE then learns across backbones and strategies, and a stored study can be
resumed and checked against the space it was made with. What people read (the leaderboard, the log
lines, ``best_params``) shows only the parameters a trial's strategy used: :func:`used_parameters`.

The choices: the backbone; the adaptation strategy (linear probe, last-k layer groups, full
fine-tuning, LP-FT, with few labels nearest centroid and logistic regression on the
embeddings, and when asked for BitFit, norm-only tuning and LoRA, with its rank, alpha and dropout);
``trained_groups``, how many of the body's layer groups, counted from the head, train
(last-k and LP-FT; earlier versions called it ``freeze_depth``);
the body's peak learning rate and its layer-wise decay; the head's learning rate; the head's
structure (linear, or an MLP with a searched hidden width and dropout); and, for the strategies that train the
body (:attr:`~automl_tl.strategies.Strategy.augmentable`), the training-batch augmentation among those the
backbones' modality offers (:mod:`automl_tl.augmentation`). It is the one parameter drawn only where it is used:
a frozen body's features are cached un-augmented, and a text search, with nothing but "none", never draws it.

Epochs are the budget, not a searched parameter: every trial is scheduled for ``max_epochs``
(one warm-up + cosine schedule), and the pruner and early stopping decide how many it really
runs. Searching the epoch count would make the pruner compare, at epoch 1, a trial whose
learning rate has fully decayed with one that is still warm, and prune the latter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import pandas as pd

from automl_tl.augmentation import NO_AUGMENTATION
from automl_tl.config import DEFAULT_BACKBONE_LR_RANGES, SearchConfig, TrialConfig
from automl_tl.data.bundle import MIN_SHOTS_FOR_HOLDOUT, VALIDATION_CROSS, VALIDATION_HOLDOUT
from automl_tl.errors import ConfigError
from automl_tl.heads import HeadSpec
from automl_tl.strategies import (
    EMBEDDING_STRATEGIES,
    FINE_TUNING_STRATEGIES,
    LINEAR_PROBE,
    LOGISTIC_REGRESSION,
    LORA,
    NEAREST_CENTROID,
    current_names,
    get_strategy,
)

LAYER_DECAY_RANGE = (0.6, 1.0)  # 1.0: one learning rate for the whole body
#: the warm-start fine-tune's body learning rate (AutoGluon MultiModal's default too). The geometric middle of the
#: image range, 3.2e-4, made MobileNetV2's LP-FT on 354 small digits collapse to chance at 160 and 224 px, and
#: at 64 px for some seeds; the one fine-tune a short budget holds must not be the one that diverges
WARM_START_BACKBONE_LR = 1e-4
HEAD_HIDDEN_RANGE = (64, 1024)  # MLP head width, searched on a log scale
HEAD_DROPOUT_RANGE = (0.0, 0.5)
LORA_RANKS = (4, 8, 16)
LORA_ALPHAS = (1.0, 2.0)  # alpha as a multiple of the rank: the adapters' output scaled by 1 or 2
LORA_DROPOUT_RANGE = (0.0, 0.2)


@dataclass(frozen=True)
class SearchSpace:
    """The ranges one study searches; stored with the study so a resume can check it matches."""

    backbones: tuple[str, ...]
    strategies: tuple[str, ...]
    #: the range of ``trained_groups`` (how many layer groups, counted from the head, a trial trains)
    min_trained_groups: int
    max_trained_groups: int
    backbone_lr_range: tuple[float, float]
    head_lr_range: tuple[float, float]
    heads: tuple[str, ...]
    max_epochs: int
    metric: str = "accuracy"  # what trials are scored by (see automl_tl.metrics)
    class_weighted: bool = False  # training weighs classes inversely to their frequency
    #: training-batch augmentations drawn for the strategies that train the body; ("none",): never drawn
    augmentations: tuple[str, ...] = (NO_AUGMENTATION,)
    #: backbone -> the image side its trials that train the body use instead of its pretrained one (images much
    #: smaller than that: see automl_tl.modalities.image.fine_tuning_side); frozen-body trials keep theirs
    fine_tuning_image_sizes: Mapping[str, int] = field(default_factory=dict)

    @property
    def draws_augmentation(self) -> bool:
        """Whether trials that train the body draw an augmentation (not when "none" is all there is)."""
        return self.augmentations != (NO_AUGMENTATION,)

    @classmethod
    def from_config(
        cls,
        config: SearchConfig,
        backbones: list[str],
        max_groups: int,
        modality: str,
        validation: str = VALIDATION_HOLDOUT,
        metric: str = "accuracy",
        class_weighted: bool = False,
        augmentations: Sequence[str] = (NO_AUGMENTATION,),
    ) -> "SearchSpace":
        """The space for ``backbones`` (the largest has ``max_groups`` layer groups) under the user's limits.

        ``metric`` and ``class_weighted`` are the data's (see :mod:`automl_tl.metrics`). ``augmentations``: those
        every backbone offers (:attr:`~automl_tl.backbone.Backbone.augmentations`), of which the search draws
        those the user asked for (all by default); asking only for ones they do not offer is refused.
        ``validation`` (the data's, see :func:`automl_tl.data.bundle.prepare_dataset`): unless "holdout", the
        validation split is the training split, so only the embedding strategies (cross-validated) are
        searched, and with nothing to validate ("none"), nearest centroid alone.
        """
        groups = max_groups if config.max_trained_groups is None else min(config.max_trained_groups, max_groups)
        strategies = list(config.strategies)
        if groups < max_groups:
            # The user capped how much of the body may train: not what trains some of every group (full, BitFit...).
            strategies = [s for s in strategies if not get_strategy(s).trains_every_group]
        if groups == 0:
            # Nothing of the body may train: a head-only search, on cached features.
            strategies = [s for s in strategies if s in EMBEDDING_STRATEGIES] + [LINEAR_PROBE]
        if validation != VALIDATION_HOLDOUT:
            # Any other strategy would be validated on the very examples it trained on.
            allowed = EMBEDDING_STRATEGIES if validation == VALIDATION_CROSS else (NEAREST_CENTROID,)
            kept = [s for s in strategies if s in allowed]
            if not kept:
                why = (
                    "cross-validate"
                    if validation == VALIDATION_CROSS
                    else "be fitted with nothing to validate on (one shot per class)"
                )
                raise ConfigError(
                    f"with fewer than {MIN_SHOTS_FOR_HOLDOUT} shots per class nothing is held out, and only "
                    f"{' and '.join(allowed)} can {why}; the strategies asked for were "
                    f"{', '.join(strategies)}; add {allowed[0]} to the strategies or use more shots"
                )
            strategies = kept
        backbone_lrs = config.backbone_lr_range or DEFAULT_BACKBONE_LR_RANGES[modality]
        offered = tuple(augmentations)
        drawn = offered if config.augmentation is None else tuple(a for a in config.augmentation if a in offered)
        if not drawn:
            raise ConfigError(
                f"the {modality} backbones offer no augmentation {', '.join(config.augmentation or ())}; "
                f"expected some of {', '.join(offered)}"
            )
        return cls(
            tuple(backbones),
            tuple(strategies) or (LINEAR_PROBE,),
            min(1, groups),
            groups,
            tuple(backbone_lrs),
            tuple(config.head_lr_range),
            tuple(config.heads),
            config.max_epochs,
            metric,
            class_weighted,
            drawn,
        )

    def to_dict(self) -> dict[str, Any]:
        # (a space that draws no augmentation is stored as before augmentation was searched: an earlier
        # version's study, which holds no augmentations, resumes with --augmentation none)
        augmentations = {"augmentations": list(self.augmentations)} if self.draws_augmentation else {}
        return {
            "backbones": list(self.backbones),
            "strategies": list(self.strategies),
            "min_trained_groups": self.min_trained_groups,
            "max_trained_groups": self.max_trained_groups,
            "backbone_lr_range": list(self.backbone_lr_range),
            "head_lr_range": list(self.head_lr_range),
            "heads": list(self.heads),
            "max_epochs": self.max_epochs,
            "metric": self.metric,
            "class_weighted": self.class_weighted,
            **augmentations,
            # (likewise stored only when some backbone has one: a study made before resumes unchanged)
            **({"fine_tuning_image_sizes": dict(self.fine_tuning_image_sizes)} if self.fine_tuning_image_sizes else {}),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SearchSpace":
        """The inverse of :meth:`to_dict` (a worker joining a study takes the space stored with it; one stored by
        an earlier version is read under today's names: :func:`~automl_tl.strategies.current_names`)."""
        values = current_names(values)
        for name in ("backbones", "strategies", "backbone_lr_range", "head_lr_range", "heads"):
            values[name] = tuple(values[name])
        if "augmentations" in values:
            values["augmentations"] = tuple(values["augmentations"])
        if "fine_tuning_image_sizes" in values:
            values["fine_tuning_image_sizes"] = {str(k): int(v) for k, v in values["fine_tuning_image_sizes"].items()}
        return cls(**values)

    def default_params(self) -> dict[str, Any]:
        """A middle-of-the-road value for every parameter (for warm-start trials): the body learning rate most
        fine-tuning recipes start from (:data:`WARM_START_BACKBONE_LR`, within the range), no layer decay, the
        most trained layer groups allowed, a linear head."""
        low, high = self.backbone_lr_range
        return {
            "backbone": self.backbones[0],
            "strategy": self.strategies[0],
            "trained_groups": self.max_trained_groups,
            "backbone_lr": min(max(WARM_START_BACKBONE_LR, low), high),
            "layer_decay": 1.0,
            "head_lr": min(max(1e-2, self.head_lr_range[0]), self.head_lr_range[1]),
            "head": self.heads[0],
            "head_hidden": 256,
            "head_dropout": 0.0,
            **({"augmentation": self.augmentations[0]} if self.draws_augmentation else {}),
        }


def common_augmentations(offered: Sequence[Sequence[str]]) -> list[str]:
    """The augmentations every one of the backbones offers (each backbone's
    :attr:`~automl_tl.backbone.Backbone.augmentations`, in the first one's order): what a search over them may draw
    (a plugin's backbone may offer fewer than its modality)."""
    return [name for name in offered[0] if all(name in other for other in offered[1:])]


def suggest_trial_config(
    trial: optuna.Trial, space: SearchSpace, search: SearchConfig, slot: int | None = None
) -> TrialConfig:
    """Ask the sampler for one point of ``space`` and turn it into a :class:`TrialConfig`.

    The trial trains with seed ``search.seed + slot`` (default: the trial's number; see
    :func:`automl_tl.search.liveness.trial_slot`)."""
    backbone = trial.suggest_categorical("backbone", list(space.backbones))
    strategy = trial.suggest_categorical("strategy", list(space.strategies))
    # Every new trial draws "trained_groups", with the same distribution as before the rename. In a study made by
    # an earlier version, the finished trials hold it as "freeze_depth" (stored trials cannot be renamed), and
    # samplers read past trials' params by name: to multivariate TPE, whose joint space is the parameters common
    # to every finished trial, neither name is common while old and new trials are mixed, so it models the
    # other parameters jointly over all trials and draws "trained_groups" on its own (independent TPE) from the
    # new trials only; the old trials' values do not guide it. Nothing crashes, and everything that reads the
    # trials back (leaderboard, report, best params, retries) reads "freeze_depth" as "trained_groups"
    # (automl_tl.strategies.current_names).
    trained_groups = trial.suggest_int("trained_groups", space.min_trained_groups, space.max_trained_groups)
    backbone_lr = trial.suggest_float("backbone_lr", *space.backbone_lr_range, log=True)
    layer_decay = trial.suggest_float("layer_decay", *LAYER_DECAY_RANGE)
    head_lr = trial.suggest_float("head_lr", *space.head_lr_range, log=True)
    # (an embedding strategy replaces the head with its own: see TrialConfig)
    head = HeadSpec(
        kind=trial.suggest_categorical("head", list(space.heads)),
        hidden=trial.suggest_int("head_hidden", *HEAD_HIDDEN_RANGE, log=True),
        dropout=trial.suggest_float("head_dropout", *HEAD_DROPOUT_RANGE),
    )
    # Drawn only where it can help: a frozen body's cached features are never augmented (see the module docstring).
    augmentation = (
        trial.suggest_categorical("augmentation", list(space.augmentations))
        if space.draws_augmentation and get_strategy(strategy).augmentable
        else space.augmentations[0]
    )
    # LoRA's parameters, unlike the others, are drawn by LoRA trials only (and last): a search without LoRA draws
    # exactly what it drew before LoRA was added (the same trials from the same seed, the same params stored).
    lora = (
        {
            "lora_rank": trial.suggest_categorical("lora_rank", list(LORA_RANKS)),
            "lora_alpha": trial.suggest_categorical("lora_alpha", list(LORA_ALPHAS)),
            "lora_dropout": trial.suggest_float("lora_dropout", *LORA_DROPOUT_RANGE),
        }
        if strategy == LORA
        else {}
    )
    input_options = search.input_options
    if backbone in space.fine_tuning_image_sizes and not get_strategy(strategy).frozen_body:
        input_options = replace(input_options, image_size=space.fine_tuning_image_sizes[backbone])
    return TrialConfig(
        backbone=backbone,
        strategy=strategy,
        trained_groups=trained_groups,
        backbone_lr=backbone_lr,
        layer_decay=layer_decay,
        head_lr=head_lr,
        head=head,
        epochs=space.max_epochs,
        batch_size=search.batch_size,
        seed=search.seed + (trial.number if slot is None else slot),
        input_options=input_options,
        metric=space.metric,
        class_weighted=space.class_weighted,
        augmentation=augmentation,
        **lora,
    )


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
        return (
            [{**base, "backbone": name, "strategy": strategy} for name in order] if strategy in space.strategies else []
        )

    trials = of_every_backbone(NEAREST_CENTROID) + of_every_backbone(LINEAR_PROBE)
    fine_tune = next((s for s in FINE_TUNING_STRATEGIES if s in space.strategies), None)
    if order and fine_tune is not None:
        trials.append({**base, "backbone": order[0], "strategy": fine_tune})
    return trials + of_every_backbone(LOGISTIC_REGRESSION)
