"""resemblyzer's GE2E speaker encoder as a backbone: its weight file, the numbers it states, and reading the file
into the network (:mod:`automl_tl_audio.networks.ge2e`, imported when a model is built: it needs torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from automl_tl_audio.base import PackagedAudioBackbone
from automl_tl_audio.weights import PackagedWeights, WeightsMismatchError, load_strict, load_torch_file

if TYPE_CHECKING:
    from torch import nn

    from automl_tl_audio.networks.ge2e import GE2EBody

SAMPLE_RATE = 16000
#: units of each LSTM layer and of the embedding
HIDDEN = 256

RESEMBLYZER = PackagedWeights("resemblyzer", "resemblyzer", "pretrained.pt", "0.1.4")


class GE2EBackbone(PackagedAudioBackbone):
    """resemblyzer's pretrained GE2E speaker encoder (Apache-2.0), 256-d embeddings, 3 layer groups."""

    package_file = RESEMBLYZER
    sample_rate = SAMPLE_RATE
    default_clip_seconds = 1.6  # the 160-frame partial utterances the encoder was trained on

    @property
    def embedding_dim(self) -> int:
        return HIDDEN

    def make_body(self) -> GE2EBody:
        from automl_tl_audio.networks.ge2e import GE2EBody

        return GE2EBody()

    def load_weights(self, body: nn.Module, path: Path) -> None:
        from automl_tl_audio.networks.ge2e import convert_resemblyzer_state

        checkpoint = load_torch_file(path)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_state"), dict):
            raise WeightsMismatchError(f"weight file {path} holds no 'model_state' dictionary")
        load_strict(body, convert_resemblyzer_state(checkpoint["model_state"]), path)
