"""The timm export format: ``model.safetensors``, a state dict that ``timm.create_model(NAME, num_classes=N,
checkpoint_path=...)`` loads strictly. Image models on timm with a linear head only: timm's classifier is one
linear layer. Offered by :class:`~automl_tl_timm.TimmBackbone` through the backbone's export contract
(:meth:`automl_tl.backbone.Backbone.native_export_formats`)."""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from automl_tl.backbone import ExportContext, ExportFiles, NativeExportFormat
from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.transfer_model import TransferModel

TIMM_FORMAT = NativeExportFormat(name="timm", modality="image", holds="timm architectures", outside="not built on timm")


def check_timm_export(model: TransferModel, config: dict[str, Any]) -> None:
    """Refuse a head that timm's one-layer classifier cannot hold."""
    if not isinstance(model.head, nn.Linear):
        raise ConfigError(
            f"timm's classifier is one linear layer, and {config['backbone']['name']}'s head is an MLP: "
            "export it with --format torchscript or onnx"
        )


def write_timm_export(timm_name: str, context: ExportContext) -> ExportFiles:
    """The body's and head's tensors under timm's names for ``timm_name``, checked by loading them into timm."""
    model = context.model
    n_classes = len(context.config["classes"])
    import timm  # here, not on import: importing timm takes seconds (see automl_tl_timm._timm)

    reference = timm.create_model(timm_name, pretrained=False, num_classes=n_classes)
    expected = reference.state_dict()
    state = {name: tensor.detach().contiguous() for name, tensor in model.body.state_dict().items()}
    # timm's classifier is what the body lacks: one weight and one bias, under the model's own name
    classifier = sorted(name for name in expected if name not in state)
    prefixes = {name.rsplit(".", 1)[0] for name in classifier}
    if len(classifier) != 2 or len(prefixes) != 1 or {n.rsplit(".", 1)[1] for n in classifier} != {"weight", "bias"}:
        raise AutomlTLError(
            f"cannot map the head of {timm_name} onto timm's classifier (timm expects "
            f"{', '.join(classifier) or 'no new tensors'}): export it with --format torchscript or onnx"
        )
    prefix = prefixes.pop()
    state[f"{prefix}.weight"] = model.head.weight.detach().contiguous()
    state[f"{prefix}.bias"] = model.head.bias.detach().contiguous()
    wrong = [name for name, tensor in expected.items() if name not in state or state[name].shape != tensor.shape]
    if wrong or len(state) != len(expected):
        raise AutomlTLError(
            f"the body of {timm_name} does not match timm.create_model({timm_name!r}) "
            f"(first differing tensor: {(wrong or sorted(set(state) - set(expected)))[0]}): "
            "export it with --format torchscript or onnx"
        )
    path = context.folder / "model.safetensors"
    save_file(state, str(path))
    loaded = timm.create_model(timm_name, num_classes=n_classes, checkpoint_path=str(path)).eval()
    with torch.no_grad():
        context.check(loaded(*context.check_inputs), "timm")
    call = f'timm.create_model({timm_name!r}, num_classes={n_classes}, checkpoint_path=folder + "/model.safetensors")'
    code = (
        "import timm\nimport torch\n\n"
        f"folder = {str(context.final)!r}\n"
        f"model = {call}.eval()\n"
        "with torch.no_grad():\n"
        "    logits = model(images)  # images: see the input above\n"
    )
    files = {"model.safetensors": f"state dict of timm's {timm_name} with a {n_classes}-class classifier ({prefix})"}
    return ExportFiles(
        files,
        code,
        info={
            "create_model": {"model_name": timm_name, "num_classes": n_classes, "checkpoint_path": "model.safetensors"}
        },
    )
