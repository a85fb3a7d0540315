"""Audio shared by audio backbones: reading files, mel spectrograms in torch, and the preprocessor.

* :func:`read_audio` reads every format libsndfile does (wav, flac, ogg/opus, aiff, mp3, caf, ...:
  :data:`~automl_tl.data.readers.AUDIO_EXTENSIONS`) with soundfile, mixes to mono, resamples with
  ``scipy.signal.resample_poly`` and refuses, in one line naming the file, anything a model
  should not be trained on (missing, unsupported, corrupt, empty or silent).
* :class:`MelFilterbank` and :class:`MelSpectrogram` compute spectrograms with ``torch.stft``
  (no torchaudio). Both mel conventions that pretrained audio models were trained with are
  available, because a network only works on the features it was trained on:

  - ``scale="slaney"``, ``norm="slaney"``, ``triangles="hz"``: librosa's default
    (``librosa.filters.mel(htk=False, norm="slaney")``), linear below 1 kHz and logarithmic
    above, triangles linear in Hz, each of unit area. The GE2E speaker encoder uses it.
  - ``scale="htk"``, ``norm="unit_sum"``, ``triangles="mel"``: Essentia's ``MelBands`` with
    ``warpingFormula="htkMel"``, ``weighting="warping"``, ``normalize="unit_sum"``: mel =
    2595 log10(1 + f / 700), triangles linear in mel, each band's weights summing to 1.
    The aiSFX sound-effects CNN uses it.

* :class:`AudioPreprocessor` reads and resamples every file once (``encode``) and crops or
  pads to the clip length per batch (``collate``). Features (mel, frames) are computed inside
  each backbone's body, so they run on the GPU when there is one and the preprocessor stays
  the same for every audio backbone at a given sample rate. Training batches may get SpecAugment
  (:func:`spec_augment`): made on the waveform, so that every body's own features see it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_tl.augmentation import NO_AUGMENTATION, SPEC_AUGMENT
from automl_tl.backbone import Preprocessor
from automl_tl.data.readers import read_audio

logger = logging.getLogger(__name__)


MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "unit_sum", None)
MEL_TRIANGLES = ("hz", "mel")


# ---------------------------------------------------------------- mel spectrograms


def hz_to_mel(freq: np.ndarray | float, scale: str = "slaney") -> np.ndarray:
    """Frequencies in Hz to mels on the Slaney (Auditory Toolbox) or HTK scale."""
    freq = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    if scale != "slaney":
        raise ValueError(f"unknown mel scale {scale!r}; expected one of {', '.join(MEL_SCALES)}")
    # Slaney: linear (3 mels per 200 Hz) below 1 kHz, logarithmic (27 mels per factor 6.4) above
    linear = freq / (200.0 / 3.0)
    log_part = 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(freq >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray | float, scale: str = "slaney") -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"unknown mel scale {scale!r}; expected one of {', '.join(MEL_SCALES)}")
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0)), mel * (200.0 / 3.0))


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: str = "slaney",
    norm: str | None = "slaney",
    triangles: str = "hz",
) -> torch.Tensor:
    """Triangular mel filters, shape ``(n_mels, n_fft // 2 + 1)``, to multiply a power spectrum with.

    Band edges are ``n_mels + 2`` points equally spaced in mel between ``f_min`` and ``f_max``.
    ``triangles`` says in which domain each triangle is linear ("hz": librosa; "mel": Essentia's
    "warping"); ``norm`` scales each band: "slaney" to unit area (2 / bandwidth in Hz),
    "unit_sum" so that its weights sum to 1, ``None`` peak 1.
    """
    if norm not in MEL_NORMS:
        raise ValueError(f"unknown mel norm {norm!r}; expected one of {MEL_NORMS}")
    if triangles not in MEL_TRIANGLES:
        raise ValueError(f"unknown triangle domain {triangles!r}; expected one of {', '.join(MEL_TRIANGLES)}")
    f_max = sample_rate / 2.0 if f_max is None else f_max
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2), scale)
    bins_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    if triangles == "mel":
        edges, bins = hz_to_mel(edges_hz, scale), hz_to_mel(bins_hz, scale)
    else:
        edges, bins = edges_hz, bins_hz
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    elif norm == "unit_sum":
        sums = weights.sum(axis=1, keepdims=True)
        # a band narrower than one FFT bin holds no bin: leave it empty rather than divide by 0
        weights = np.divide(weights, sums, out=np.zeros_like(weights), where=sums > 0)
    return torch.from_numpy(weights.astype(np.float32))


class MelFilterbank(nn.Module):
    """Applies :func:`mel_filterbank`: power spectrum ``(..., n_fft // 2 + 1, frames)`` → ``(..., n_mels, frames)``.

    The filters are a non-persistent buffer: they follow the module to the GPU but are not
    part of its state dict (they are computed, not learnt, so saved models stay small and strict).
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        n_mels: int,
        f_min: float = 0.0,
        f_max: float | None = None,
        scale: str = "slaney",
        norm: str | None = "slaney",
        triangles: str = "hz",
    ):
        super().__init__()
        self.register_buffer(
            "filters",
            mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, scale, norm, triangles),
            persistent=False,
        )

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.filters, power)


