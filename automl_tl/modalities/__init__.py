"""Modalities: the preprocessing that every backbone of one modality shares (image, audio)."""
