"""The body of a transformers text backbone: the encoder followed by a pooling, and its layer groups.

Imported when a model is built (:meth:`automl_tl_text.TransformersTextBackbone.build`), not when the plugin
registers its backbones: it imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

from automl_tl.errors import ConfigError
from automl_tl_text import POOLINGS

#: parameter names outside the layer list that belong with the input side (shared by all layers)
_INPUT_SIDE_MARKERS = ("embed", "relative_attention", "position")


class TextEncoderBody(nn.Module):
    """A transformers encoder and a pooling: ``body({"input_ids", "attention_mask"}) -> (batch, hidden)``.

    In training mode, every submodule whose parameters are all frozen runs in eval mode (no dropout), so
    that frozen layers give the same features every epoch, as frozen BatchNorm keeps its statistics.
    """

    def __init__(self, transformer: nn.Module, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.transformer = transformer
        self.pooling = pooling

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(batch, dict):
            raise TypeError(f"a text body takes a dict with input_ids and attention_mask, got {type(batch).__name__}")
        mask = batch["attention_mask"]
        output = self.transformer(input_ids=batch["input_ids"], attention_mask=mask)
        if self.pooling == "pooler":
            return output.pooler_output
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def train(self, mode: bool = True) -> "TextEncoderBody":
        super().train(mode)
        if mode:
            for module in self.transformer.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


def find_layer_list(model: nn.Module) -> str:
    """Name of the encoder's list of layers: the largest ``nn.ModuleList`` of identical blocks."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = name, size
    if best is None:
        raise ConfigError(f"cannot find the encoder layers of {type(model).__name__}: no list of identical blocks")
    return best


def text_layer_groups(body: TextEncoderBody) -> list[list[str]]:
    """Parameter names of ``body`` by layer group: embeddings, each encoder layer, then the pooler if any.

    Parameters outside the layer list go with the embeddings when they are input-side (embeddings,
    a position bias shared by all layers) and with the last layer otherwise (a final norm).
    """
    layers_name = find_layer_list(body.transformer)
    prefix = f"transformer.{layers_name}."
    n_layers = len(body.transformer.get_submodule(layers_name))
    groups: list[list[str]] = [[] for _ in range(1 + n_layers)]
    pooler: list[str] = []
    for name, _ in body.named_parameters():
        if name.startswith(prefix):
            groups[1 + int(name[len(prefix) :].split(".")[0])].append(name)
        elif name.startswith("transformer.pooler."):
            pooler.append(name)
        elif any(marker in name.lower() for marker in _INPUT_SIDE_MARKERS) or not any(groups[1:]):
            groups[0].append(name)
        else:
            groups[-1].append(name)
    return [group for group in groups + [pooler] if group]