class MelSpectrogram(nn.Module):
    """Waveforms ``(batch, samples)`` → mel power spectrogram ``(batch, n_mels, frames)``, in float32.

    ``torch.stft`` with a Hann window (periodic as in librosa, or symmetric as in Essentia),
    frames centred on ``t * hop_length`` (the signal is padded by ``n_fft // 2`` on both sides
    with ``pad_mode``), power ``|X|^power``, then the mel filters. Computed with autocast off:
    power spectra overflow float16.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        win_length: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        scale: str = "slaney",
        norm: str | None = "slaney",
        triangles: str = "hz",
        power: float = 2.0,
        center: bool = True,
        pad_mode: str = "reflect",
        periodic_window: bool = True,
    ):
        super().__init__()
        self.n_fft, self.hop_length, self.power = n_fft, hop_length, power
        self.win_length = win_length or n_fft
        self.center, self.pad_mode = center, pad_mode
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=periodic_window), persistent=False)
        self.mel = MelFilterbank(sample_rate, n_fft, n_mels, f_min, f_max, scale, norm, triangles)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            waveforms = waveforms.float()
            if self.center and self.pad_mode == "reflect" and waveforms.shape[-1] <= self.n_fft // 2:
                # reflection needs more samples than the padding; such short input only occurs in tests
                pad_mode = "constant"
            else:
                pad_mode = self.pad_mode
            spectrum = torch.stft(
                waveforms,
                self.n_fft,
                self.hop_length,
                self.win_length,
                self.window,
                center=self.center,
                pad_mode=pad_mode,
                return_complex=True,
            )
            power = spectrum.abs().pow(self.power)
            return self.mel(power)


def log_mel_spectrogram(
    waveforms: torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 64,
    floor: float = 1e-6,
    **options: Any,
) -> torch.Tensor:
    """Natural log of a mel power spectrogram, ``(batch, n_mels, frames)``; ``floor`` is added before the log.

    Defaults: 25 ms windows every 10 ms at 16 kHz, 64 Slaney mel bands. ``options`` go to
    :class:`MelSpectrogram` (``scale``, ``norm``, ``triangles``, ``f_min``, ``f_max``, ...).
    For repeated calls build a :class:`MelSpectrogram` once instead (this builds the filters each time).
    """
    squeeze = waveforms.ndim == 1
    batch = waveforms[None] if squeeze else waveforms
    mel = MelSpectrogram(sample_rate, n_fft, hop_length, n_mels, **options).to(batch.device)
    result = torch.log(mel(batch) + floor)
    return result[0] if squeeze else result


# ---------------------------------------------------------------- SpecAugment on the waveform

#: SpecAugment's settings, as shares of the clip and of the mel range: at most 10% of the clip shifted (circularly),
#: a gain of -6 to +6 dB, two frequency bands of up to an eighth of the mel range each, two time spans of up to a
#: tenth of the clip each (Park et al.'s LibriSpeech policy masks about as much of a 100-frame, 80-band input)
MAX_SHIFT_SHARE = 0.1
GAIN_DB_RANGE = (-6.0, 6.0)
FREQUENCY_MASKS, MAX_BAND_SHARE = 2, 0.125
TIME_MASKS, MAX_SPAN_SHARE = 2, 0.1


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def mask_frequency_band(waveform: torch.Tensor, sample_rate: int, low_hz: float, high_hz: float) -> torch.Tensor:
    """``waveform`` with every frequency from ``low_hz`` to ``high_hz`` removed (its spectrum's bins set to 0)."""
    spectrum = torch.fft.rfft(waveform)
    bin_hz = sample_rate / waveform.shape[-1]
    spectrum[..., int(math.floor(low_hz / bin_hz)) : int(math.ceil(high_hz / bin_hz)) + 1] = 0
    return torch.fft.irfft(spectrum, n=waveform.shape[-1])


def spec_augment(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """One clip, augmented: shifted in time (circularly) and scaled by a random gain, then SpecAugment's masks:
    :data:`FREQUENCY_MASKS` bands (drawn uniformly on the mel scale, as a mel spectrogram's rows are) removed from
    its spectrum, and :data:`TIME_MASKS` spans set to silence. Uses torch's global random numbers."""
    samples = waveform.shape[-1]
    shift = int(round(_uniform(-MAX_SHIFT_SHARE, MAX_SHIFT_SHARE) * samples))
    augmented = torch.roll(waveform, shift, dims=-1) * 10.0 ** (_uniform(*GAIN_DB_RANGE) / 20.0)
    top_mel = float(hz_to_mel(sample_rate / 2.0))
    for _ in range(FREQUENCY_MASKS):
        width = _uniform(0.0, MAX_BAND_SHARE) * top_mel
        low = _uniform(0.0, top_mel - width)
        augmented = mask_frequency_band(augmented, sample_rate, float(mel_to_hz(low)), float(mel_to_hz(low + width)))
    for _ in range(TIME_MASKS):
        span = int(_uniform(0.0, MAX_SPAN_SHARE) * samples)
        start = int(_uniform(0.0, samples - span))
        augmented[..., start : start + span] = 0.0
    return augmented


# ---------------------------------------------------------------- the preprocessor


class AudioPreprocessor(Preprocessor):
    """Read and resample once to ``sample_rate``; per batch, crop or zero-pad to ``clip_seconds``.

    :meth:`encode` gives one float32 tensor of the whole file per input. :meth:`collate` gives
    a ``(batch, clip samples)`` float32 tensor: a longer recording is cropped at a random
    offset when training (a different part each epoch, a cheap augmentation) and at its
    centre otherwise; a shorter one is zero-padded at the end. Once :meth:`augmented` with
    ``specaugment``, each training clip then goes through :func:`spec_augment`.
    """

    augmentations = (NO_AUGMENTATION, SPEC_AUGMENT)

    def __init__(self, sample_rate: int, clip_seconds: float):
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        if clip_seconds <= 0:
            raise ValueError(f"clip length must be positive, got {clip_seconds} seconds")
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.clip_samples = max(1, int(round(self.sample_rate * self.clip_seconds)))

    def encode_one(self, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):  # already a waveform at this rate (e.g. from a test)
            return value.detach().float().flatten().cpu()
        return torch.from_numpy(read_audio(value, self.sample_rate))

    def encode(self, inputs: Sequence[Any]) -> list[torch.Tensor]:
        return [self.encode_one(value) for value in inputs]

    def crop(self, waveform: torch.Tensor, train: bool) -> torch.Tensor:
        """``waveform`` cropped (random offset if ``train``, else centred) or zero-padded to the clip length."""
        excess = waveform.shape[-1] - self.clip_samples
        if excess > 0:
            start = int(torch.randint(0, excess + 1, ())) if train else excess // 2
            return waveform[start : start + self.clip_samples]
        if excess < 0:
            return torch.nn.functional.pad(waveform, (0, -excess))
        return waveform

    def collate(self, items: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        clips = [self.crop(item, train) for item in items]
        if train and self.augmentation == SPEC_AUGMENT:
            clips = [spec_augment(clip.float(), self.sample_rate) for clip in clips]
        return torch.stack(clips).float()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "audio",
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "clip_samples": self.clip_samples,
        }
