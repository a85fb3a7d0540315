"""Audio encoders from a local transformers checkpoint (wav2vec 2.0, HuBERT, WavLM, AST, ...).

The user gives a folder written by ``save_pretrained`` (``config.json``, the weights and
``preprocessor_config.json``); it is read with ``local_files_only=True`` and
``trust_remote_code=False``, so nothing is downloaded and no code from the folder runs. No
such checkpoint ships offline, so these backbones are registered by the user's own plugin::

    @hookimpl
    def register_backbones(register):
        register(TransformersAudioBackbone("team/wav2vec2-base", "/models/wav2vec2-base"))

Embedding: the encoder's last hidden states averaged over time. Layer groups: everything
before the encoder layers (convolutional feature encoder, feature projection, positional
convolution, patch embedding) as the first group, then one group per encoder layer
(parameters after the last layer, such as a final layer norm, join the last group).

Inputs: waveform models (``Wav2Vec2FeatureExtractor``: wav2vec 2.0, HuBERT, WavLM) get the
waveform normalised in torch, inside the forward pass, when the extractor says ``do_normalize``;
any other feature extractor (AST's filterbanks, for example) is called on the CPU in the forward
pass, which is correct but slower.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_tl.errors import WeightsNotFoundError, first_line
from automl_tl_audio.base import AudioBackbone
from automl_tl_audio.weights import WeightsMismatchError

if TYPE_CHECKING:
    from automl_tl.transfer_model import TransferModel

logger = logging.getLogger(__name__)


class TransformersAudioBackbone(AudioBackbone):
    """An audio encoder from a local transformers checkpoint folder; see the module docstring."""

    #: the attention's query and value projections: wav2vec 2.0, HuBERT, WavLM and Whisper call them q_proj and
    #: v_proj, the audio spectrogram transformer query and value; LoRA adapts those of them the checkpoint has
    lora_targets = ("q_proj", "v_proj", "query", "value")

    def __init__(self, name: str, source: str | Path, clip_seconds: float = 2.0):
        self.name = name
        self.source = Path(source)
        self.default_clip_seconds = clip_seconds

    @property
    def weight_source(self) -> str:
        return f"local transformers checkpoint {self.source}"

    def weights_available(self) -> bool:
        return (self.source / "config.json").is_file() and (self.source / "preprocessor_config.json").is_file()

    def _check_folder(self) -> None:
        if not (self.source / "config.json").is_file():
            raise WeightsNotFoundError(
                f"no transformers checkpoint in {self.source}: config.json is missing; "
                "give a folder written by save_pretrained"
            )

    @cached_property
    def config(self) -> Any:
        from transformers import AutoConfig

        self._check_folder()
        try:
            return AutoConfig.from_pretrained(self.source, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsMismatchError(f"cannot read the model config in {self.source}: {first_line(exc)}") from None

    @cached_property
    def feature_extractor(self) -> Any:
        from transformers import AutoFeatureExtractor

        self._check_folder()
        try:
            return AutoFeatureExtractor.from_pretrained(self.source, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsNotFoundError(
                f"cannot read the feature extractor in {self.source} (preprocessor_config.json): {first_line(exc)}"
            ) from None

    @property
    def sample_rate(self) -> int:  # type: ignore[override]
        return int(self.feature_extractor.sampling_rate)

    @property
    def embedding_dim(self) -> int:
        config = self.config
        return int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        from torch import nn
        from transformers import AutoModel

        from automl_tl.transfer_model import TransferModel
        from automl_tl_audio.networks.hf_audio import TransformersAudioBody, transformer_layer_groups

        if pretrained:
            self._check_folder()
            try:
                model, info = AutoModel.from_pretrained(
                    self.source, local_files_only=True, trust_remote_code=False, output_loading_info=True
                )
            except (OSError, ValueError) as exc:
                raise WeightsMismatchError(f"cannot load the model in {self.source}: {first_line(exc)}") from None
            missing = sorted(info.get("missing_keys", ()))
            mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
            if missing or mismatched:  # transformers would initialise these randomly: refuse instead
                raise WeightsMismatchError(
                    f"weights in {self.source} do not fit {type(model).__name__}: "
                    f"{len(missing)} missing {missing[:3]}, {len(mismatched)} mis-shaped "
                    f"{mismatched[:3]}"
                )
        else:
            model = AutoModel.from_config(self.config, trust_remote_code=False)
        body = TransformersAudioBody(model, self.feature_extractor)
        return TransferModel(body, nn.Linear(self.embedding_dim, num_classes), transformer_layer_groups(body))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": str(self.source), "model_type": getattr(self.config, "model_type", "")}
