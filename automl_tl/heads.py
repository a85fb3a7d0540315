"""The new classification head put on a pretrained body: a linear layer, or a small MLP.

The head's structure is part of the search space, so it is described by a small frozen
:class:`HeadSpec` that travels in the trial config and in a saved model's ``config.json``,
and :func:`build_head` turns it into a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

HEAD_KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadSpec:
    """``kind`` "linear", or "mlp" (one hidden layer of ``hidden`` units, GELU, then ``dropout``)."""

    kind: str = "linear"
    hidden: int = 256  # used by "mlp" only
    dropout: float = 0.0  # used by "mlp" only

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; expected one of {', '.join(HEAD_KINDS)}")
        if self.hidden < 1:
            raise ValueError(f"head hidden width must be at least 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "HeadSpec":
        return cls(**values) if values else cls()


def build_head(spec: HeadSpec, in_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised head mapping ``in_features``-sized embeddings to ``num_classes`` logits."""
    if spec.kind == "linear":
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(
        nn.Linear(in_features, spec.hidden),
        nn.GELU(),
        nn.Dropout(spec.dropout),
        nn.Linear(spec.hidden, num_classes),
    )
