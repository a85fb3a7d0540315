"""What the plugins registered: backbones (per modality) and named datasets.

The registry is built from the plugin manager on first use and cached; call
:func:`reset_registry` after registering or unregistering a plugin by hand.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

from automl_tl.errors import PluginError, UnknownBackboneError
from automl_tl.plugins import get_plugin_manager

if TYPE_CHECKING:
    import pandas as pd

    from automl_tl.backbone import Backbone


@dataclass(frozen=True)
class NamedDataset:
    """A named loader of a labelled DataFrame, for demos and benchmarks."""

    name: str
    description: str
    modality: str
    input_column: str
    label_column: str
    load: Callable[[], "pd.DataFrame"]


class Registry:
    """Backbones and datasets by name, each remembered with the plugin that registered it."""

    def __init__(self) -> None:
        self._backbones: dict[str, "Backbone"] = {}
        self._datasets: dict[str, NamedDataset] = {}
        self._owner: dict[tuple[str, str], str] = {}

    def add_backbone(self, backbone: "Backbone", plugin: str) -> None:
        self._add("backbone", backbone.name, plugin)
        self._backbones[backbone.name] = backbone

    def add_dataset(self, dataset: NamedDataset, plugin: str) -> None:
        self._add("dataset", dataset.name, plugin)
        self._datasets[dataset.name] = dataset

    def _add(self, kind: str, name: str, plugin: str) -> None:
        previous = self._owner.get((kind, name))
        if previous is not None:
            raise PluginError(
                f"{kind} {name!r} registered by plugin {plugin!r} is already registered by plugin {previous!r}"
            )
        self._owner[(kind, name)] = plugin

    def owner(self, kind: str, name: str) -> str:
        """The plugin that registered ``name`` (``kind`` is "backbone" or "dataset")."""
        return self._owner[(kind, name)]

    def get_backbone(self, name: str) -> "Backbone":
        """The backbone called ``name``; :class:`UnknownBackboneError` lists close names."""
        try:
            return self._backbones[name]
        except KeyError:
            raise UnknownBackboneError(name, self._backbones) from None

    def list_backbones(self, modality: str | None = None, pattern: str | None = None) -> list["Backbone"]:
        """Backbones sorted by name, optionally of one modality and matching a shell-style ``pattern``."""
        return [
            backbone
            for name, backbone in sorted(self._backbones.items())
            if (modality is None or backbone.modality == modality)
            and (pattern is None or fnmatch.fnmatchcase(name, pattern))
        ]

    def resolve_backbones(self, names_or_patterns: Iterable[str], modality: str | None = None) -> list["Backbone"]:
        """Expand names and wildcards (``tf_efficientnet_lite*``) into backbones, in the order given, without repeats.

        A plain name must exist; a wildcard must match at least one backbone of ``modality``.
        """
        chosen: dict[str, "Backbone"] = {}
        for item in names_or_patterns:
            if any(char in item for char in "*?["):
                matches = self.list_backbones(modality=modality, pattern=item)
                if not matches:
                    raise UnknownBackboneError(item, [b.name for b in self.list_backbones(modality=modality)])
            else:
                matches = [self.get_backbone(item)]
            for backbone in matches:
                chosen.setdefault(backbone.name, backbone)
        return list(chosen.values())

    def get_dataset(self, name: str) -> NamedDataset:
        """The named dataset ``name``."""
        try:
            return self._datasets[name]
        except KeyError:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise PluginError(f"unknown dataset {name!r}; registered datasets: {known}") from None

    def list_datasets(self) -> list[NamedDataset]:
        """Registered datasets sorted by name."""
        return [self._datasets[name] for name in sorted(self._datasets)]


def build_registry(manager: pluggy.PluginManager) -> Registry:
    """Call every plugin's registration hooks, one plugin at a time so that duplicates name their plugin."""
    registry = Registry()
    for impl in manager.hook.register_backbones.get_hookimpls():
        impl.function(register=lambda backbone, plugin=impl.plugin_name: registry.add_backbone(backbone, plugin))
    for impl in manager.hook.register_datasets.get_hookimpls():
        impl.function(register=lambda dataset, plugin=impl.plugin_name: registry.add_dataset(dataset, plugin))
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built from the plugin manager on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry(get_plugin_manager())
    return _registry


def reset_registry() -> None:
    """Forget the cached registry so that the next :func:`get_registry` asks the plugins again."""
    global _registry
    _registry = None


def get_backbone(name: str) -> "Backbone":
    """Shortcut for ``get_registry().get_backbone(name)``."""
    return get_registry().get_backbone(name)


def list_backbones(modality: str | None = None, pattern: str | None = None) -> list["Backbone"]:
    """Shortcut for ``get_registry().list_backbones(...)``."""
    return get_registry().list_backbones(modality=modality, pattern=pattern)
