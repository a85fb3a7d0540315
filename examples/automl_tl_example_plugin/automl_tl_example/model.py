"""The example backbone's network: torchvision's MobileNetV2 as a body with layer groups, and a linear head.

Imported by :meth:`automl_tl_example.TorchvisionMobileNetV2.build` when a model is built: it imports torch and
torchvision, which registering and listing the backbone must not pay for.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from automl_tl import TransferModel

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


def build_mobilenet_v2(num_classes: int, pretrained: bool = True) -> TransferModel:
    """MobileNetV2 with torchvision's ImageNet weights (unless ``pretrained`` is false) and a fresh linear head."""
    network = torchvision.models.mobilenet_v2()
    if pretrained:
        from automl_tl_timm.offline_weights import find_weight_file

        state = torch.load(find_weight_file("mobilenetv2_100"), map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)
    body = _Body(network)
    groups = [[name for name, _ in body.named_parameters() if int(name.split(".")[1]) in stage] for stage in STAGES]
    return TransferModel(body, nn.Linear(1280, num_classes), groups)
