"""Hook specifications: what a plugin may implement.

Registration hooks follow the register-callback style: the host passes a
``register`` callable and owns the registry, so it can refuse a duplicate name
with a message that names both plugins. Hook names are plain; the project name
``automl_tl`` on the markers scopes them.

Lifecycle, in the order the hooks are called:

1. start-up: :func:`register_backbones`, :func:`register_datasets` (once per process);
2. in each process that runs trials of a study (the search's own, and every worker's):
   :func:`search_started` before the first trial;
3. during a search: :func:`trial_finished` after every trial, whatever its state;
4. :func:`search_finished` once the results are written (in the process that writes them).

Observer plugins (trackers such as the MLflow plugin, ``automl_tl_mlflow``) implement 2 to 4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from automl_tl.backbone import Backbone
    from automl_tl.config import SearchConfig
    from automl_tl.registry import NamedDataset
    from automl_tl.search.study import SearchOutcome
    from automl_tl.train.executor import TrialResult

PROJECT_NAME = "automl_tl"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backbones(register: Callable[["Backbone"], None]) -> None:
    """Call ``register(backbone)`` once for each :class:`~automl_tl.backbone.Backbone` the plugin provides.

    Registering is cheap: a backbone loads no weights until a model is built, and the plugin's module imports no
    torch or model library (every command imports it, listing backbones included; see :mod:`automl_tl.backbone`).
    A name registered twice (by this or another plugin) raises ``PluginError``.
    Return value: ignored.
    """


@hookspec
def register_datasets(register: Callable[["NamedDataset"], None]) -> None:
    """Call ``register(dataset)`` for each :class:`~automl_tl.registry.NamedDataset`
    (a named loader returning a labelled DataFrame), used for demos and benchmarks.
    Return value: ignored.
    """


@hookspec
def search_started(run_dir: "Path", study_name: str, config: "SearchConfig") -> None:
    """A process is about to run trials of the study ``study_name`` whose results go to ``run_dir``.

    Called before pre-ranking in the process that makes the study, and before the first trial in every
    worker that joins it, so it may be called more than once for one study (observers must be idempotent).
    Raise :class:`~automl_tl.errors.ConfigError` to refuse to start (for instance a tracker that is not
    installed). Return value: ignored.
    """


@hookspec
def trial_finished(result: "TrialResult") -> None:
    """Observe one finished trial (complete, pruned, stopped by the budget or failed).

    Called in the worker process that ran the trial, after the trial's state is stored.
    Observers (loggers, trackers) must not change ``result``. Return value: ignored.
    """


@hookspec
def search_finished(outcome: "SearchOutcome") -> None:
    """The search is over and its results (leaderboard, summary, best model, test metrics) are in
    ``outcome.run_dir``. Called once per run of ``automl-tl search`` (or per worker that finishes).
    Return value: ignored.
    """
