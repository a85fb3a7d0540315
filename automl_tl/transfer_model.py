"""The model every backbone builds: its pretrained body, a new head, and the body's layer groups.

:class:`TransferModel` is the one ``nn.Module`` the engine trains, saves and exports. It lives apart from the
backbone contract (:mod:`automl_tl.backbone`, which imports no torch) so that describing and listing backbones
costs nothing; this module is imported where a model is built.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

import torch
from torch import nn

#: what a :class:`~automl_tl.backbone.Preprocessor` collates and a body takes: one tensor, or named tensors
Batch = torch.Tensor | dict[str, torch.Tensor]

#: the normalisation layers torch has; others (timm's, a transformer's own RMS norm...) are known by their class name
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_NORM_CLASS_NAME = re.compile(r"(Batch|Layer|Group|Instance|RMS)Norm")
#: a bias parameter's own name: ``bias``, an LSTM's ``bias_ih_l0``, an attention's ``in_proj_bias``...
_BIAS_NAME = re.compile(r"^bias(_.*)?$|_bias$")


def is_normalisation(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (batch, layer, group, instance or RMS norm, whatever library)."""
    return isinstance(module, _NORM_TYPES) or bool(_NORM_CLASS_NAME.search(type(module).__name__))


class TransferModel(nn.Module):
    """``body`` (pretrained, returns an embedding) followed by ``head`` (new, returns logits).

    ``layer_groups`` lists the body's parameter names group by group, from input to
    output. Every body parameter is in exactly one group.
    """

    def __init__(self, body: nn.Module, head: nn.Module, layer_groups: list[list[str]]):
        super().__init__()
        self.body = body
        self.head = head
        self.layer_groups = layer_groups
        grouped = [name for group in layer_groups for name in group]
        body_names = [name for name, _ in body.named_parameters()]
        if sorted(grouped) != sorted(body_names):
            missing = sorted(set(body_names) - set(grouped))[:3]
            extra = sorted(set(grouped) - set(body_names))[:3]
            raise ValueError(
                f"layer groups must cover every body parameter once (ungrouped: {missing}, unknown: {extra})"
            )

    @property
    def num_groups(self) -> int:
        return len(self.layer_groups)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.body(batch))

    def embed(self, batch: Batch) -> torch.Tensor:
        """The body's embedding of a batch (what the head sees)."""
        return self.body(batch)

    def set_trained_groups(self, groups: int) -> None:
        """Train the head and the body's last ``groups`` layer groups (counted from the head); freeze the rest.

        ``groups`` larger than the number of groups trains the whole body; 0 trains the head only.
        """
        if groups < 0:
            raise ValueError(f"trained groups must be >= 0, got {groups}")
        first_trained = max(self.num_groups - groups, 0)
        self.set_trained_parameters(name for group in self.layer_groups[first_trained:] for name in group)

    def set_trained_parameters(self, names: Iterable[str]) -> None:
        """Train the head and the body parameters called ``names`` (as ``body.named_parameters()`` calls them);
        freeze the rest of the body."""
        trained = set(names)
        unknown = trained - {name for name, _ in self.body.named_parameters()}
        if unknown:
            raise ValueError(f"no such body parameters: {sorted(unknown)[:3]}")
        for name, parameter in self.body.named_parameters():
            parameter.requires_grad_(name in trained)
        for parameter in self.head.parameters():
            parameter.requires_grad_(True)

    def bias_names(self) -> list[str]:
        """The body's bias parameters (BitFit trains these): every parameter called ``bias``, normalisation
        layers' included."""
        return [name for name, _ in self.body.named_parameters() if _BIAS_NAME.search(name.rsplit(".", 1)[-1])]

    def norm_parameter_names(self) -> list[str]:
        """The weights and biases of the body's normalisation layers (norm-only tuning trains these)."""
        known = {name for name, _ in self.body.named_parameters()}  # (a shared parameter: under its first name)
        names = (
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.body.named_modules()
            if is_normalisation(module)
            for name, _ in module.named_parameters(recurse=False)
        )
        return [name for name in names if name in known]

    def set_freeze_depth(self, depth: int) -> None:
        """The name :meth:`set_trained_groups` had in earlier versions (``depth`` counted the groups that train)."""
        warnings.warn(
            "TransferModel.set_freeze_depth was renamed to set_trained_groups", DeprecationWarning, stacklevel=2
        )
        self.set_trained_groups(depth)

    #: keep every BatchNorm's running statistics as they are, even in trained groups (LP-FT sets it, so
    #: the probed head keeps seeing features normalised the way it was trained on; BitFit too, so that only
    #: biases change)
    freeze_norm_statistics: bool = False

    def train(self, mode: bool = True) -> "TransferModel":
        """Like ``nn.Module.train``, but normalisation layers whose weights are frozen stay in eval mode,
        so that a frozen body keeps its pretrained running statistics."""
        super().train(mode)
        if mode:
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    params = list(module.parameters(recurse=False))
                    if self.freeze_norm_statistics or not any(p.requires_grad for p in params):
                        module.eval()
        return self
