"""Finding pretrained weights on this machine: installed packages' folders, the cache folder, strict loading."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from automl_tl.errors import WeightsMismatchError, WeightsNotFoundError

#: environment variables that tell Hugging Face libraries to stay off the network
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
#: seconds the one probe of the hub may take (a connection, not a download)
HUB_PROBE_SECONDS = 3.0
_hub_reachable: dict[tuple[str, int], bool] = {}


def package_folder(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it; ``None`` when absent.

    Weight packages are installed with ``--no-deps`` and some import broken or heavy
    dependencies, so they are located, never imported.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a dotted name with a missing parent, or a bad name
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_root() -> Path:
    """Where automl_tl keeps what it builds once (joined checkpoints, synthesised data):
    ``$AUTOML_TL_CACHE``, else ``$XDG_CACHE_HOME/automl_tl``, else ``~/.cache/automl_tl``."""
    if os.environ.get("AUTOML_TL_CACHE"):
        return Path(os.environ["AUTOML_TL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "automl_tl"


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load ``state_dict`` into ``module`` requiring the same keys and shapes; one readable error naming ``source``.

    A mismatch is an error, never a silent random initialisation of the layers that did not match.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsMismatchError(f"weights from {source} are not a state dict of tensors "
                                   f"(found {type(state_dict).__name__})")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or misshaped:
        raise WeightsMismatchError(
            f"weights from {source} do not fit {type(module).__name__}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(misshaped)} with another shape "
            f"(e.g. {misshaped[:3]})")
    module.load_state_dict(state_dict, strict=True)


def hub_offline() -> bool:
    """Whether the user asked Hugging Face libraries (and so timm's hub loading) to stay off the network."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE") for var in HUB_OFFLINE_VARIABLES)


def _hub_address() -> tuple[str, int]:
    """Where a download from the hub connects first: the HTTPS proxy if one is set, else the hub (``HF_ENDPOINT``)."""
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(variable):
            url = os.environ[variable] if "://" in os.environ[variable] else f"http://{os.environ[variable]}"
            break
    else:
        url = os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT
    parts = urlsplit(url)
    return parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub (or the proxy in between) opens within ``HUB_PROBE_SECONDS``.

    Asked once per process and address. The probe runs in a thread, so that a name lookup with no answer
    (``socket``'s timeout does not cover it) cannot hold the search up either.
    """
    address = _hub_address()
    if address not in _hub_reachable:
        outcome: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection(address, timeout=HUB_PROBE_SECONDS).close()
                outcome.append(True)
            except OSError:
                outcome.append(False)

        thread = threading.Thread(target=probe, name="automl_tl-hub-probe", daemon=True)
        thread.start()
        thread.join(HUB_PROBE_SECONDS + 0.5)
        _hub_reachable[address] = bool(outcome and outcome[0])
    return _hub_reachable[address]


def check_hub_download(backbone: str, source: str, cached: bool) -> None:
    """Refuse at once (:class:`~automl_tl.errors.WeightsNotFoundError`, one line naming ``backbone``) weights that
    would have to come from the hub when they are not ``cached`` locally and the hub is off limits
    (``HF_HUB_OFFLINE``) or cannot be reached: the libraries would otherwise retry for a minute, then fail
    deep inside the search."""
    if cached:
        return
    if hub_offline():
        why = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        host, port = _hub_address()
        why = f"cannot reach the hub ({host}:{port})"
    else:
        return
    raise WeightsNotFoundError(f"backbone {backbone}: its weights ({source}) are not in the local cache and {why}; "
                               "connect to the network once to download them, or choose an installed backbone "
                               "('automl-tl backbones' lists them)")
