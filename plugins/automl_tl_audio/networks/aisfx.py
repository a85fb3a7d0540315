"""The aiSFX sound-effects CNN (Bonet et al., ISMIR 2022 cross-dataset training), weights from the aisfx package.

Features as the network was trained on them (Essentia's pipeline in aisfx): 44.1 kHz audio,
2048-sample symmetric Hann frames every 1024 samples (first frame centred on sample 0, zero
padding), power spectrum, 96 HTK mel bands from 0 to 22,050 Hz with triangles linear in mel
and each band's weights summing to 1, ``log10(10000 x + 1)``, divided by 9.4578 (the maximum
of the training spectrograms; aisfx's "original" min-max normalisation with minimum 0).

Network: four blocks of (3x3 conv without bias → batch norm → ReLU) twice, 2x2 max-pool after
blocks 1-3; input ``(batch, 1, time, mel)``; embedding = mean over the mel axis, then max over
time → 512 values.

The backbone (:class:`automl_tl_audio.aisfx.AisfxBackbone`) imports this module when it builds a model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from automl_tl.modalities.audio import MelSpectrogram
from automl_tl_audio.aisfx import CHANNELS, HOP, SAMPLE_RATE
from automl_tl_audio.base import parameter_names

N_FFT = 2048
N_MELS = 96
#: the spectrogram value mapped to 1 (aisfx's normalisation "original", measured over its training data)
SPECTROGRAM_MAX = 9.457798957824707


class ConvBlock(nn.Module):
    """(3x3 conv, no bias → batch norm → ReLU) twice; attribute names as in the checkpoint."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class AisfxBody(nn.Module):
    """Waveforms ``(batch, samples)`` at 44.1 kHz → 512-d sound-effect embeddings."""

    def __init__(self):
        super().__init__()
        self.features = MelSpectrogram(
            SAMPLE_RATE,
            n_fft=N_FFT,
            hop_length=HOP,
            n_mels=N_MELS,
            f_min=0.0,
            f_max=SAMPLE_RATE / 2,
            scale="htk",
            norm="unit_sum",
            triangles="mel",
            power=2.0,
            center=True,
            pad_mode="constant",
            periodic_window=False,
        )
        for i, (c_in, c_out) in enumerate(zip((1,) + CHANNELS[:-1], CHANNELS), start=1):
            self.add_module(f"conv_block{i}", ConvBlock(c_in, c_out))

    def layer_groups(self) -> list[list[str]]:
        return [parameter_names(getattr(self, f"conv_block{i}"), f"conv_block{i}") for i in range(1, 5)]

    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel input ``(batch, 1, frames, 96)``."""
        mel = self.features(waveforms)  # float32 (batch, 96, frames)
        return (torch.log10(mel * 1e4 + 1.0) / SPECTROGRAM_MAX).transpose(1, 2)[:, None]

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.spectrogram(waveforms)
        for i in range(1, 5):
            x = getattr(self, f"conv_block{i}")(x)
            if i < 4:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=3).amax(dim=2)
