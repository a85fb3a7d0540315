"""The head modules built from a :class:`~automl_tl.heads.HeadSpec`: linear, MLP, and the normalised linear head that
the embedding strategies fit. Kept apart from the spec so that reading a configuration does not import torch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from automl_tl.heads import HeadSpec


def build_head(spec: HeadSpec, in_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised head mapping ``in_features``-sized embeddings to ``num_classes`` logits."""
    if spec.kind == "linear":
        return nn.Linear(in_features, num_classes)
    if spec.kind == "normalised_linear":
        return NormalisedLinearHead(in_features, num_classes)
    return nn.Sequential(
        nn.Linear(in_features, spec.hidden),
        nn.GELU(),
        nn.Dropout(spec.dropout),
        nn.Linear(spec.hidden, num_classes),
    )


class NormalisedLinearHead(nn.Module):
    """A linear layer on centred, L2-normalised embeddings: ``linear(normalise(x - center))``.

    ``center`` (a buffer) is the mean training embedding. The nearest-centroid strategy sets the rows of
    the linear layer to the unit-length class means of the normalised training embeddings times a
    temperature, bias 0, so the argmax is the nearest centroid by cosine; logistic regression puts its
    ``coef_`` and ``intercept_`` there. Everything is a tensor in the state dict, so the head saves to
    safetensors like any other.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.register_buffer("center", torch.zeros(in_features))
        self.linear = nn.Linear(in_features, num_classes)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The embeddings as the fitted classifier sees them: centred, then scaled to unit length."""
        return functional.normalize(x - self.center, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalise(x))


class SummedBlockHeads(nn.Module):
    """One linear layer on several bodies' embeddings concatenated, kept as one head per body whose logits sum.

    ``x`` is the concatenation of the blocks (of ``widths`` columns each); block ``i`` goes to ``heads[i]``.
    With :class:`NormalisedLinearHead` blocks, each block centred and scaled to unit length, the sum is one
    linear layer on the normalised blocks side by side: the saved model is then one ordinary model per body
    (see :mod:`automl_tl.results.concatenated`), their logits added."""

    def __init__(self, heads: list[nn.Module], widths: list[int]):
        super().__init__()
        if len(heads) != len(widths):
            raise ValueError(f"{len(heads)} heads for {len(widths)} blocks")
        self.heads = nn.ModuleList(heads)
        self.widths = list(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = torch.split(x, self.widths, dim=-1)
        return torch.stack([head(block) for head, block in zip(self.heads, blocks)]).sum(0)
