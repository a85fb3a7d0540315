"""The transformers export format, and the tokenizer beside every whole-model export of a text model.

* ``transformers``: the encoder (``config.json``, ``model.safetensors``) and tokenizer that ``AutoModel`` /
  ``AutoTokenizer.from_pretrained`` load, plus ``head.safetensors``; the README gives the pooling and head in a
  few lines of torch. No stock transformers class pools the way sentence-transformers models are fine-tuned here
  (a masked mean), so the head is not hidden in a ``...ForSequenceClassification`` that would compute something
  else.
* TorchScript and ONNX exports (the core's) take token ids: the tokenizer saved beside them prepares texts.

Offered by :class:`~automl_tl_text.TransformersTextBackbone` through the backbone's export contract
(:meth:`automl_tl.backbone.Backbone.native_export_formats`).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from automl_tl.backbone import ExportContext, ExportFiles, NativeExportFormat
from automl_tl.errors import ConfigError

TRANSFORMERS_FORMAT = NativeExportFormat(
    name="transformers", modality="text", holds="transformers encoders", outside="not built on one"
)
#: what the README says of the saved tokenizer
_TOKENIZER_FILES = {"tokenizer files": "the tokenizer, padding on the right"}


def check_transformers_export(config: dict[str, Any]) -> None:
    """Refuse a checkpoint whose custom code (``trust_remote_code``) an export cannot carry."""
    backbone = config["backbone"]
    if backbone.get("trust_remote_code"):
        raise ConfigError(
            f"{backbone['name']} runs custom code (trust_remote_code), which an export cannot carry: "
            "export it with --format torchscript or onnx"
        )


def _quiet() -> Any:
    """No progress bars from transformers while saving and loading."""
    from automl_tl_text import quiet_progress  # the plugin's own switch (this module is imported from it lazily)

    return quiet_progress()


def save_tokenizer(context: ExportContext) -> None:
    """The text model's tokenizer, set to pad on the right and cut at the trained length, as in training."""
    tokenizer = copy.deepcopy(context.preprocessor.tokenizer)
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = context.config["preprocessing"]["max_length"]
    with _quiet():
        tokenizer.save_pretrained(str(context.folder))


def tokenize_code(config: dict[str, Any]) -> str:
    """README lines that turn ``texts`` into ``input_ids`` and ``attention_mask`` with the saved tokenizer."""
    return (
        f"tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        f"batch = tokenizer(texts, padding=True, truncation=True, max_length="
        f'{config["preprocessing"]["max_length"]}, return_tensors="pt", return_token_type_ids=False)\n'
        'input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]\n'
    )


def write_tokenizer(context: ExportContext) -> ExportFiles:
    """The tokenizer beside a TorchScript or ONNX export, and the code that prepares texts with it."""
    save_tokenizer(context)
    return ExportFiles(
        dict(_TOKENIZER_FILES), tokenize_code(context.config), imports="from transformers import AutoTokenizer\n"
    )


def write_transformers_export(context: ExportContext) -> ExportFiles:
    """The encoder as ``save_pretrained`` writes it, the tokenizer and the head; loaded back as the README does."""
    model, config = context.model, context.config
    transformer, pooling = model.body.transformer, model.body.pooling
    classes = config["classes"]
    transformer.config.id2label = {i: str(c) for i, c in enumerate(classes)}
    transformer.config.label2id = {str(c): i for i, c in enumerate(classes)}
    with _quiet():
        transformer.save_pretrained(str(context.folder))
    save_tokenizer(context)
    head = model.head
    layers = [head] if isinstance(head, nn.Linear) else [m for m in head if isinstance(m, nn.Linear)]
    names = ["output"] if len(layers) == 1 else ["hidden", "output"]
    save_file(
        {
            f"{name}.{kind}": getattr(layer, kind).detach().contiguous()
            for name, layer in zip(names, layers)
            for kind in ("weight", "bias")
        },
        str(context.folder / "head.safetensors"),
    )
    # an unused pooler was dropped in training; loading without one avoids a randomly initialised pooler
    no_pooler = pooling != "pooler" and "add_pooling_layer" in inspect.signature(type(transformer).__init__).parameters
    load_args = ", add_pooling_layer=False" if no_pooler else ""
    pool = {
        "mean": (
            "mask = attention_mask.unsqueeze(-1).float()\n"
            "    embedding = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over tokens"
        ),
        "cls": "embedding = hidden[:, 0]  # the first token's state",
        "pooler": "embedding = output.pooler_output",
    }[pooling]
    hidden_line = "" if pooling == "pooler" else "    hidden = output.last_hidden_state\n"
    head_lines = (
        (
            '    x = torch.nn.functional.gelu(embedding @ head["hidden.weight"].T + head["hidden.bias"])\n'
            '    logits = x @ head["output.weight"].T + head["output.bias"]\n'
        )
        if len(layers) == 2
        else '    logits = embedding @ head["output.weight"].T + head["output.bias"]\n'
    )
    code = (
        "import torch\nfrom safetensors.torch import load_file\nfrom transformers import AutoModel, AutoTokenizer\n\n"
        f"folder = {str(context.final)!r}\n"
        f"encoder = AutoModel.from_pretrained(folder{load_args}).eval()\n"
        'head = load_file(folder + "/head.safetensors")\n' + tokenize_code(config) + "with torch.no_grad():\n"
        "    output = encoder(input_ids=input_ids, attention_mask=attention_mask)\n"
        + hidden_line
        + f"    {pool}\n"
        + head_lines
        + "labels = [encoder.config.id2label[i] for i in logits.argmax(1).tolist()]\n"
    )
    # load it back exactly as the code above does
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    with _quiet():
        encoder = AutoModel.from_pretrained(str(context.folder), **({"add_pooling_layer": False} if no_pooler else {}))
        tokenizer = AutoTokenizer.from_pretrained(str(context.folder))
    batch = tokenizer(
        context.check_raw,
        padding=True,
        truncation=True,
        max_length=config["preprocessing"]["max_length"],
        return_tensors="pt",
        return_token_type_ids=False,
    )
    loaded_head = load_file(str(context.folder / "head.safetensors"))
    with torch.no_grad():
        output = encoder.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if pooling == "pooler":
            embedding = output.pooler_output
        elif pooling == "cls":
            embedding = output.last_hidden_state[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            embedding = (output.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if len(layers) == 2:
            embedding = torch.nn.functional.gelu(
                embedding @ loaded_head["hidden.weight"].T + loaded_head["hidden.bias"]
            )
        context.check(embedding @ loaded_head["output.weight"].T + loaded_head["output.bias"], "transformers")
    files = {
        "config.json": "the encoder's configuration (id2label holds the classes)",
        "model.safetensors": "the fine-tuned encoder's weights",
        "head.safetensors": "the classification head: "
        + (
            "output.weight, output.bias (linear)"
            if len(layers) == 1
            else "hidden.weight, hidden.bias, GELU, output.weight, output.bias"
        ),
        **_TOKENIZER_FILES,
    }
    return ExportFiles(files, code, info={"pooling": pooling})
