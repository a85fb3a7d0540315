"""The user's choices about input size, read by each backbone for its own modality (no torch needed to read them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputOptions:
    """User choices about input size; each backbone reads the field of its own modality.

    ``image_size``: side in pixels (smaller than the pretrained size is faster on CPU);
    ``max_length``: tokens per text; ``clip_seconds``: seconds of audio per example.
    ``None`` keeps the backbone's pretrained default.
    """

    image_size: int | None = None
    max_length: int | None = None
    clip_seconds: float | None = None


MODALITIES = ("image", "text", "audio")
