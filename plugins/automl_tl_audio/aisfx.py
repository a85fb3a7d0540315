"""The aiSFX sound-effects CNN (Bonet et al., ISMIR 2022) as a backbone: its weight file, the numbers it states, and
reading the file into the network (:mod:`automl_tl_audio.networks.aisfx`, imported when a model is built: it needs
torch).

The checkpoint is a pickled tuple (state dict, a dict of numpy scalars describing its training
sets). It is read with ``weights_only=True`` plus an allow-list of exactly the three numpy
globals that dict needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from automl_tl_audio.base import PackagedAudioBackbone
from automl_tl_audio.weights import PackagedWeights, WeightsMismatchError, load_strict, load_torch_file

if TYPE_CHECKING:
    from torch import nn

    from automl_tl_audio.networks.aisfx import AisfxBody

SAMPLE_RATE = 44100
#: samples between spectrogram frames
HOP = 1024
#: channels of the four conv blocks; the last is the embedding's size
CHANNELS = (64, 128, 256, 512)

AISFX = PackagedWeights("aisfx", "aisfx", "models/checkpoint.pth", "0.1.2")


def numpy_checkpoint_globals() -> list:
    """The three globals the aiSFX checkpoint's numpy scalars unpickle with, and nothing else.

    The pickle names numpy's scalar constructor ``numpy.core.multiarray.scalar``; numpy 2 moved
    it to ``numpy._core``, so it is given as a (callable, pickled name) pair.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, np.dtypes.Int64DType]


class AisfxBackbone(PackagedAudioBackbone):
    """aiSFX's pretrained sound-effects CNN (code MIT, model CC BY 4.0), 512-d embedding, 4 layer groups."""

    package_file = AISFX
    sample_rate = SAMPLE_RATE
    default_clip_seconds = round(100 * HOP / SAMPLE_RATE, 2)  # the 100-frame blocks it was trained on (2.32 s)

    @property
    def embedding_dim(self) -> int:
        return CHANNELS[-1]

    def make_body(self) -> AisfxBody:
        from automl_tl_audio.networks.aisfx import AisfxBody

        return AisfxBody()

    def load_weights(self, body: nn.Module, path: Path) -> None:
        checkpoint = load_torch_file(path, allowed_globals=numpy_checkpoint_globals())
        if not (isinstance(checkpoint, tuple) and checkpoint and isinstance(checkpoint[0], dict)):
            raise WeightsMismatchError(f"weight file {path} does not hold a (state dict, info) tuple")
        state = {}
        for key, tensor in checkpoint[0].items():
            if key.startswith("fc."):  # the classifiers of its nine training sets: replaced by our head
                continue
            state[key.removeprefix("embedding_net.")] = tensor
        load_strict(body, state, path)
