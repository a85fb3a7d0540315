"""Frozen settings objects with explicit fields: one trial, and one search."""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from automl_tl.augmentation import AUGMENTATION_NAMES, NO_AUGMENTATION
from automl_tl.errors import ConfigError
from automl_tl.heads import HEAD_KINDS, HeadSpec
from automl_tl.inputs import InputOptions
from automl_tl.metrics import METRIC_NAMES
from automl_tl.options import (
    DEFAULT_STUDY_NAME,
    IMAGE_SIZE_RANGE,
    MAX_CLIP_SECONDS,
    MAX_LENGTH_RANGE,
    PRUNERS,
    SAMPLERS,
    option_kinds,
    renamed_warning,
)
from automl_tl.strategies import DEFAULT_STRATEGIES, RENAMED, STRATEGY_NAMES, current_names, get_strategy

logger = logging.getLogger(__name__)

#: pretrained transformers diverge at body learning rates that CNNs take in their stride
DEFAULT_BACKBONE_LR_RANGES = {"image": (1e-5, 1e-2), "audio": (1e-5, 1e-2), "text": (1e-5, 1e-3)}
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql", "mysql+pymysql")


#: the largest seed: numpy's and the samplers' seeds are unsigned 32-bit numbers
MAX_SEED = 2**32 - 1


