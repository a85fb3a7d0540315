"""The audio plugin's networks: the ``nn.Module`` classes and the conversion of their packages' weight files.

Each module here is imported by its backbone (:mod:`automl_tl_audio.ge2e`, ``crepe``, ``aisfx``, ``hf_audio``)
when a model is built, never when the plugin registers its backbones: they import torch.
"""
