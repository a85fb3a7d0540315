"""Training-batch augmentation: the searched choice, defined once (no torch needed to read it).

An augmentation acts on training batches only, so it can help only the strategies whose body sees the batches
(:attr:`~automl_tl.strategies.Strategy.augmentable`); a frozen body's features are computed once, un-augmented, and
cached. Validation and prediction batches are never augmented. Each modality offers its own options
(:data:`AUGMENTATIONS`, what :attr:`~automl_tl.backbone.Backbone.augmentations` says by default):

* images: ``trivial`` (torchvision's TrivialAugmentWide: one random operation of random strength per image),
  ``randaugment`` (torchvision's RandAugment: two operations at magnitude 9), both on the uint8 images before
  normalisation; ``mixup`` (timm's ``Mixup``: each batch mixed with itself reversed, by mixup or CutMix, with soft
  targets), applied by the executor after collation because it changes the targets too;
* audio: ``specaugment``: on the waveform, a random time shift and gain, then frequency bands and time spans
  masked (SpecAugment, Park et al., 2019). Every audio body computes its own features from the waveform, so the
  masks are made there: a band of the waveform's spectrum set to zero is a masked band in whatever spectrogram
  the body computes;
* text: none.
"""

from __future__ import annotations

NO_AUGMENTATION = "none"
TRIVIAL_AUGMENT = "trivial"
RAND_AUGMENT = "randaugment"
MIXUP = "mixup"
SPEC_AUGMENT = "specaugment"

#: what each modality offers, "none" first (the warm-start trials' choice)
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "image": (NO_AUGMENTATION, TRIVIAL_AUGMENT, RAND_AUGMENT, MIXUP),
    "audio": (NO_AUGMENTATION, SPEC_AUGMENT),
    "text": (NO_AUGMENTATION,),
}
#: every augmentation's name, in the order they are listed
AUGMENTATION_NAMES = tuple(dict.fromkeys(name for names in AUGMENTATIONS.values() for name in names))
#: augmentations that mix examples and their targets: applied to a collated batch by the executor, with soft targets
BATCH_AUGMENTATIONS = (MIXUP,)


def modality_augmentations(modality: str) -> tuple[str, ...]:
    """The augmentations a modality's batches can take (only "none" for one this version does not know)."""
    return AUGMENTATIONS.get(modality, (NO_AUGMENTATION,))
