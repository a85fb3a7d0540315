"""LoRA through ``peft``: low-rank adapters added beside a body's target linear layers, and merged back.

The adapters live only while a trial trains: :func:`merge_adapters` folds each one into the weight it adapts
and puts the plain layer back, so the model a LoRA trial hands on has the backbone's own parameter names, and
saving, loading, predicting and exporting it are those of any other model. ``peft`` is imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from automl_tl.transfer_model import TransferModel


def add_adapters(model: TransferModel, targets: Sequence[str], rank: int, alpha: float, dropout: float) -> list[str]:
    """Add LoRA adapters of ``rank`` (output scaled by ``alpha`` times the rank, over the rank: ``alpha``) beside
    every linear layer of ``model.body`` whose name ends in one of ``targets``, in place; the body's other
    parameters are frozen, the head trains. Returns the names of the adapters' parameters (all trainable).
    ValueError when the body has none of ``targets``."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, module in model.body.named_modules() if isinstance(module, nn.Linear)}
    found = [target for target in targets if target in present]
    if not found:
        raise ValueError(f"the body has none of the LoRA targets {', '.join(targets)}")
    config = LoraConfig(r=rank, lora_alpha=alpha * rank, lora_dropout=dropout, target_modules=found, bias="none")
    inject_adapter_in_model(config, model.body)
    adapters = [name for name, _ in model.body.named_parameters() if "lora_" in name]
    for name, parameter in model.body.named_parameters():
        parameter.requires_grad_(name in adapters)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)
    return adapters


def merge_adapters(model: TransferModel) -> None:
    """Fold every LoRA adapter of ``model.body`` into the weight it adapts and put the plain layer back in its
    place (in place): the body then has exactly the parameters (names and shapes) it had before
    :func:`add_adapters`, all frozen."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, module) for name, module in model.body.named_modules() if isinstance(module, LoraLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.body.get_submodule(parent_name) if parent_name else model.body
        setattr(parent, child, module.get_base_layer())
    for parameter in model.body.parameters():
        parameter.requires_grad_(False)
