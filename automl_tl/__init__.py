"""automl_tl: AutoML for transfer learning.

Give it labelled data and a budget; it searches pretrained backbones, how much of each to fine-tune and the
learning rates, and hands back the best model, a leaderboard and a report. The package is laid out as the
data flow (README, "Architecture"): ``data/`` -> ``train/`` and ``rank/`` -> ``results/`` -> ``search/``, with
the shared contracts on the ground floor and the two faces, ``cli`` and ``estimator``, on top.

The names below are the public API. They are imported on first use, so that ``import automl_tl`` (and the
command line's ``--help``) does not pay for torch and Optuna until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "AutomlTLError": "automl_tl.errors",
    "Backbone": "automl_tl.backbone",
    "InputOptions": "automl_tl.inputs",
    "Preprocessor": "automl_tl.backbone",
    "TransferModel": "automl_tl.transfer_model",
    "SearchConfig": "automl_tl.config",
    "TrialConfig": "automl_tl.config",
    "hookimpl": "automl_tl.hookspecs",
    "get_backbone": "automl_tl.registry",
    "get_registry": "automl_tl.registry",
    "list_backbones": "automl_tl.registry",
    "TransferClassifier": "automl_tl.estimator",
    "DatasetBundle": "automl_tl.data.bundle",
    "prepare_dataset": "automl_tl.data.bundle",
    "Executor": "automl_tl.train.executor",
    "TrialResult": "automl_tl.train.executor",
    "Search": "automl_tl.search.study",
    "SearchOutcome": "automl_tl.search.study",
    "run_search": "automl_tl.search.study",
    "Predictor": "automl_tl.results.model_io",
    "load": "automl_tl.results.loading",
    "export_model": "automl_tl.results.export",
    "write_model_card": "automl_tl.results.model_card",
}

__all__ = [
    "AutomlTLError",
    "Backbone",
    "DatasetBundle",
    "Executor",
    "InputOptions",
    "Predictor",
    "Preprocessor",
    "Search",
    "SearchConfig",
    "SearchOutcome",
    "TransferClassifier",
    "TransferModel",
    "TrialConfig",
    "TrialResult",
    "export_model",
    "get_backbone",
    "get_registry",
    "hookimpl",
    "list_backbones",
    "load",
    "prepare_dataset",
    "run_search",
    "write_model_card",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'automl_tl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from automl_tl.backbone import Backbone, Preprocessor
    from automl_tl.config import SearchConfig, TrialConfig
    from automl_tl.data.bundle import DatasetBundle, prepare_dataset
    from automl_tl.errors import AutomlTLError
    from automl_tl.estimator import TransferClassifier
    from automl_tl.hookspecs import hookimpl
    from automl_tl.inputs import InputOptions
    from automl_tl.registry import get_backbone, get_registry, list_backbones
    from automl_tl.results.export import export_model
    from automl_tl.results.loading import load
    from automl_tl.results.model_card import write_model_card
    from automl_tl.results.model_io import Predictor
    from automl_tl.search.study import Search, SearchOutcome, run_search
    from automl_tl.train.executor import Executor, TrialResult
