"""The new classification head put on a pretrained body: a linear layer, a small MLP, or a normalised linear head.

The head's structure is part of the search space, so it is described by a small frozen
:class:`HeadSpec` that travels in the trial config and in a saved model's ``config.json``,
and :func:`automl_tl.train.head_modules.build_head` turns it into a module. The normalised linear head is never searched as a head
structure: it is what the embedding strategies fit (see :mod:`automl_tl.train.embedding_heads`).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

#: the head structures the search chooses among
HEAD_KINDS = ("linear", "mlp")
#: the widest MLP head a saved model may ask for: far above what the search tries (space.HEAD_HIDDEN_RANGE), far
#: below what would exhaust memory (a tampered config.json once asked for 10**12 units)
MAX_HIDDEN = 16384
#: every head a saved model may have: the searched ones and the one the embedding strategies fit
ALL_HEAD_KINDS = HEAD_KINDS + ("normalised_linear",)


@dataclass(frozen=True)
class HeadSpec:
    """``kind`` "linear", "mlp" (one hidden layer of ``hidden`` units, GELU, then ``dropout``), or
    "normalised_linear" (:class:`NormalisedLinearHead`)."""

    kind: str = "linear"
    hidden: int = 256  # used by "mlp" only
    dropout: float = 0.0  # used by "mlp" only

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in ALL_HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; expected one of {', '.join(ALL_HEAD_KINDS)}")
        # bool is an int to Python, but a width of True is a mistake; 2.5 units cannot be built
        if not isinstance(self.hidden, numbers.Integral) or isinstance(self.hidden, bool):
            raise ValueError(f"head hidden width must be a whole number, got {self.hidden!r}")
        if not 1 <= self.hidden <= MAX_HIDDEN:
            raise ValueError(f"head hidden width must be from 1 to {MAX_HIDDEN}, got {self.hidden}")
        if not isinstance(self.dropout, numbers.Real) or isinstance(self.dropout, bool):
            raise ValueError(f"head dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "HeadSpec":
        return cls(**values) if values else cls()


def head_shapes(spec: HeadSpec, in_features: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the state dict of ``build_head(spec, in_features, num_classes)``, by name,
    without building it: what a saved model's weights are checked against before anything is allocated."""
    if spec.kind == "linear":
        return {"weight": (num_classes, in_features), "bias": (num_classes,)}
    if spec.kind == "normalised_linear":
        return {"center": (in_features,), "linear.weight": (num_classes, in_features), "linear.bias": (num_classes,)}
    return {
        "0.weight": (spec.hidden, in_features),
        "0.bias": (spec.hidden,),
        "3.weight": (num_classes, spec.hidden),
        "3.bias": (num_classes,),
    }
