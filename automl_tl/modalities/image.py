"""Image preprocessing shared by image backbones: decode (:func:`automl_tl.data.readers.read_image`: EXIF orientation,
first frame, large files decoded reduced) and resize once, normalise per batch, and augment training batches when
asked (:mod:`automl_tl.augmentation`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from automl_tl.augmentation import NO_AUGMENTATION, RAND_AUGMENT, TRIVIAL_AUGMENT
from automl_tl.backbone import Preprocessor
from automl_tl.data.readers import image_shorter_side, read_image

#: changes whenever the decoding of image files changes, so that features cached before are not reused
#: (2: EXIF orientation applied, large files decoded reduced; 3: 16-bit, float and transparent images scaled
#: and composited on white, see automl_tl.data.readers.as_rgb)
DECODING_VERSION = 3
#: the smallest side a fine-tuning trial is trained at when the images are smaller than their backbone's pretrained
#: input (see fine_tuning_side); below it the last feature maps of an ImageNet network are one or two pixels wide
MIN_FINE_TUNING_SIDE = 64
#: how many times their own side small images are fine-tuned at (see fine_tuning_side)
FINE_TUNING_UPSCALE = 4
#: the images a data set's typical size is read from (headers only): evenly spread over its rows
NATIVE_SIDE_SAMPLE = 64
INTERPOLATIONS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


class ImagePreprocessor(Preprocessor):
    """Resize (and centre-crop) to ``size``, keep uint8 tensors, normalise with ``mean``/``std`` per batch.

    With ``crop_pct`` < 1 the shorter side is resized to ``size / crop_pct`` and the centre
    cropped, as in the backbone's pretrained evaluation. ``crop_pct`` = 1 resizes the whole
    image to ``size`` x ``size``: right for small images upscaled for a small-input search,
    where a crop would only throw content away. Training batches are flipped left-right when
    ``hflip`` is set (off by default: it is wrong for digits and text-like images), and get the
    :meth:`~automl_tl.backbone.Preprocessor.augmented` policy, per image on its uint8 pixels (as
    torchvision's policies expect), before normalisation.
    """

    augmentations = (NO_AUGMENTATION, TRIVIAL_AUGMENT, RAND_AUGMENT)

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        crop_pct: float = 1.0,
        hflip: bool = False,
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
        self.size, self.crop_pct, self.interpolation, self.hflip = size, crop_pct, interpolation, hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def encode_one(self, value: Any) -> torch.Tensor:
        # (torchvision imported here: its import pulls in torch._dynamo, seconds that listing backbones need not pay)
        from torchvision.transforms import functional as F

        # the side the image is resized to before any crop: a much larger file is decoded reduced towards it
        scale = self.size if self.crop_pct >= 1.0 else int(round(self.size / self.crop_pct))
        image = read_image(value, size=scale)
        resample = INTERPOLATIONS[self.interpolation]
        if self.crop_pct >= 1.0:
            image = image.resize((self.size, self.size), resample)
        else:
            image = F.center_crop(
                F.resize(image, scale, interpolation=F.InterpolationMode(self.interpolation)), [self.size, self.size]
            )
        return F.pil_to_tensor(image)  # uint8, 3 x size x size: a quarter of float32's memory

    def encode(self, inputs: Sequence[Any]) -> list[torch.Tensor]:
        return [self.encode_one(value) for value in inputs]

    def collate(self, items: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        if train and self.augmentation != NO_AUGMENTATION:
            policy = _policy(self.augmentation)
            items = [policy(item) for item in items]  # (a new tensor each: the encoded items stay as they are)
        batch = torch.stack(list(items)).float().div_(255.0)
        if train and self.hflip:
            flip = torch.rand(len(batch)) < 0.5
            batch[flip] = batch[flip].flip(-1)
        return (batch - self.mean) / self.std

    def cache_key(self) -> dict[str, Any]:
        # mean, std and flips act in collate(): backbones that differ only there share one encoding
        # ("decoding": how files are decoded, EXIF orientation and reduction of large files, since it changed)
        return {
            "kind": "image",
            "size": self.size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "decoding": DECODING_VERSION,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "size": self.size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "hflip": self.hflip,
        }


def _policy(augmentation: str) -> Any:
    """torchvision's augmentation policy called ``augmentation`` (uint8 image tensor in, one out)."""
    from torchvision import transforms

    if augmentation == TRIVIAL_AUGMENT:
        return transforms.TrivialAugmentWide()
    if augmentation == RAND_AUGMENT:
        return transforms.RandAugment(num_ops=2, magnitude=9)
    raise ValueError(f"no image policy {augmentation!r}")


def native_side(inputs: Sequence[Any], sample: int = NATIVE_SIDE_SAMPLE) -> int | None:
    """The median shorter side of the images, in pixels, read from the headers of up to ``sample`` of them evenly
    spread over ``inputs``; None when none can be read."""
    if not len(inputs):
        return None
    chosen = sorted({round(i * (len(inputs) - 1) / max(sample - 1, 1)) for i in range(min(sample, len(inputs)))})
    sides = [side for side in (image_shorter_side(inputs[i]) for i in chosen) if side is not None]
    return int(np.median(sides)) if sides else None


def fine_tuning_side(native: int | None, pretrained: int) -> int | None:
    """The image side a trial that trains the body uses when the images are much smaller than the backbone's
    pretrained input, else None (the pretrained side).

    Upscaling an 8-pixel digit to 224 pixels adds no detail, but costs the body's forward and backward passes
    at 224 pixels, twelve times the pixels of 64: the epochs a budget holds go to the size instead of to
    learning (the digits rows of ``benchmarks/versus_peers.py`` in docs/benchmarks.md show what it changes).
    Too small a side costs accuracy instead: an ImageNet body's features of small images are only about as good
    as at its pretrained side from about four times their own side (logistic regression on the features of 520
    Fashion-MNIST images, 28 px, tested on 600: 0.78 at 64 px, 0.79 at 96, 0.84 at 128, 0.85 at 224 for
    EfficientNet-Lite0; 0.79, 0.80, 0.83, 0.84 for MobileNetV2), and a fine-tune starts from those features.
    So the side is four times the images' own, a multiple of 32, at least :data:`MIN_FINE_TUNING_SIDE`, and used
    only when it is at most three quarters of the pretrained side (at 224: images up to 40 px; training at 128
    px costs a third of 224). Frozen-body trials keep the pretrained side: their features are computed once,
    and are best at the size the body learnt.
    """
    if native is None:
        return None
    side = max(MIN_FINE_TUNING_SIDE, -(-FINE_TUNING_UPSCALE * native // 32) * 32)
    return side if side <= 3 * pretrained // 4 else None
