"""The adaptation strategies: one record each, read everywhere a strategy is interpreted.

A strategy says how much of a pretrained body a trial adapts and how: which layer groups train, which of the
searched parameters its trials use (the leaderboard, the logs and ``best_params`` show only those), whether it
runs epochs or fits a head in one go on the cached embeddings, and the sentence the model card says about it.
The search space draws from :data:`STRATEGIES`, the executor trains by it, the report and card show by it.
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

#: how much of the body trains
BODY_FROZEN = "frozen"  # none: a head on the body's (cached) features
BODY_LAST_GROUPS = "last groups"  # the last ``freeze_depth`` layer groups
BODY_ALL = "all"  # every layer group, whatever the depth

#: the searched parameters a body that trains uses, and those of a head trained by gradient
BODY_PARAMETERS = ("backbone_lr", "layer_decay")
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
    def uses_depth(self) -> bool:
        """Whether the number of trained layer groups (``freeze_depth``) is this strategy's to choose."""
        return self.body == BODY_LAST_GROUPS

    def trained_depth(self, depth: float, num_groups: float) -> float:
        """How many of the body's last ``num_groups`` layer groups a trial with ``freeze_depth`` ``depth`` trains."""
        if self.body == BODY_FROZEN:
            return 0
        if self.body == BODY_ALL:
            return num_groups
        return min(depth, num_groups)


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
            ("freeze_depth", *BODY_PARAMETERS, *HEAD_PARAMETERS),
            "last-k fine-tuning: the last `freeze_depth` layer groups of the body and the head were trained",
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
            ("freeze_depth", *BODY_PARAMETERS, *HEAD_PARAMETERS),
            "LP-FT: a linear probe first, then the last `freeze_depth` layer groups fine-tuned with the probed head",
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
    )
}
#: every strategy's name, in the order they are listed and searched
STRATEGY_NAMES = tuple(STRATEGIES)
#: what the search chooses among unless told otherwise: every strategy (the embedding heads are cheap and, on
#: small data, often the strongest)
DEFAULT_STRATEGIES = STRATEGY_NAMES
#: heads fitted on the frozen body's cached embeddings in one go (see :mod:`automl_tl.train.embedding_heads`)
EMBEDDING_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.embedding_head is not None)
#: strategies whose body stays frozen: they train (or fit) a head on the cached features only
FROZEN_BODY_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.frozen_body)
#: strategies that train the body, in the order they are preferred as a first fine-tuning trial
FINE_TUNING_STRATEGIES = (LP_FT, FULL, LAST_K)
_SHORT_NAMES = {"freeze_depth": "depth", "layer_decay": "decay"}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; :class:`~automl_tl.errors.ConfigError` naming the known ones otherwise."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGY_NAMES)}") from None


def trained_depth(strategy: str, freeze_depth: float) -> float:
    """The layer groups a trial trained, as a chart places it: a frozen body none (0), full fine-tuning all
    (``inf``, drawn right of the deepest searched depth), the others their ``freeze_depth`` (``nan`` when not
    recorded: the leaderboard leaves it empty for the strategies that do not use it)."""
    try:
        depth = float(freeze_depth)
    except (TypeError, ValueError):  # None, or pandas' NA
        depth = math.nan
    known = STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    return depth if known is None else known.trained_depth(depth, math.inf)  # (one of a later version: its depth)


def used_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a trial (``trial.params``) that shaped its model, in the order they are drawn: what
    the leaderboard, the logs and ``best_params`` show (see :attr:`Strategy.parameters`). A strategy this
    version does not know keeps every parameter."""
    strategy = STRATEGIES.get(params.get("strategy"))  # type: ignore[arg-type]
    if strategy is None:
        return dict(params)
    names = {"backbone", "strategy", *strategy.parameters}
    if "head" in names and params.get("head") == "mlp":
        names.update(MLP_HEAD_PARAMETERS)
    return {name: value for name, value in params.items() if name in names}


def describe_parameters(params: Mapping[str, Any]) -> str:
    """The used parameters but the backbone and strategy, for a log line: ``depth=2 backbone_lr=3.2e-04 ...``."""
    shown = []
    for name, value in used_parameters(params).items():
        if name in ("backbone", "strategy"):
            continue
        text = (
            (f"{value:.2f}" if name in ("layer_decay", "head_dropout") else f"{value:.1e}")
            if isinstance(value, float)
            else str(value)
        )
        shown.append(f"{_SHORT_NAMES.get(name, name)}={text}")
    return " ".join(shown)
