"""automl_tl: AutoML for transfer learning.

Give it labelled data and a budget; it searches pretrained backbones, how much of each
to fine-tune (freeze depth) and the learning rates, and hands back the best model, a
leaderboard and a summary. See docs/architecture.md for the architecture.
"""

from automl_tl.backbone import Backbone, InputOptions, Preprocessor, TransferModel
from automl_tl.config import SearchConfig, TrialConfig
from automl_tl.data import DatasetBundle, prepare_dataset
from automl_tl.errors import AutomlTLError
from automl_tl.estimator import TransferClassifier
from automl_tl.executor import Executor, TrialResult
from automl_tl.export import export_model
from automl_tl.hookspecs import hookimpl
from automl_tl.model_card import write_model_card
from automl_tl.model_io import Predictor, load
from automl_tl.registry import get_backbone, get_registry, list_backbones
from automl_tl.search import Search, SearchOutcome, search

__version__ = "0.1.0"

__all__ = [
    "AutomlTLError", "Backbone", "DatasetBundle", "Executor", "InputOptions", "Predictor", "Preprocessor",
    "Search", "SearchConfig", "SearchOutcome", "TransferClassifier", "TransferModel", "TrialConfig", "TrialResult",
    "export_model", "get_backbone", "get_registry", "hookimpl", "list_backbones", "load", "prepare_dataset", "search",
    "write_model_card",
]
