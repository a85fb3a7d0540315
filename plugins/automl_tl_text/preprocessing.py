"""Text preprocessing of the transformers backbones: tokenise once per data set without padding, pad per batch to
that batch's longest text, and batch the longest texts first for inference.

Imported when a backbone's preprocessor is first asked for
(:meth:`automl_tl_text.TransformersTextBackbone.preprocessor`), not when the plugin registers its backbones: it
imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from automl_tl.backbone import Preprocessor
from automl_tl.errors import ConfigError, DataError, WeightsNotFoundError, first_line
from automl_tl.weights import hub_offline

#: texts tokenised per call (bounded memory for large data sets)
_TOKENIZE_CHUNK = 1024


class TextPreprocessor(Preprocessor):
    """Tokenise once (truncation at ``max_length`` tokens, no padding); pad each batch to its longest text.

    ``tokenizer`` is a loaded transformers tokenizer, or a hub id / folder to load one from (lazily,
    with ``local_files_only`` for folders and when ``HF_HUB_OFFLINE`` is set). ``name`` identifies the
    tokenizer in :meth:`describe` (default: the source given).
    """

    def __init__(self, tokenizer: Any, max_length: int, name: str | None = None, trust_remote_code: bool = False):
        if max_length < 2:
            raise ConfigError(f"text max length must be at least 2 tokens, got {max_length}")
        self.max_length = int(max_length)
        self.trust_remote_code = trust_remote_code
        if isinstance(tokenizer, (str, Path)):
            self._source: str | Path | None = tokenizer
            self._tokenizer = None
        else:
            self._source, self._tokenizer = None, tokenizer
        self.name = name or str(tokenizer if self._source is not None else getattr(tokenizer, "name_or_path", "?"))

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            local = Path(str(self._source)).expanduser().is_dir()
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    str(self._source), trust_remote_code=self.trust_remote_code, local_files_only=local or hub_offline()
                )
            except (OSError, ValueError) as exc:
                raise WeightsNotFoundError(f"cannot load the tokenizer {self._source}: {first_line(exc)}") from None
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)  # padded positions are masked out, so any id works without one

    @staticmethod
    def _as_text(value: Any, index: int) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(f"text input {index} is empty ({value!r}); expected a string")
        return value if isinstance(value, str) else str(value)

    def encode(self, inputs: Sequence[Any]) -> list[list[int]]:
        """Token ids of each text (special tokens included), truncated to ``max_length``."""
        texts = [self._as_text(value, i) for i, value in enumerate(inputs)]
        ids: list[list[int]] = []
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            encoded = self.tokenizer(
                texts[start : start + _TOKENIZE_CHUNK],
                truncation=True,
                max_length=self.max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            ids.extend(list(map(int, row)) for row in encoded["input_ids"])
        return ids

    def collate(self, items: Sequence[Sequence[int]], train: bool) -> dict[str, torch.Tensor]:
        """``input_ids`` padded on the right to the longest item, and the matching ``attention_mask``."""
        longest = max((len(item) for item in items), default=0)
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : len(item)] = torch.as_tensor(item, dtype=torch.long)
            attention_mask[row, : len(item)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def inference_order(self, items: Sequence[Sequence[int]]) -> list[int]:
        """Longest texts first: each batch then pads to about its own length (and one that does not fit in
        memory fails at once, not after the rest)."""
        return sorted(range(len(items)), key=lambda index: len(items[index]), reverse=True)

    @cached_property
    def _vocab_sha256(self) -> str:
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "text",
            "tokenizer": self.name,
            "tokenizer_class": type(self.tokenizer).__name__,
            "vocab_size": len(self.tokenizer),
            "vocab_sha256": self._vocab_sha256,
            "pad_token_id": self.pad_token_id,
            "max_length": self.max_length,
        }
