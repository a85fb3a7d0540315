"""The plugin manager: built-in and third-party plugins, loaded the same way.

Every plugin, the built-in ones included, is a module named by an entry point in
the group ``automl_tl`` of an installed distribution. Set ``AUTOML_TL_BLOCK_PLUGINS``
to a comma-separated list of entry-point names to skip some (for instance one that
fails to import), and ``AUTOML_TL_LOAD_PLUGINS=0`` to load none at all (tests that
register their own plugins use it to start from a clean slate).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from functools import lru_cache

import pluggy

from automl_tl import hookspecs
from automl_tl.errors import PluginError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "automl_tl"
BLOCK_ENV = "AUTOML_TL_BLOCK_PLUGINS"
LOAD_ENV = "AUTOML_TL_LOAD_PLUGINS"


def blocked_plugin_names() -> set[str]:
    """Entry-point names the user asked us to skip."""
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def _load_entry_point_plugins(manager: pluggy.PluginManager) -> None:
    blocked = blocked_plugin_names()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in blocked:
            manager.set_blocked(entry_point.name)
            logger.info("plugin %r is blocked by %s", entry_point.name, BLOCK_ENV)
            continue
        if manager.get_plugin(entry_point.name) is not None:
            continue
        distribution = entry_point.dist.name if entry_point.dist else "unknown distribution"
        try:
            plugin = entry_point.load()
        except Exception as exc:  # any import failure must name the plugin, not crash anonymously
            raise PluginError(
                f"plugin {entry_point.name!r} (from {distribution}, module {entry_point.value}) failed to import: "
                f"{type(exc).__name__}: {exc}; uninstall it or set {BLOCK_ENV}={entry_point.name}"
            ) from exc
        manager.register(plugin, name=entry_point.name)
        logger.debug("loaded plugin %r from %s", entry_point.name, distribution)


def new_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the hook specifications and, unless told not to, every installed plugin."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    if load_entry_points and os.environ.get(LOAD_ENV, "1") != "0":
        _load_entry_point_plugins(manager)
    return manager


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    return new_plugin_manager()
