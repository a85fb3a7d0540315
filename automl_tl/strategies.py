"""The adaptation strategies: one record each, read everywhere a strategy is interpreted.

A strategy says how much of a pretrained body a trial adapts and how: which layer groups train (for last-k and
LP-FT, ``trained_groups`` of them: how many of the body's layer groups, counted from the head, train), which of the
searched parameters its trials use (the leaderboard, the logs and ``best_params`` show only those), whether it
runs epochs or fits a head in one go on the cached embeddings, and the sentence the model card says about it.
The search space draws from :data:`STRATEGIES`, the executor trains by it, the report and card show by it.

Parameters that earlier versions called otherwise are read under today's names by :func:`current_names`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automl_tl.errors import ConfigError

LINEAR_PROBE = "linear_probe"
LAST_K = "last_k"
FULL = "full"
LP_FT = "lp_ft"
NEAREST_CENTROID = "nearest_centroid"
LOGISTIC_REGRESSION = "logistic_regression"
BITFIT = "bitfit"
NORM_ONLY = "norm_only"
LORA = "lora"

#: how much of the body trains
BODY_FROZEN = "frozen"  # none: a head on the body's (cached) features
BODY_LAST_GROUPS = "last groups"  # the last ``trained_groups`` layer groups (the ones nearest the head)
BODY_ALL = "all"  # every layer group, whatever the depth
BODY_BIASES = "biases"  # the body's bias parameters only, in every layer group (BitFit)
BODY_NORMS = "norms"  # the weights and biases of the body's normalisation layers only, in every layer group
BODY_ADAPTERS = "adapters"  # low-rank adapters beside the backbone's LoRA targets, merged into them after training
#: the body kinds that train some parameters of every layer group (so a cap on the trained groups rules them out)
_EVERY_GROUP = (BODY_ALL, BODY_BIASES, BODY_NORMS, BODY_ADAPTERS)

#: the searched parameters a body that trains uses (augmentation too: only a body that sees the batches is helped by
#: it), and those of a head trained by gradient
BODY_PARAMETERS = ("backbone_lr", "layer_decay", "augmentation")
#: those of a body of which only a few parameters train (biases, norms): no layer-wise decay. It protects the
#: general features of the lower layers from being overwritten when their weight matrices train; a shift or a
#: scale per channel cannot overwrite them, and one parameter fewer leaves the search more trials for the rate
FEW_BODY_PARAMETERS = ("backbone_lr", "augmentation")
#: LoRA's own: the adapters' rank, their scale alpha as a multiple of the rank, and the dropout on their input
LORA_PARAMETERS = ("lora_rank", "lora_alpha", "lora_dropout")
HEAD_PARAMETERS = ("head_lr", "head")
#: used by an MLP head only
MLP_HEAD_PARAMETERS = ("head_hidden", "head_dropout")


@dataclass(frozen=True)
class Strategy:
    """One adaptation strategy.

    ``parameters`` are the searched parameters its trials use (the others are drawn too and ignored);
    ``embedding_head`` is the head kind it fits in one go on the frozen body's embeddings (no epochs, no head
    learning rate), None for the strategies trained by gradient; ``probe_first``: a linear probe is trained
    before the body (LP-FT); ``description`` is the model card's sentence.
    """

    name: str
    body: str
    parameters: tuple[str, ...]
    description: str
    embedding_head: str | None = None
    probe_first: bool = False

    @property
    def frozen_body(self) -> bool:
        """Whether the body stays as pretrained (its features can be cached)."""
        return self.body == BODY_FROZEN

    @property
    def runs_epochs(self) -> bool:
        """Whether trials train by epochs (every strategy but the embedding heads)."""
        return self.embedding_head is None

    @property
    def augmentable(self) -> bool:
        """Whether training-batch augmentation can help: the body sees the batches (a frozen body's features are
        computed once, un-augmented, and cached)."""
        return not self.frozen_body

    @property
    def uses_depth(self) -> bool:
        """Whether the number of trained layer groups (``trained_groups``) is this strategy's to choose."""
        return self.body == BODY_LAST_GROUPS

    @property
    def trains_every_group(self) -> bool:
        """Whether parameters of every layer group train (full fine-tuning, BitFit, norm-only): what a cap on the
        trained layer groups (``max_trained_groups``) rules out."""
        return self.body in _EVERY_GROUP

    @property
    def trains_few_parameters(self) -> bool:
        """Whether only a kind of the body's parameters trains (biases, norms, adapters), not whole layer groups."""
        return self.body in (BODY_BIASES, BODY_NORMS, BODY_ADAPTERS)

    def trained_depth(self, trained_groups: float, num_groups: float) -> float:
        """How many of a body's ``num_groups`` layer groups a trial drawn with ``trained_groups`` trains (counted
        from the head): none for a frozen body, all for full fine-tuning (and for BitFit and norm-only, which
        train some parameters of each), else ``trained_groups`` (at most all)."""
        if self.body == BODY_FROZEN:
            return 0
        if self.trains_every_group:
            return num_groups
        return min(trained_groups, num_groups)


STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy
    for strategy in (
        Strategy(
            LINEAR_PROBE,
            BODY_FROZEN,
            HEAD_PARAMETERS,
            "linear probe: the pretrained body stayed frozen; only the new head was trained, on the body's features",
        ),
        Strategy(
            LAST_K,
            BODY_LAST_GROUPS,
            ("trained_groups", *BODY_PARAMETERS, *HEAD_PARAMETERS),
            "last-k fine-tuning: the last `trained_groups` layer groups of the body and the head were trained",
        ),
        Strategy(
            FULL,
            BODY_ALL,
            (*BODY_PARAMETERS, *HEAD_PARAMETERS),
            "full fine-tuning: the whole body and the head were trained",
        ),
        Strategy(
            LP_FT,
            BODY_LAST_GROUPS,
            ("trained_groups", *BODY_PARAMETERS, *HEAD_PARAMETERS),
            "LP-FT: a linear probe first, then the last `trained_groups` layer groups fine-tuned with the probed head",
            probe_first=True,
        ),
        Strategy(
            NEAREST_CENTROID,
            BODY_FROZEN,
            (),
            "nearest centroid: each class is the mean of its normalised embeddings from the frozen body",
            embedding_head="normalised_linear",
        ),
        Strategy(
            LOGISTIC_REGRESSION,
            BODY_FROZEN,
            (),
            "logistic regression on the frozen body's normalised embeddings, its regularisation chosen by "
            "cross-validation",
            embedding_head="normalised_linear",
        ),
        Strategy(
            BITFIT,
            BODY_BIASES,
            (*FEW_BODY_PARAMETERS, *HEAD_PARAMETERS),
            "BitFit: only the body's bias parameters and the head were trained; every other weight, and the "
            "normalisation layers' running statistics, stayed as pretrained",
        ),
        Strategy(
            NORM_ONLY,
            BODY_NORMS,
            (*FEW_BODY_PARAMETERS, *HEAD_PARAMETERS),
            "norm-only tuning: only the weights and biases of the body's normalisation layers (and the "
            "running statistics of its batch norms) and the head were trained",
        ),
        Strategy(
            LORA,
            BODY_ADAPTERS,
            (*FEW_BODY_PARAMETERS, *LORA_PARAMETERS, *HEAD_PARAMETERS),
            "LoRA: low-rank adapters of rank `lora_rank` beside the body's attention projections and the head were "
            "trained; the adapters were then merged into the body's weights",
        ),
    )
}
#: every strategy's name, in the order they are listed and searched
STRATEGY_NAMES = tuple(STRATEGIES)
#: what the search chooses among unless told otherwise: every strategy but BitFit, norm-only and LoRA (the
#: embedding heads are cheap and, on small data, often the strongest). Those three are asked for by name: they
#: hold little optimizer state, but each of their steps runs the whole body forward and back like full
#: fine-tuning, so in the default search they would take budget from the strategies that usually win (and LoRA
#: has nothing to adapt in a convolutional backbone)
DEFAULT_STRATEGIES = tuple(name for name in STRATEGY_NAMES if name not in (BITFIT, NORM_ONLY, LORA))
#: heads fitted on the frozen body's cached embeddings in one go (see :mod:`automl_tl.train.embedding_heads`)
EMBEDDING_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.embedding_head is not None)
#: strategies whose body stays frozen: they train (or fit) a head on the cached features only
FROZEN_BODY_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.frozen_body)
#: strategies that train the body, in the order they are preferred as a first fine-tuning trial
FINE_TUNING_STRATEGIES = (LP_FT, FULL, LAST_K, BITFIT, NORM_ONLY, LORA)
_SHORT_NAMES = {
    "trained_groups": "groups",
    "layer_decay": "decay",
    "augmentation": "aug",
    "lora_rank": "rank",
    "lora_alpha": "alpha",
}