def is_whole_number(value: Any) -> bool:
    """Whether ``value`` is an integer (numpy's too); a bool is not, though Python counts it as one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real_number(value: Any) -> bool:
    """Whether ``value`` is a real number (an integer, a float, numpy's); a bool is not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_types(values: dict[str, Any], kinds: dict[str, str]) -> None:
    """Refuse (:class:`~automl_tl.errors.ConfigError`, naming the parameter) a value of ``values`` that is not
    of the kind ``kinds`` gives its name: "int", "float" (seconds), "number", "bool", "str", "names" (a name or
    a sequence of names), "path" (a string or a Path) or "any" (checked where it is used), each followed by
    "?" where None is allowed too. The kinds of the search options are in :mod:`automl_tl.options`."""
    expected = {
        "int": ("a whole number", is_whole_number),
        "float": ("a number of seconds", is_real_number),
        "number": ("a number", is_real_number),
        "bool": ("True or False", lambda v: isinstance(v, bool)),
        "str": ("a string", lambda v: isinstance(v, str)),
        "names": ("a name or a list of names", _is_names),
        "path": ("a path (a string or a Path)", lambda v: isinstance(v, (str, Path))),
        "any": ("anything", lambda v: True),
    }
    for name, kind in kinds.items():
        value = values[name]
        if kind.endswith("?") and value is None:
            continue
        what, test = expected[kind.rstrip("?")]
        if not test(value):
            what = "True, False or None" if kind == "bool?" else what
            raise ConfigError(f"{name} must be {what}, got {value!r}")


def _is_names(value: Any) -> bool:
    return isinstance(value, str) or isinstance(value, Sequence) and all(isinstance(n, str) for n in value)


def check_seed(seed: Any) -> None:
    """Refuse a seed numpy and the samplers cannot take: a whole number from 0 to :data:`MAX_SEED`."""
    if not is_whole_number(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")


def check_input_options(options: "InputOptions") -> None:
    """Refuse input sizes of the wrong type or outside their range (see :data:`IMAGE_SIZE_RANGE`,
    :data:`MAX_CLIP_SECONDS`, :data:`MAX_LENGTH_RANGE`)."""
    values = {"image_size": options.image_size, "max_length": options.max_length, "clip_seconds": options.clip_seconds}
    check_types(values, option_kinds(set(values)))
    size = options.image_size
    if size is not None and size < IMAGE_SIZE_RANGE[0]:
        raise ConfigError(f"image size must be at least {IMAGE_SIZE_RANGE[0]} pixels, got {size}")
    if size is not None and size > IMAGE_SIZE_RANGE[1]:
        raise ConfigError(f"image size must be at most {IMAGE_SIZE_RANGE[1]} pixels, got {size}")
    length = options.max_length
    if length is not None and length < MAX_LENGTH_RANGE[0]:
        raise ConfigError(f"max length must be at least {MAX_LENGTH_RANGE[0]} token, got {length}")
    if length is not None and length > MAX_LENGTH_RANGE[1]:
        raise ConfigError(f"max length must be at most {MAX_LENGTH_RANGE[1]} tokens, got {length}")
    seconds = options.clip_seconds
    if seconds is not None and not seconds > 0:  # (NaN fails this too)
        raise ConfigError(f"clip length must be a positive number of seconds, got {seconds}")
    if seconds is not None and not seconds <= MAX_CLIP_SECONDS:
        raise ConfigError(f"clip length must be at most {MAX_CLIP_SECONDS:g} seconds, got {seconds:g}")


def is_journal_path(storage: str) -> bool:
    """Whether a storage option names a journal file rather than a database URL."""
    return "://" not in storage and storage.endswith((".journal", ".log"))


def check_storage_url(storage: str) -> None:
    """Refuse a storage option that is neither a journal file path nor a database URL we support."""
    scheme = storage.split("://", 1)[0] if "://" in storage else ""
    if scheme.startswith("sqlite") and _in_memory(storage.split("://", 1)[1]):
        raise ConfigError(
            f"storage {storage!r} keeps the study in memory, so it is lost when the search ends: a "
            "rerun cannot resume it and workers cannot share it; give a file (sqlite:///study.db or "
            "a *.journal path), or leave --storage out for RUN_DIR/study.journal"
        )
    if not is_journal_path(storage) and (scheme not in STORAGE_SCHEMES or not storage.split("://", 1)[1]):
        raise ConfigError(
            f"malformed storage URL {storage!r}; expected a journal file path (*.journal) or "
            f"SCHEME://... with SCHEME one of {', '.join(STORAGE_SCHEMES)}"
        )


def _in_memory(location: str) -> bool:
    """Whether an SQLite URL's part after ``://`` names an in-memory database (SQLAlchemy: an empty path,
    ``/:memory:``, or a URI with ``mode=memory``)."""
    return location in ("", "/") or ":memory:" in location or "mode=memory" in location


def _taking_old_names(cls: type) -> type:
    """``cls`` (a dataclass) made to take the fields that earlier versions called otherwise
    (:data:`~automl_tl.strategies.RENAMED`) under their old names too, warning about it, so that a script written
    for such a version still runs: ``SearchConfig(max_freeze_depth=2)`` is ``SearchConfig(max_trained_groups=2)``.
    Both names of one field together are refused, as Python refuses a field given twice."""
    init = cls.__init__
    field_names = {f.name for f in fields(cls)}
    old_names = {old: new for old, new in RENAMED.items() if new in field_names}

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for old in old_names.keys() & kwargs.keys():
            new = old_names[old]
            if new in kwargs:
                raise TypeError(f"{cls.__name__} got both {old!r} and {new!r}, two names of one field")
            logger.warning(renamed_warning(f"{cls.__name__}'s {old}", new))
            kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_taking_old_names
@dataclass(frozen=True)
class TrialConfig:
    """Everything the executor needs to fine-tune one model.

    ``strategy`` says how much of the body adapts:

    * ``linear_probe``: the body stays frozen; only the head trains, on the body's features
      (computed once and cached), for ``epochs * probe_passes`` passes.
    * ``last_k``: the head and the body's last ``trained_groups`` layer groups (counted from the head) train
      (0 = head only, with the body run on every batch).
    * ``full``: every layer group trains.
    * ``lp_ft``: linear probe first (``probe_passes`` passes over cached features), then the head and
      the last ``trained_groups`` groups train together at ``backbone_lr`` (Kumar et al., 2022).
    * ``nearest_centroid``: the body stays frozen; the head is the cosine nearest class mean of the cached
      embeddings (centred and L2-normalised); no learning rate or epoch is used.
    * ``logistic_regression``: the body stays frozen; scikit-learn's logistic regression on the same centred,
      L2-normalised cached embeddings, its ``C`` chosen by cross-validation on the training split.

    Both are saved as a :class:`~automl_tl.train.head_modules.NormalisedLinearHead`.

    * ``bitfit``: the body's bias parameters and the head train, at ``backbone_lr`` and ``head_lr``.
    * ``norm_only``: the weights and biases of the body's normalisation layers and the head train.
    * ``lora``: low-rank adapters (rank ``lora_rank``, scale ``lora_alpha * lora_rank``, ``lora_dropout`` on their
      input) beside the backbone's ``lora_targets`` train with the head; they are merged into the body after.

    The two embedding strategies always get their own head (``Strategy.embedding_head``), whatever ``head`` says.

    Trained body groups get ``backbone_lr`` times ``layer_decay`` to the power of their distance from
    the top group (layer-wise learning-rate decay; 1.0 = one rate for the whole body).

    ``augmentation`` (see :mod:`automl_tl.augmentation`) acts on the training batches of a body that trains; a
    frozen body's cached features are never augmented, so it is "none" for those strategies whatever is given.
    """

    backbone: str
    #: how many of the body's layer groups, counted from the head, train (last_k, lp_ft); 0 = head only.
    #: (Earlier versions called it ``freeze_depth``.)
    trained_groups: int
    backbone_lr: float  # peak learning rate of the trained body groups
    head_lr: float  # peak learning rate of the new head
    epochs: int
    strategy: str = "last_k"
    layer_decay: float = 1.0
    head: HeadSpec = field(default_factory=HeadSpec)
    probe_passes: int = 10  # passes over cached features per epoch of a linear probe; LP-FT's first stage
    batch_size: int = 32
    weight_decay: float = 0.01  # AdamW, not applied to biases and normalisation weights
    warmup_fraction: float = 0.1  # share of steps with a linear warm-up before the cosine decay
    grad_clip_norm: float = 1.0
    early_stopping_patience: int = 2  # epochs without a better validation accuracy before stopping
    seed: int = 0
    input_options: InputOptions = field(default_factory=InputOptions)
    metric: str = "accuracy"  # what the best epoch (and the trial's score) is chosen by; see automl_tl.metrics
    class_weighted: bool = False  # weigh each class inversely to its frequency in the training loss
    #: what the training batches get (automl_tl.augmentation); configs saved before it was searched hold none
    augmentation: str = NO_AUGMENTATION
    lora_rank: int = 8  # the rank of LoRA's adapters
    lora_alpha: float = 2.0  # LoRA's alpha as a multiple of the rank (the adapters' output is scaled by alpha / rank)
    lora_dropout: float = 0.0  # dropout on the adapters' input

    def __post_init__(self) -> None:
        if self.metric not in METRIC_NAMES:
            raise ConfigError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRIC_NAMES)}")
        if self.augmentation not in AUGMENTATION_NAMES:
            raise ConfigError(
                f"unknown augmentation {self.augmentation!r}; expected one of {', '.join(AUGMENTATION_NAMES)}"
            )
        strategy = get_strategy(self.strategy)
        if not strategy.augmentable and self.augmentation != NO_AUGMENTATION:
            object.__setattr__(self, "augmentation", NO_AUGMENTATION)  # cached features: nothing to augment
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer-wise learning-rate decay must be in (0, 1], got {self.layer_decay}")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(
                f"LoRA needs a rank >= 1, alpha > 0 and dropout in [0, 1), got {self.lora_rank}, "
                f"{self.lora_alpha} and {self.lora_dropout}"
            )
        if self.epochs < 1 or self.probe_passes < 1:
            raise ConfigError(f"epochs and probe passes must be at least 1, got {self.epochs} and {self.probe_passes}")
        if strategy.embedding_head is not None and self.head.kind != strategy.embedding_head:
            # frozen dataclass: the fitted head is fixed by the strategy, so say so in the config that is saved
            object.__setattr__(self, "head", HeadSpec(kind=strategy.embedding_head))

    def trained_depth(self, num_groups: int) -> int:
        """How many of the body's last ``num_groups`` layer groups this trial trains."""
        return int(get_strategy(self.strategy).trained_depth(self.trained_groups, num_groups))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """The inverse of :meth:`to_dict` (for configs read back from JSON: a saved model's, an earlier
        version's too, whose names :func:`~automl_tl.strategies.current_names` brings up to date)."""
        values = current_names(values)
        values["head"] = HeadSpec.from_dict(values.get("head"))
        values["input_options"] = InputOptions(**(values.get("input_options") or {}))
        return cls(**values)


