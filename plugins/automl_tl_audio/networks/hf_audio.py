"""The body of a transformers audio backbone (:class:`automl_tl_audio.hf_audio.TransformersAudioBackbone`, whose
docstring says what it computes) and its layer groups; imported when a model is built."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TransformersAudioBody(nn.Module):
    """Waveforms ``(batch, samples)`` → mean of the encoder's last hidden states ``(batch, hidden)``."""

    def __init__(self, model: nn.Module, feature_extractor: Any):
        super().__init__()
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()  # e.g. Whisper: only the audio encoder is a backbone
        self.model = model
        # kept as a plain attribute, not a module: it holds no weights
        self.feature_extractor = feature_extractor
        from transformers import Wav2Vec2FeatureExtractor

        self.raw_waveform = isinstance(feature_extractor, Wav2Vec2FeatureExtractor)
        self.normalize = bool(getattr(feature_extractor, "do_normalize", False))

    def inputs(self, waveforms: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for a batch of waveforms."""
        if self.raw_waveform:
            values = waveforms.float()
            if self.normalize:  # zero mean, unit variance per example, as Wav2Vec2FeatureExtractor does
                values = (values - values.mean(dim=1, keepdim=True)) / (
                    values.var(dim=1, keepdim=True, unbiased=False) + 1e-7
                ).sqrt()
            return {"input_values": values}
        extractor = self.feature_extractor
        features = extractor(
            [w.detach().float().cpu().numpy() for w in waveforms],
            sampling_rate=extractor.sampling_rate,
            return_tensors="pt",
        )
        return {
            key: value.to(waveforms.device)
            for key, value in features.items()
            if key in extractor.model_input_names and key != "attention_mask"
        }

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        hidden = self.model(**self.inputs(waveforms)).last_hidden_state
        return hidden.float().mean(dim=1)


def encoder_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of encoder layers: the longest one whose name ends in ``layers`` or ``layer``."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and name.split(".")[-1] in ("layers", "layer")
        and any(True for _ in module.parameters())
    ]
    if not candidates:
        raise ValueError(f"cannot find the encoder layers of {type(model).__name__}")
    return max(candidates, key=lambda item: len(item[1]))


def transformer_layer_groups(body: TransformersAudioBody) -> list[list[str]]:
    """Everything before the encoder layers, then one group per layer (later parameters join the last)."""
    layers_name, layers = encoder_layer_list(body.model)
    prefix = f"model.{layers_name}."
    groups: list[list[str]] = [[] for _ in range(len(layers) + 1)]
    seen_layers = False
    for name, _ in body.named_parameters():
        if name.startswith(prefix):
            index = int(name[len(prefix) :].split(".", 1)[0])
            groups[index + 1].append(name)
            seen_layers = True
        else:
            groups[-1 if seen_layers else 0].append(name)
    return [group for group in groups if group]