#: Names that earlier versions gave what is now called otherwise, old -> new. The searched parameter was
#: ``freeze_depth``, though it counts the layer groups that *train* (from the head), not those frozen; so were
#: the search space's bounds and the option that caps it (``--max-freeze-depth``). What those versions wrote
#: still holds the old names: the params of a stored study's trials (and of its waiting retries and warm starts),
#: the search space and settings stored with the study, a saved model's ``config.json``, config files and
#: ``TransferClassifier`` arguments. All of it is read through :func:`current_names`.
RENAMED = {
    "freeze_depth": "trained_groups",
    "min_freeze_depth": "min_trained_groups",
    "max_freeze_depth": "max_trained_groups",
}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; :class:`~automl_tl.errors.ConfigError` naming the known ones otherwise."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGY_NAMES)}") from None


def current_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a trial's params or distributions, or a record written by an earlier version: a stored search
    space or search config, a saved trial config) with every name of :data:`RENAMED` given its new name, in
    the same place. A study made before a rename holds both kinds of trial (old ones under the old name, new ones
    under the new), and everything that reads trials or records back reads them through here, so that they
    mean the same. Where both names are given, the new one's value is kept."""
    if not any(old in values for old in RENAMED):
        return dict(values)
    return {
        RENAMED.get(name, name): value
        for name, value in values.items()
        if not (name in RENAMED and RENAMED[name] in values)
    }


def trained_depth(strategy: str, trained_groups: float) -> float:
    """The layer groups a trial trained, as a chart places it: a frozen body none (0), full fine-tuning all
    (``inf``, drawn right of the deepest searched depth), the others their ``trained_groups`` (``nan`` when not
    recorded: the leaderboard leaves it empty for the strategies that do not use it)."""
    try:
        depth = float(trained_groups)
    except (TypeError, ValueError):  # None, or pandas' NA
        depth = math.nan
    known = STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    return depth if known is None else known.trained_depth(depth, math.inf)  # (one of a later version: its depth)


def used_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a trial (``trial.params``) that shaped its model, in the order they are drawn: what
    the leaderboard, the logs and ``best_params`` show (see :attr:`Strategy.parameters`), under today's names
    (:func:`current_names`: a trial of an earlier version's study may hold the old ones). A strategy this
    version does not know keeps every parameter."""
    params = current_names(params)
    strategy = STRATEGIES.get(params.get("strategy"))  # type: ignore[arg-type]
    if strategy is None:
        return dict(params)
    names = {"backbone", "strategy", *strategy.parameters}
    if "head" in names and params.get("head") == "mlp":
        names.update(MLP_HEAD_PARAMETERS)
    return {name: value for name, value in params.items() if name in names}


def describe_parameters(params: Mapping[str, Any]) -> str:
    """The used parameters but the backbone and strategy, for a log line: ``groups=2 backbone_lr=3.2e-04 ...``."""
    shown = []
    for name, value in used_parameters(params).items():
        if name in ("backbone", "strategy"):
            continue
        text = (
            (
                f"{value:.2f}"
                if name in ("layer_decay", "head_dropout", "lora_alpha", "lora_dropout")
                else f"{value:.1e}"
            )
            if isinstance(value, float)
            else str(value)
        )
        shown.append(f"{_SHORT_NAMES.get(name, name)}={text}")
    return " ".join(shown)