@_taking_old_names
@dataclass(frozen=True)
class SearchConfig:
    """What to search over and for how long."""

    backbones: tuple[str, ...]  # registered names or wildcards
    #: finished trials (complete or pruned) to reach, counting earlier runs; None: as many as the timeout allows
    n_trials: int | None = 10
    timeout: float | None = None  # hard wall-clock budget in seconds for this run of the search
    seed: int = 0
    storage: str | None = None  # Optuna storage URL; default: a journal file in the run directory
    study_name: str = DEFAULT_STUDY_NAME
    min_epochs: int = 1  # epochs every trial runs before the pruner may stop it
    #: the per-trial budget: every trial is scheduled for this many epochs (the executor plans fewer when they
    #: would not end in time). 10, as AutoGluon MultiModal: at 3, a fine-tune of 489 Fashion-MNIST images stopped
    #: at 0.71 validation accuracy against the probes' 0.84, and the digits' LP-FT at 64 px reached 97.7 % in 8
    max_epochs: int = 10
    #: the most layer groups of a body (counted from the head) a trial may train; None: up to full fine-tuning
    max_trained_groups: int | None = None
    backbone_lr_range: tuple[float, float] | None = None  # None: DEFAULT_BACKBONE_LR_RANGES of the data's modality
    head_lr_range: tuple[float, float] = (1e-4, 1e-1)
    batch_size: int = 32
    pruner: str = "successive_halving"
    sampler: str = "tpe"  # "random": Optuna's random sampler (a baseline)
    input_options: InputOptions = field(default_factory=InputOptions)
    #: adaptation strategies the search may choose (see automl_tl.strategies)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    heads: tuple[str, ...] = HEAD_KINDS  # head structures the search may choose
    #: training-batch augmentations the search may choose for the strategies that train the body (see
    #: automl_tl.augmentation); None: every one the backbones' modality offers
    augmentation: tuple[str, ...] | None = None
    trial_timeout: float | None = None  # hard wall-clock budget in seconds for one trial
    prerank: bool = True  # score backbones by transferability first and try the best-ranked first
    top_k: int | None = None  # after pre-ranking, search only the k best-ranked backbones
    feature_cache: bool = True  # keep frozen-body features on disk for every trial and later run
    #: MLflow tracking URI (a folder, ``sqlite:///...``, ``http://...``): every trial and the best model are
    #: logged there by the ``automl_tl_mlflow`` plugin. None: not tracked.
    tracking_uri: str | None = None
    #: what trials are selected by (see automl_tl.metrics); None: balanced accuracy on imbalanced data, else accuracy
    metric: str | None = None
    #: after the search, train the best configuration again on training + validation data (within the budget)
    refit: bool = True
    #: after the search, a weighted average of the best trial and the probes, kept when it beats the best single
    #: model on validation rows it was not chosen on (see automl_tl.search.ensembling)
    ensemble: bool = True
    #: after the search, temperature scaling of the kept model's probabilities, fitted on validation predictions
    calibrate: bool = True
    #: after the search, one more fit of the best configuration with the unlabelled pool's confident predictions
    #: as extra training rows, kept when it scores better on validation (see automl_tl.search.self_training)
    self_training: bool = True

    def __post_init__(self) -> None:
        # types first: a string where a number belongs would otherwise fail a comparison with a TypeError
        check_types(asdict_shallow(self), _search_types())
        check_seed(self.seed)
        if not self.backbones:
            raise ConfigError("no backbones to search; give at least one name or wildcard")
        for name in ("backbones", "strategies", "heads"):
            names = getattr(self, name)
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"{name} must be names (strings), got {names!r}")
        if self.n_trials is None and self.timeout is None:
            raise ConfigError("give a number of trials, a timeout, or both: without either the search never ends")
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"number of trials must be at least 1, got {self.n_trials}")
        if self.metric is not None and self.metric not in METRIC_NAMES:
            raise ConfigError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRIC_NAMES)}")
        # 'not 0 < x < inf' also refuses NaN, which compares false with everything and would never run out
        if self.timeout is not None and not 0 < self.timeout < math.inf:
            raise ConfigError(f"timeout must be a positive, finite number of seconds, got {self.timeout}")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise ConfigError(f"epochs must satisfy 1 <= min ({self.min_epochs}) <= max ({self.max_epochs})")
        if self.max_trained_groups is not None and self.max_trained_groups < 0:
            raise ConfigError(f"max trained groups must be >= 0, got {self.max_trained_groups}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.trial_timeout is not None and not 0 < self.trial_timeout < math.inf:
            raise ConfigError(f"trial timeout must be a positive, finite number of seconds, got {self.trial_timeout}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top k must be at least 1 backbone, got {self.top_k}")
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown or not self.strategies:
            raise ConfigError(
                f"unknown strategy {', '.join(map(repr, unknown)) or '(none given)'}; expected some of "
                f"{', '.join(STRATEGY_NAMES)}"
            )
        if self.augmentation is not None:
            if isinstance(self.augmentation, str) or not all(isinstance(a, str) for a in self.augmentation):
                raise ConfigError(f"augmentation must be names (strings), got {self.augmentation!r}")
            unknown = [a for a in self.augmentation if a not in AUGMENTATION_NAMES]
            if unknown or not self.augmentation:
                raise ConfigError(
                    f"unknown augmentation {', '.join(map(repr, unknown)) or '(none given)'}; expected some of "
                    f"{', '.join(AUGMENTATION_NAMES)}"
                )
        unknown = [h for h in self.heads if h not in HEAD_KINDS]
        if unknown or not self.heads:
            raise ConfigError(
                f"unknown head {', '.join(map(repr, unknown)) or '(none given)'}; expected some of "
                f"{', '.join(HEAD_KINDS)}"
            )
        if self.top_k is not None and not self.prerank:
            raise ConfigError("top k needs the transferability pre-ranking; drop top k or turn pre-ranking on")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}; expected one of {', '.join(PRUNERS)}")
        for name, lr_range in (("backbone", self.backbone_lr_range), ("head", self.head_lr_range)):
            if lr_range is None:
                continue
            if not isinstance(lr_range, (tuple, list)) or len(lr_range) != 2 or not all(map(is_real_number, lr_range)):
                raise ConfigError(f"{name} learning-rate range must be two numbers (low, high), got {lr_range!r}")
            low, high = lr_range
            if not 0 < low <= high:
                raise ConfigError(f"{name} learning-rate range must satisfy 0 < low <= high, got ({low}, {high})")
        if self.storage is not None:
            check_storage_url(self.storage)
        check_input_options(self.input_options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (stored with the study, so that workers elsewhere search the same way)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SearchConfig":
        """The inverse of :meth:`to_dict` (JSON turned the tuples into lists); the settings an earlier version
        stored with its study are read under today's names (:func:`~automl_tl.strategies.current_names`)."""
        values = current_names(values)
        values["input_options"] = InputOptions(**(values.get("input_options") or {}))
        for name in ("backbones", "strategies", "heads", "augmentation", "backbone_lr_range", "head_lr_range"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


@functools.cache
def _search_types() -> dict[str, str]:
    """The kind of each field of :class:`SearchConfig` that is a search option (see :func:`check_types`), from
    :mod:`automl_tl.options`; the seed is left to :func:`check_seed`, which names its range too. Built when
    first asked for: the option table reads this module's constants."""
    return option_kinds({f.name for f in fields(SearchConfig)} - {"seed"})


def asdict_shallow(instance: Any) -> dict[str, Any]:
    """A dataclass's fields by name, values as they are (``dataclasses.asdict`` would copy them deeply)."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}
