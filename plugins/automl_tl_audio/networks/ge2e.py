"""The GE2E speaker encoder of resemblyzer (Wan et al. 2018, "Generalized end-to-end loss for speaker verification").

Network: 40-band mel power spectrogram (16 kHz, 25 ms Hann windows every 10 ms, librosa's Slaney
mel filters, *not* log-compressed: that is what the weights were trained on), three LSTM layers of
256 units, a 256 → 256 linear layer; embedding = L2-normalised ReLU(linear(last hidden state)).
The pretrained file holds one 3-layer ``nn.LSTM``; here each layer is its own single-layer LSTM
so that ``trained_groups`` can train the last layers only. The arithmetic is the same.

As in resemblyzer, quiet recordings are first raised to -30 dBFS (never lowered). Instead of its
voice-activity trimming (webrtcvad), the embedding is read at the last frame that holds sound,
so the zero padding of short clips does not wash out the final state; an LSTM is causal, so this
equals running it on the clip without the padding.

The backbone (:class:`automl_tl_audio.ge2e.GE2EBackbone`) imports this module when it builds a model.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from automl_tl.modalities.audio import MelSpectrogram
from automl_tl_audio.base import parameter_names
from automl_tl_audio.ge2e import HIDDEN, SAMPLE_RATE

N_MELS = 40
LAYERS = 3
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
TARGET_DBFS = -30.0
#: samples at or below this amplitude count as padding or silence when finding the last frame with sound
SOUND_THRESHOLD = 1e-4


class GE2EBody(nn.Module):
    """Waveforms ``(batch, samples)`` at 16 kHz → L2-normalised speaker embeddings ``(batch, 256)``."""

    def __init__(self):
        super().__init__()
        # librosa.feature.melspectrogram's defaults, which resemblyzer used: periodic Hann, reflect padding
        self.features = MelSpectrogram(
            SAMPLE_RATE,
            n_fft=WINDOW,
            hop_length=HOP,
            n_mels=N_MELS,
            scale="slaney",
            norm="slaney",
            triangles="hz",
            power=2.0,
            center=True,
            pad_mode="reflect",
        )
        self.lstm = nn.ModuleList(
            [nn.LSTM(N_MELS if i == 0 else HIDDEN, HIDDEN, batch_first=True) for i in range(LAYERS)]
        )
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def layer_groups(self) -> list[list[str]]:
        """LSTM layer 0, LSTM layer 1, LSTM layer 2 with the linear layer."""
        groups = [parameter_names(self.lstm[i], f"lstm.{i}") for i in range(LAYERS)]
        groups[-1] += parameter_names(self.linear, "linear")
        return groups

    def mel_frames(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel frames ``(batch, frames, 40)`` of the volume-normalised waveforms, and each example's last
        frame with sound."""
        waveforms = waveforms.float()
        sounding = waveforms.abs() > SOUND_THRESHOLD
        positions = torch.arange(waveforms.shape[1], device=waveforms.device)
        last_sample = torch.where(sounding, positions, torch.zeros_like(positions)).amax(dim=1)
        count = sounding.sum(dim=1).clamp_min(1)
        # root mean square over the samples with sound: padding must not make a clip look quieter
        rms = (waveforms.pow(2).sum(dim=1) / count).sqrt().clamp_min(1e-8)
        gain = (10.0 ** (TARGET_DBFS / 20.0) / rms).clamp_min(1.0)  # increase only, as resemblyzer does
        mels = self.features(waveforms * gain[:, None]).transpose(1, 2)
        last_frame = torch.div(last_sample + HOP // 2, HOP, rounding_mode="floor").clamp(max=mels.shape[1] - 1)
        return mels, last_frame

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # float32 throughout: the inputs are mel *power* values, which float16 would overflow
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            hidden, last_frame = self.mel_frames(waveforms)
            for lstm in self.lstm:
                hidden, _ = lstm(hidden)
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_frame]
            embedding = torch.relu(self.linear(last))
            return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-8)


_LSTM_KEY = re.compile(r"^lstm\.(weight|bias)_(ih|hh)_l(\d)$")


def convert_resemblyzer_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """resemblyzer's keys onto :class:`GE2EBody`'s: ``lstm.weight_ih_l1`` → ``lstm.1.weight_ih_l0``.

    The similarity scale and bias of the GE2E loss are dropped (training-only); every other key is kept
    as it is, so that anything unexpected fails the strict load.
    """
    converted = {}
    for key, tensor in model_state.items():
        if key in ("similarity_weight", "similarity_bias"):
            continue
        match = _LSTM_KEY.match(key)
        converted[f"lstm.{match[3]}.{match[1]}_{match[2]}_l0" if match else key] = tensor
    return converted
