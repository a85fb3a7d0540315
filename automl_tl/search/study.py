"""The study: pre-ranking, sampler, pruner, storage, budgets, resume, and keeping the best model.

Before any fine-tuning, every candidate backbone is scored by transferability on its cached
features (:mod:`automl_tl.rank.ranking`); the best-ranked are tried first and, with ``top_k``,
only they are searched. Every trial then runs through the shared
:class:`~automl_tl.train.executor.Executor`; this module turns the executor's per-epoch callback
into Optuna reports and prunes (successive halving or Hyperband over epochs), enforces the
search's and each trial's wall-clock budget, and owns the trial states. The study lives in a
journal file in the run directory (safe for several processes on one machine) or in a database
(``--storage postgresql://...``), so running the same command again resumes it: every trial
carries a heartbeat, and a trial whose worker died is marked failed and run again
(:mod:`automl_tl.search.liveness`). Several workers can share one study (:mod:`automl_tl.search.workers`): the
study stores the settings and the data's source, and each worker stops when the study as a whole
has enough trials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm.auto import tqdm

from automl_tl.augmentation import NO_AUGMENTATION
from automl_tl.backbone import Backbone
from automl_tl.config import SearchConfig, TrialConfig, check_storage_url
from automl_tl.data.bundle import VALIDATION_CROSS, VALIDATION_HOLDOUT, DatasetBundle, Split
from automl_tl.data.pool import UnlabelledPool
from automl_tl.data.source import load_data_source
from automl_tl.errors import AutomlTLError, ConfigError
from automl_tl.files import exclusive_lock, write_json_atomic
from automl_tl.layout import (
    BEST_MODEL_DIR,
    BEST_MODEL_LOCK,
    CONFIG_FILE,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
)
from automl_tl.metrics import all_metrics, default_metric, metric_value, uses_class_weights
from automl_tl.modalities.image import fine_tuning_side, native_side
from automl_tl.plugins import get_plugin_manager
from automl_tl.rank.ranking import rank_backbones, searchable_backbones, with_outcomes
from automl_tl.registry import get_registry
from automl_tl.results.calibration import (
    calibration_summary,
    classifies_every_row,
    fit_temperature,
    log_probabilities,
)
from automl_tl.results.concatenated import CONCATENATED_FEATURES, ConcatenatedModel, ConcatenatedPredictor
from automl_tl.results.ensemble import EnsemblePredictor, save_ensemble
from automl_tl.results.ensemble_selection import ENSEMBLE_ROUNDS
from automl_tl.results.loading import kept_model_dir, load_kept_model
from automl_tl.results.manifest import build_manifest
from automl_tl.results.model_card import write_model_card
from automl_tl.results.model_io import (
    Predictor,
    load_model_dir,
    read_model_config,
    repair_interrupted_save,
    save_model,
)
from automl_tl.results.report import (
    DATA_SUMMARY_ATTR,
    ENSEMBLE_ATTR,
    SELF_TRAINING_ATTR,
    TEST_EVALUATION_ATTR,
    TRANSFERABILITY_ATTR,
    best_accuracy_by_backbone,
    leaderboard,
    write_leaderboard,
    write_skipped,
    write_summary,
    write_transferability,
)
from automl_tl.search.best_model import rank_key, saved_best, saved_best_accuracy, saved_best_config
from automl_tl.search.concatenation import (
    CONCATENATED_BACKBONES,
    CONCATENATED_PROBE_NAME,
    ConcatenatedProbe,
    estimated_seconds,
    fit_concatenated_probe,
    joinable,
    refit_on_train_and_val,
)
from automl_tl.search.ensembling import (
    Candidate,
    choose_ensemble,
    ensemble_candidates,
    read_trial_predictions,
    validation_probabilities,
    write_trial_predictions,
)
from automl_tl.search.liveness import (
    OPTUNA_HEARTBEAT,
    Heartbeat,
    InterruptionBlindPruner,
    recover_dead_trials,
    rename_waiting_trials,
    trial_slot,
)
from automl_tl.search.ray_trials import RaySettings, run_ray_workers
from automl_tl.search.sampling import SlotSeededSampler
from automl_tl.search.self_training import (
    PSEUDO_LABEL_PRECISION,
    Threshold,
    choose_threshold,
    cross_validated_self_training,
    fit_head,
    pseudo_labels,
)
from automl_tl.search.space import SearchSpace, common_augmentations, suggest_trial_config, warm_start_params
from automl_tl.search.workers import run_local_workers
from automl_tl.storage import inspect_journal, journal_path, open_storage
from automl_tl.strategies import (
    FROZEN_BODY_STRATEGIES,
    current_names,
    describe_parameters,
    get_strategy,
    used_parameters,
)
from automl_tl.train.device import DeadlineReached, frozen_heap
from automl_tl.train.embedding_heads import cross_validation_folds
from automl_tl.train.executor import (
    FITTED_ON_TRAIN_AND_VAL,
    STOP_CALLBACK,
    STOP_OVER_BUDGET,
    STOP_TIME,
    VALIDATED_BY_CROSS_VALIDATION,
    Executor,
    StrategyNotApplicable,
    TrialResult,
    epoch_record,
    predict_logits,
)
from automl_tl.train.feature_cache import FeatureCache

logger = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = (optuna.trial.TrialState.RUNNING,)
# A study attribute is one JSON text (64 KiB at most in MySQL): the test evaluation keeps the confusion
# matrix up to this many classes, and the per-class rows up to the second number.
MAX_CONFUSION_CLASSES = 50
MAX_PER_CLASS_ROWS = 200
#: study attribute: the warm-start trials' parameters, in order (the sampler gives them to the first slots)
WARM_START_PARAMS_ATTR = "warm_start_params"
#: what the budget keeps back, beyond the measured estimates, for writing the results once trials stop: this
#: many seconds, or this share of a smaller budget
SAVE_MARGIN_SECONDS = 5.0
SAVE_MARGIN_FRACTION = 0.05
#: the time kept back for a refit is its estimate times this: estimates from one trial's epochs are rough, and a
#: refit that finds a few seconds too few is skipped
REFIT_RESERVE_FACTOR = 1.25
#: a refit validates nothing, so it is checked on what it can be: its last epoch's training loss must not end above
#: this multiple of its trial's at the best epoch, plus the margin (it learns the same data and a little more, by
#: the same recipe; a fine-tune that diverged at its learning rate ends far above, near a constant guess's loss)
REFIT_LOSS_FACTOR = 1.5
REFIT_LOSS_MARGIN = 0.05
#: seconds counted for writing each ensemble member (its whole model: body and head)
ENSEMBLE_SAVE_SECONDS = 1.0
#: the fewest validation predictions a temperature is fitted on
MIN_CALIBRATION_ROWS = 20
#: the members the ensemble's reserve is counted for (the budget keeps back their rebuilding and testing)
ENSEMBLE_RESERVE_MEMBERS = 4


#: how a pruned trial's reason starts when its strategy had nothing to train in its backbone (never run)
NOT_APPLICABLE = "not applicable: "
#: a failed trial's reason when the time for it ran out before it had a model
BUDGET_RAN_OUT = "the time budget ran out before the first epoch finished"


class TrialFailed(Exception):
    """A trial raised; the search records it as failed and goes on."""


@dataclass
class SearchOutcome:
    """What a search leaves behind (everything is also on disk in ``run_dir``)."""

    run_dir: Path
    study: optuna.Study
    leaderboard: pd.DataFrame
    best_trial: int
    best_params: dict[str, Any]
    best_val_accuracy: float
    test_metrics: dict[str, float] | None  # None when the data have no test part
    transferability: dict[str, Any] | None = None  # the ranking and each score's Kendall tau; None without pre-ranking
    predictor: Predictor | None = None  # the saved best model, loaded (as ``automl_tl.load(run_dir)`` would)


def _make_sampler_and_pruner(
    config: SearchConfig,
    warm_starts: list[dict[str, Any]] | None = None,
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    # A few random trials first, then TPE; fewer than Optuna's default 10 because our budgets are small.
    # Warm-start trials already spread the first trials over the backbones, so they stand in for most of
    # the random ones (TPE counts them as startup trials too): two random trials follow them.
    warm_starts = warm_starts or []
    startup = max(2, min(10, (config.n_trials or 30) // 3))
    if warm_starts:
        startup = min(startup, len(warm_starts) + 2)
    if config.sampler == "random":

        def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.RandomSampler(seed=seed)
    else:

        def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)

    # seeded per trial: a resumed or shared study draws what an uninterrupted one would have
    sampler = SlotSeededSampler(make_sampler, config.seed, warm_starts)
    if config.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=config.min_epochs, max_resource=config.max_epochs, reduction_factor=3
        )
    elif config.pruner == "successive_halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_epochs, reduction_factor=3)
    else:
        pruner = optuna.pruners.NopPruner()
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        return sampler, pruner  # unwrapped: samplers look for it by type, to see one bracket's trials only
    return sampler, InterruptionBlindPruner(pruner)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created", "Trial 0 finished ...") off for a search: automl_tl logs one
    line per trial that says more, through :mod:`logging`. Optuna's warnings and errors still show; the
    caller's verbosity is given back after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class Search:
    """One study over the configured space; :meth:`run` optimises until the budget is spent."""

    def __init__(
        self,
        data: DatasetBundle,
        config: SearchConfig,
        run_dir: str | Path,
        executor: Executor | None = None,
        callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
        data_source: dict[str, Any] | None = None,
        pool: UnlabelledPool | None = None,
    ):
        """``callbacks`` are Optuna study callbacks run after each trial (one may call ``study.stop()``).

        ``pool``: unlabelled inputs for self-training after the search (see :meth:`_self_train`).

        A given ``executor`` brings its own feature cache; ``config.feature_cache`` applies to the default one.
        ``data_source`` says how to load ``data`` again (see :func:`automl_tl.data.source.load_data_source`);
        it is stored with the study so that other workers can join it.
        """
        self.data = data
        self.data_source = data_source
        self.pool = pool
        #: the pseudo-labelled rows the kept model learnt from, when self-training was kept (the refit adds them)
        self._pseudo_labelled: Split | None = None
        self.callbacks = list(callbacks or [])
        self.config = config
        self.run_dir = Path(run_dir)
        self.executor = executor or Executor(feature_cache=FeatureCache(enabled=config.feature_cache))
        self.backbones: dict[str, Backbone] = {
            b.name: b for b in get_registry().resolve_backbones(config.backbones, modality=data.modality)
        }
        wrong = [b.name for b in self.backbones.values() if b.modality != data.modality]
        if wrong:
            raise ConfigError(f"backbone(s) {', '.join(wrong)} are not for {data.modality} data")
        for backbone in self.backbones.values():
            backbone.check_weights_reachable()  # hub weights offline: refused now, not after a minute of retries
        self.ranking: pd.DataFrame | None = None
        self.space: SearchSpace | None = None
        self._results: dict[int, TrialResult] = {}
        self._deadline: float | None = None
        self._attempts_left: float = 0  # trials this process may still start in this run
        #: measured seconds per example of each backbone's whole model in evaluation (test evaluation's cost)
        self._inference_cost: dict[str, float] = {}
        #: (backbone, seconds) of each frozen-body trial this process ran: what the ensemble's reserve is measured on
        self._frozen_trials: list[tuple[str, float]] = []
        #: the training images' median shorter side (0: unreadable), read once (see _fine_tuning_image_sizes)
        self._native_image_side: int | None = None
        self._logged_fine_tuning_sizes = False

    def prepare(self) -> SearchSpace:
        """Rank the backbones by transferability (unless ``prerank`` is off), keep the ``top_k``, and fix the space.

        The pre-ranking keeps within its share of the time left before ``self._deadline`` (set by
        :meth:`start_clock`, which :meth:`run` calls first); a backbone it could not rank in time is not searched.
        """
        candidates = list(self.backbones)
        if self.config.prerank:
            started = time.perf_counter()
            self.ranking = rank_backbones(
                list(self.backbones.values()),
                self.data,
                self.executor,
                self.config.input_options,
                deadline=self._deadline,
                seed=self.config.seed,
            )
            candidates = searchable_backbones(self.ranking)[: self.config.top_k]  # top_k None: every one
            for row in self.ranking.dropna(subset=["seconds_per_example"]).itertuples():
                self._inference_cost[row.backbone] = float(row.seconds_per_example)  # what testing a model costs
            logger.info(
                "pre-ranked %d of %d backbone(s) in %.1fs; searching %s",
                self.ranking["rank"].notna().sum(),
                len(self.backbones),
                time.perf_counter() - started,
                ", ".join(candidates),
            )
        self.space = self._space_for(candidates)
        return self.space

    def _space_for(self, candidates: list[str]) -> SearchSpace:
        """The space over ``candidates``, scored by the metric the data call for (see :mod:`automl_tl.metrics`)."""
        max_groups = max(self.backbones[name].build(2, pretrained=False).num_groups for name in candidates)
        labels, num_classes = self.data.train.labels, len(self.data.classes)
        metric = self.config.metric or default_metric(labels, num_classes)
        weighted = uses_class_weights(metric, labels, num_classes)
        if self.config.metric is None and metric != "accuracy":
            logger.info(
                "the classes are imbalanced (the largest has 3 or more times the examples of the smallest): "
                "trials are selected by %s%s",
                metric,
                ", with a class-weighted loss" if weighted else "",
            )
        augmentations = common_augmentations([self.backbones[name].augmentations for name in candidates])
        space = SearchSpace.from_config(
            self.config,
            candidates,
            max_groups,
            self.data.modality,
            validation=self.data.validation,
            metric=metric,
            class_weighted=weighted,
            augmentations=augmentations,
        )
        return replace(space, fine_tuning_image_sizes=self._fine_tuning_image_sizes(space))

    def _fine_tuning_image_sizes(self, space: SearchSpace) -> dict[str, int]:
        """The image side of each backbone's trials that train the body, where the images are much smaller than
        its pretrained input (see :func:`~automl_tl.modalities.image.fine_tuning_side`); none when the user
        chose the image size, the data are not images, or no strategy of ``space`` trains the body."""
        if (
            self.data.modality != "image"
            or self.config.input_options.image_size is not None
            or all(get_strategy(s).frozen_body for s in space.strategies)
        ):
            return {}
        if self._native_image_side is None:
            self._native_image_side = native_side(self.data.train.inputs) or 0
        sizes = {}
        for name in space.backbones:
            pretrained = getattr(self.backbones[name].preprocessor(self.config.input_options), "size", None)
            side = fine_tuning_side(self._native_image_side or None, pretrained) if pretrained else None
            if side is not None:
                sizes[name] = side
        if sizes and not self._logged_fine_tuning_sizes:
            self._logged_fine_tuning_sizes = True
            logger.info(
                "the images are small (median shorter side %d px): trials that train the body train at %s, "
                "frozen-body ones at the backbones' pretrained sizes",
                self._native_image_side,
                ", ".join(f"{side} px ({name})" for name, side in sizes.items()),
            )
        return sizes

    def _space_as_stored(self, space: SearchSpace, stored_space: dict[str, Any]) -> SearchSpace:
        """``space`` as a study made by an earlier version stored it, so that such a study resumes as it was
        made: without small images' own fine-tuning sizes where its stored space holds none, and without
        augmentation where it was made before augmentation was searched and the user did not ask for any."""
        if "fine_tuning_image_sizes" not in stored_space and space.fine_tuning_image_sizes:
            # made before small images were fine-tuned at their own size: its trials go on at the pretrained size
            space = replace(space, fine_tuning_image_sizes={})
        if "augmentations" in stored_space or self.config.augmentation is not None or not space.draws_augmentation:
            return space
        logger.info("the study was made before augmentation was searched: it goes on without augmentation")
        return replace(space, augmentations=(NO_AUGMENTATION,))

    def _keeps_stored_backbones(self, stored_space: dict[str, Any]) -> bool:
        """Whether a resumed study goes on with the backbones it was made with, although this run's pre-ranking
        chose others (which backbones it ranks in time depends on the time left and on what is cached: with a
        larger ``--timeout``, more fit); ``self.space`` then becomes the stored space."""
        stored = list(stored_space.get("backbones") or [])
        if self.ranking is None or not stored or not set(stored) <= set(self.backbones):
            return False
        space = self._space_as_stored(self._space_for(stored), stored_space)
        if space.to_dict() != stored_space:
            return False
        logger.info(
            "resuming with the study's backbones %s (this run's pre-ranking chose %s)",
            ", ".join(stored),
            ", ".join(self.space.backbones),
        )
        self.space = space
        return True

    # ------------------------------------------------------------ the study

    def _data_summary(self) -> dict[str, Any]:
        """The data's summary as the study keeps it (the classes are an attribute of their own)."""
        return {k: v for k, v in self.data.summary().items() if k != "classes"}

    def _other_data_message(self, study: optuna.Study, stored_fingerprint: str) -> str:
        """Why the study is not resumed on these data: the fingerprint covers the split as well as the data, so the
        same file split another way (another seed or fraction: the command line holds out no test part under
        2,000 examples, ``prepare_dataset`` 15 %) is refused too, with the split's sizes then and now."""
        stored = study.user_attrs.get(DATA_SUMMARY_ATTR) or {}

        def sizes(summary: dict[str, Any]) -> str:
            return f"{summary.get('train')} train / {summary.get('val')} validation / {summary.get('test')} test"

        then = f": then {sizes(stored)}, now {sizes(self.data.summary())}" if "train" in stored else ""
        return (
            f"study {self.config.study_name!r} in {self.run_dir} was made for other data, or for the same data "
            f"split another way (fingerprint {stored_fingerprint}, now {self.data.fingerprint}{then}), as the "
            "fingerprint covers the inputs, labels and split (seed, --val-size, --test-size, groups; val_fraction, "
            "test_fraction in Python): split as the study was, or use another --output or --study-name to start "
            "a new search"
        )

    def open_study(self) -> optuna.Study:
        """Create the study, or load it and check it was made for the same data and space."""
        journal = journal_path(self.config.storage, self.run_dir)
        # A storage that cannot be used is refused before anything is written or computed: a journal is
        # inspected (it is opened, and a torn record cut, only below), a database opened at once (a server
        # down, a file that is no database).
        storage = None
        if journal is not None:
            inspect_journal(journal)
            if self.config.storage is not None and not journal.parent.is_dir():  # (the run directory is made below)
                raise ConfigError(
                    f"cannot open the study journal {journal}: No such file or directory (the folder "
                    f"{journal.parent} is not there)"
                )
        else:
            storage = open_storage(self.config.storage, self.run_dir, heartbeat=OPTUNA_HEARTBEAT)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / ".write-test").touch()
            (self.run_dir / ".write-test").unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write to output directory {self.run_dir}: {exc.strerror}") from None
        if self.space is None:
            self.prepare()
        if storage is None:
            storage = open_storage(self.config.storage, self.run_dir, heartbeat=OPTUNA_HEARTBEAT)
        try:  # load first, create only if missing: a refused resume must not even append to the journal
            study = optuna.load_study(study_name=self.config.study_name, storage=storage)
        except KeyError:
            study = optuna.create_study(
                storage=storage, study_name=self.config.study_name, direction="maximize", load_if_exists=True
            )
        # (A worker joining has no ranking of its own: it takes the warm starts the study's maker stored.)
        warm_starts = [] if self.ranking is None else warm_start_params(self.ranking, self.space)
        warm_starts = warm_starts[: self.config.n_trials] if self.config.n_trials else warm_starts
        # the sampler starts as the study's maker set it up, whichever process this is (and whichever version
        # made the study: what an earlier one stored is read under today's names)
        stored_warm_starts = study.user_attrs.get(WARM_START_PARAMS_ATTR)
        study.sampler, study.pruner = _make_sampler_and_pruner(
            self.config,
            warm_starts if stored_warm_starts is None else [current_names(params) for params in stored_warm_starts],
        )
        stored_data = study.user_attrs.get("data_fingerprint")
        stored_space = study.user_attrs.get("search_space")
        stored_space = None if stored_space is None else current_names(stored_space)
        if stored_space is not None:
            self.space = self._space_as_stored(self.space, stored_space)
        if stored_data is None:
            study.set_user_attr("data_fingerprint", self.data.fingerprint)
            study.set_user_attr("search_space", self.space.to_dict())
            study.set_user_attr("classes", [str(c) for c in self.data.classes])
            # (the split's sizes, for a refusal to resume on another split; the end of the search rewrites it)
            study.set_user_attr(DATA_SUMMARY_ATTR, self._data_summary())
            # What a worker elsewhere needs to join: the settings, the data's source, where the run lives.
            study.set_user_attr("search_config", self.config.to_dict())
            study.set_user_attr("data_source", self.data_source)
            study.set_user_attr("run_dir", str(self.run_dir.resolve()))
            study.set_user_attr("warm_starts", len(warm_starts))
            study.set_user_attr(WARM_START_PARAMS_ATTR, warm_starts)
        elif stored_data != self.data.fingerprint:
            raise ConfigError(self._other_data_message(study, stored_data))
        elif stored_space != self.space.to_dict() and not self._keeps_stored_backbones(stored_space):
            changed = sorted(k for k in self.space.to_dict() if stored_space.get(k) != self.space.to_dict()[k])
            raise ConfigError(
                f"study {self.config.study_name!r} in {self.run_dir} was made with another search space "
                f"(different {', '.join(changed)}); rerun with the original options to continue it, "
                "or use another --output or --study-name to start a new search"
            )
        rename_waiting_trials(study)
        if self.ranking is not None and TRANSFERABILITY_ATTR not in study.user_attrs:
            # kept with the study, so that the report can be rebuilt from the storage alone
            study.set_user_attr(TRANSFERABILITY_ATTR, {"scores": _json_records(self.ranking)})
        write_skipped(self.run_dir, self.data.skipped)  # now, so that it is there even if the search fails later
        return study

    def run(self, workers: int = 1, started: float | None = None, ray: RaySettings | None = None) -> SearchOutcome:
        """Optimise until ``n_trials`` trials have finished (counting earlier runs) or the timeout passes.

        The timeout covers the whole run from ``started`` (default: now; see :meth:`start_clock`), pre-ranking,
        refit and test evaluation included. With ``workers`` > 1, that many worker
        processes share the study (see :func:`automl_tl.search.workers.run_local_workers`); this process
        prepares the study, waits for them, and writes the results. With ``ray``, the trials run on Ray,
        ``workers`` at once (see :mod:`automl_tl.search.ray_trials`).
        """
        self.start_clock(started)
        with quiet_optuna(), frozen_heap():
            self.announce_start()  # before pre-ranking: a tracker that cannot start refuses at once
            study = self.open_study()
            time_left = None if self._deadline is None else self._deadline - time.monotonic()
            if ray is not None:
                run_ray_workers(self, study, workers, time_left, ray, prepare_worker)
            elif workers > 1:
                run_local_workers(self, workers, time_left)
            else:
                self.optimize(study)
            return self._finish(study)

    def start_clock(self, started: float | None = None) -> None:
        """Start the search's wall-clock budget (``config.timeout``) at ``started`` (a ``time.monotonic()``
        value: when the command began, so that reading the data counts too), or now."""
        started = time.monotonic() if started is None else started
        self._deadline = started + self.config.timeout if self.config.timeout else None

    def announce_start(self) -> None:
        """Tell observer plugins that this process is about to run trials of the study."""
        get_plugin_manager().hook.search_started(
            run_dir=self.run_dir, study_name=self.config.study_name, config=self.config
        )

    def optimize(self, study: optuna.Study) -> None:
        """Run trials in this process until the study has ``n_trials`` finished (or running) trials, this
        process has started as many as were missing when it began, or the time left for trials runs out (the
        budget less what testing and refitting the best model will take: see :meth:`time_for_trials`).

        Trials of dead workers are recovered first, and again after every trial.
        """
        if self.begin_trials(study):
            self.run_trials(study)

    def begin_trials(self, study: optuna.Study) -> bool:
        """Get ready to run trials of ``study`` in this process: recover the trials of dead workers and count
        how many this process may start (as many as are missing now; failed ones count too, so that a search
        that keeps failing ends). Returns whether it should start any."""
        recover_dead_trials(study)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        remaining = math.inf if self.config.n_trials is None else self.config.n_trials - finished
        if finished:
            logger.info(
                "resuming study %r: %d trial(s) already finished, %s to go",
                self.config.study_name,
                finished,
                "as many as the time allows" if remaining == math.inf else max(remaining, 0),
            )
        self._attempts_left = remaining
        return self.wants_trials(study)

    def wants_trials(self, study: optuna.Study) -> bool:
        """Whether this process should start another trial (see :meth:`optimize` for when it stops)."""
        return not (self._enough(study) or self._out_of_time())

    def run_trials(self, study: optuna.Study, max_trials: int | None = None) -> bool:
        """Run trials (at most ``max_trials``) until :meth:`wants_trials` says no; call :meth:`begin_trials`
        first. Returns whether this process should start more."""
        if not self.wants_trials(study):
            return False
        time_left = None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)
        remaining = self._attempts_left if max_trials is None else min(self._attempts_left, max_trials)
        progress = tqdm(
            total=None if remaining == math.inf else remaining,
            desc="trials",
            unit="trial",
            disable=not self.executor.show_progress,
        )
        try:
            with frozen_heap():  # (a worker's trials too: it calls optimize() without run())
                study.optimize(
                    self._objective,
                    n_trials=max_trials,
                    timeout=time_left,
                    catch=(TrialFailed,),
                    callbacks=[
                        self._after_trial,
                        lambda *_: progress.update(),
                        self._stop_when_enough,
                        *self.callbacks,
                    ],
                )
        finally:
            progress.close()
            write_leaderboard(leaderboard(study), self.run_dir)  # even when interrupted: nothing finished is lost
        return self.wants_trials(study)

    def _enough(self, study: optuna.Study) -> bool:
        """Whether this process should start no more trials: the study's finished and running trials
        (other workers' included) reach ``n_trials``, or this process used up its attempts."""
        if self._attempts_left <= 0:
            return True
        if self.config.n_trials is None:
            return False
        counted = len(study.get_trials(deepcopy=False, states=FINISHED + RUNNING))
        return counted >= self.config.n_trials

    def _stop_when_enough(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._attempts_left -= 1
        recover_dead_trials(study)
        if self._enough(study) or self._out_of_time():
            study.stop()

    def time_for_trials(self) -> float | None:
        """Seconds left for trials: the budget less the estimated cost of what follows them (None: no budget)."""
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic() - self.finish_reserve()

    def _out_of_time(self) -> bool:
        """Whether the time left for trials is too short to start one (under :meth:`_save_margin`: a trial
        begun with seconds to spare would stop before its first epoch)."""
        left = self.time_for_trials()
        return left is not None and left < self._save_margin()

    def finish_reserve(self) -> float:
        """Seconds kept back from trials for what follows them, measured on the best model so far: testing it
        (its backbone's measured inference cost per example), refitting it on training + validation (its
        trial's epochs, scaled to the larger data), self-training (:meth:`_self_training_reserve`), the ensemble
        (:meth:`_ensemble_reserve`), and a margin for writing the results (:meth:`_save_margin`)."""
        config = saved_best_config(self.run_dir)
        if config is None:
            return self._save_margin()
        backbone = config.get("trial_config", {}).get("backbone")
        testing = self._inference_cost.get(backbone, 0.0) * len(self.data.test)
        refit = REFIT_RESERVE_FACTOR * self._refit_estimate(config)
        return testing + refit + self._self_training_reserve(config) + self._ensemble_reserve() + self._save_margin()

    def _self_training_reserve(self, config: dict[str, Any]) -> float:
        """Seconds kept back for self-training the saved model ``config`` (see :meth:`_self_train`) when it is a
        frozen-body one that can be self-trained: its backbone's features of the pool (measured cost per
        example) and its fit again, scaled to the pool's rows (a cross-validated model: its folds twice, without
        and with the pseudo-labelled rows, and its final fit; see :meth:`_self_training_estimate`). A fine-tuned
        model gets nothing kept back: it is self-trained only when its measured cost fits what is left."""
        strategy = config.get("trial_config", {}).get("strategy")
        cross_validated = config.get("validation") == VALIDATED_BY_CROSS_VALIDATION
        if (
            self.pool is None
            or not len(self.pool)
            or not self.config.self_training
            or config.get("self_trained")
            or strategy not in FROZEN_BODY_STRATEGIES
            or (
                not cross_validated
                and (config.get("fitted_on") == FITTED_ON_TRAIN_AND_VAL or self.data.validation != VALIDATION_HOLDOUT)
            )
        ):
            return 0.0
        features = self._inference_cost.get(config["trial_config"]["backbone"], 0.0) * len(self.pool)
        return features + self._self_training_estimate(config)

    def _self_training_estimate(self, config: dict[str, Any]) -> float:
        """Seconds the fits of self-training the saved model ``config`` take, from its trial's measured fit:
        once more with the pool's rows added (scaled to them); a cross-validated model's trial fitted its folds
        and then all its rows, and self-training fits the folds without and with the pool, then all with it,
        which is at most the trial's fit unscaled plus once more scaled."""
        fitted = float(config.get("fit_seconds") or 0.0)
        labelled = self._labelled_rows() if config.get("validation") == VALIDATED_BY_CROSS_VALIDATION else None
        rows = len(self.data.train) if labelled is None else len(labelled)
        growth = (rows + len(self.pool or ())) / max(rows, 1)
        return fitted * growth + (0.0 if labelled is None else fitted)

    def _labelled_rows(self) -> Split:
        """Every labelled row a cross-validated trial was scored on out of fold, in the order of its
        out-of-fold predictions: training + validation, or with few shots the training split (the validation
        split being the same rows)."""
        return self.data.train if self.data.validation == VALIDATION_CROSS else self.data.train_and_val()

    def _ensemble_reserve(self) -> float:
        """Seconds kept back for the ensemble, measured on this run's frozen-body trials: rebuilding
        :data:`ENSEMBLE_RESERVE_MEMBERS` of them (their mean cost each), saving them, and their backbones'
        features of the test split (the pre-ranking's measured cost per example)."""
        if not self.config.ensemble or not self._frozen_trials:
            return 0.0
        seconds = [s for _, s in self._frozen_trials]
        rebuild = sum(seconds) / len(seconds) * ENSEMBLE_RESERVE_MEMBERS
        testing = self._test_features_cost({name for name, _ in self._frozen_trials})
        return rebuild + ENSEMBLE_SAVE_SECONDS * ENSEMBLE_RESERVE_MEMBERS + testing + self._concatenated_reserve()

    def _concatenated_reserve(self) -> float:
        """Seconds kept back for the concatenated-feature probe: fitting it, and refitting it when kept, each
        about the sum of the mean frozen-body trial's seconds of the :data:`CONCATENATED_BACKBONES` backbones
        whose trials cost most (0 with fewer than two backbones: no probe)."""
        by_backbone: dict[str, list[float]] = {}
        for name, seconds in self._frozen_trials:
            by_backbone.setdefault(name, []).append(seconds)
        if len(by_backbone) < 2:
            return 0.0
        means = sorted((sum(s) / len(s) for s in by_backbone.values()), reverse=True)
        return 2 * sum(means[:CONCATENATED_BACKBONES])

    def _test_features_cost(self, backbones: set[str]) -> float:
        """Seconds the features of the test split would take on ``backbones`` (the pre-ranking's measured
        cost per example; 0 without pre-ranking)."""
        if self.ranking is None or "seconds_per_example" not in self.ranking:
            return 0.0
        costs = dict(zip(self.ranking["backbone"], pd.to_numeric(self.ranking["seconds_per_example"]).fillna(0.0)))
        return sum(float(costs.get(name, 0.0)) for name in backbones) * len(self.data.test)

    def _save_margin(self) -> float:
        return min(SAVE_MARGIN_SECONDS, SAVE_MARGIN_FRACTION * (self.config.timeout or math.inf))

    def _refit_estimate(self, config: dict[str, Any]) -> float:
        """Seconds a refit of the saved model ``config`` would take (0 when none is due)."""
        if not self._refit_due(config):
            return 0.0
        train = len(self._training_data().train)
        scale = (train + len(self.data.val)) / max(len(self.data.train), 1)
        return float(config.get("train_seconds_per_epoch") or 0.0) * (config.get("best_epoch") or 1) * scale

    def _refit_due(self, config: dict[str, Any]) -> bool:
        """Whether the saved model ``config`` is still to be refitted on training + validation."""
        return (
            self.config.refit
            and config.get("fitted_on") != FITTED_ON_TRAIN_AND_VAL
            and len(self.data.val) > 0
            and self.data.validation == VALIDATION_HOLDOUT
        )

    def _trial_deadline(self) -> float | None:
        """When the trial starting now must stop: the time for trials, or the trial's own budget if sooner."""
        left = self.time_for_trials()
        deadline = None if left is None else time.monotonic() + max(left, 0.0)
        if self.config.trial_timeout is not None:
            trial_deadline = time.monotonic() + self.config.trial_timeout
            deadline = trial_deadline if deadline is None else min(deadline, trial_deadline)
        return deadline

    # ------------------------------------------------------------ one trial

    def _objective(self, trial: optuna.Trial) -> float:
        # The slot, read afresh: the sampler recorded it after this Trial object cached its attributes.
        slot = trial_slot(trial.study, trial.study._storage.get_trial(trial._trial_id))
        config = suggest_trial_config(trial, self.space, self.config, slot=slot)
        backbone = self.backbones[config.backbone]

        def on_epoch(epoch: int, score: float) -> bool:
            if get_strategy(config.strategy).frozen_body:
                # A probe on cached features costs next to nothing: pruning it saves nothing, and its
                # many passes per epoch would set an unfair bar at each rung for the fine-tuning trials.
                # (A head fitted on the embeddings has one "epoch", and nothing left to save either.)
                return False
            trial.report(score, step=epoch)
            # After the last epoch there is nothing left to save by pruning: the trial is complete.
            return epoch < config.epochs and trial.should_prune()

        deadline = self._trial_deadline()
        try:
            # trial._trial_id: the storage's id of this trial (Optuna has no public accessor)
            with Heartbeat(trial.study._storage, trial._trial_id):
                result = self.executor.fit(config, backbone, self.data, on_epoch=on_epoch, deadline=deadline)
        except AutomlTLError:
            raise  # the user's problem (data, weights): stop the search with the message
        except StrategyNotApplicable as exc:  # (norm-only of a body without norms): nothing to learn by running it
            message = f"{NOT_APPLICABLE}{exc}"
            trial.set_user_attr("error", message)
            logger.info("trial %d %s", trial.number, message)
            raise optuna.TrialPruned(message) from exc
        except Exception as exc:  # anything else fails this trial only
            logger.warning(
                "trial %d failed: %s: %s",
                trial.number,
                type(exc).__name__,
                exc,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            self._results[trial.number] = TrialResult(
                config, [], "error", 0.0, 0.0, 0, error=str(exc), trial_number=trial.number
            )
            raise TrialFailed(str(exc)) from exc

        result.trial_number = trial.number
        self._results[trial.number] = result
        self._record(trial, result)
        if result.stop_reason == STOP_CALLBACK:
            result.release_model()
            raise optuna.TrialPruned(f"pruned after epoch {result.history[-1].epoch}")
        if result.stop_reason == STOP_OVER_BUDGET:
            # Measured, not guessed: the first batches showed the epoch would not end in time. Pruned, so the
            # sampler learns that this corner of the space does not pay within the budget.
            projected = result.extra.get("projected_epoch_seconds")
            tried = f" (also tried: {'; '.join(result.extra['adapted'])})" if result.extra.get("adapted") else ""
            message = (
                f"not run: one epoch would take about {projected:.0f}s, more than the "
                f"{max(deadline - time.monotonic(), 0):.0f}s left for trials{tried}"
            )
            trial.set_user_attr("error", message)
            logger.info("trial %d %s (%s %s)", trial.number, message, config.backbone, config.strategy)
            raise optuna.TrialPruned(message)
        if not result.has_model:
            # Failed, not pruned: a resumed search with more time should try this trial again.
            trial.set_user_attr("error", BUDGET_RAN_OUT)
            logger.info("trial %d stopped: %s", trial.number, BUDGET_RAN_OUT)
            raise TrialFailed(BUDGET_RAN_OUT)
        probabilities = validation_probabilities(result, self.data)
        if probabilities is not None:
            write_trial_predictions(self.run_dir, trial.number, probabilities)  # for the ensemble at the end
        self._keep_if_best(result)
        result.release_model()  # the weights are on disk if they were the best; free them now
        return result.best_score

    def _record(self, trial: optuna.Trial, result: TrialResult) -> None:
        best = result.best_record
        attrs = {
            "stop_reason": result.stop_reason,
            "seconds": round(result.seconds, 3),
            "fit_seconds": round(result.fit_seconds, 3),  # without computing features: what rebuilding it costs
            "cpu_seconds": round(result.cpu_seconds, 3),
            "samples_seen": result.samples_seen,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "val_accuracy_by_epoch": [round(r.val_accuracy, 5) for r in result.history],
            "batch_size_used": result.config.batch_size,
            "metric": result.config.metric,
            "trial_config": result.config.to_dict(),  # what an ensemble rebuilds the trial's model from
        }
        if best is not None:
            attrs.update(best_val_score=best.val_metrics.get(result.config.metric), best_val_loss=best.val_loss)
        for key in ("validation", "fitted_on", "oom_retry", "projected_epoch_seconds", "adapted", "weight_soup"):
            if key in result.extra:
                attrs[key] = result.extra[key]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if get_strategy(result.config.strategy).frozen_body and best is not None:
            # what an ensemble member costs: its fit again, on the features this trial left in the cache
            self._frozen_trials.append((result.config.backbone, result.fit_seconds))
        if not get_strategy(result.config.strategy).frozen_body and best is not None and len(self.data.val):
            # the whole model ran on the validation split: what testing it will cost per example
            self._inference_cost[result.config.backbone] = best.val_seconds / len(self.data.val)

    def _keep_if_best(self, result: TrialResult) -> None:
        """Save the trial's model as ``best_model`` if no better one is saved (atomic, under a lock)."""
        best = result.best_record
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            repair_interrupted_save(self.run_dir / BEST_MODEL_DIR)  # a worker killed while saving
            # Ties go to the lower validation loss, then the lower trial number, whichever worker finished first.
            saved = saved_best(self.run_dir)
            if saved is not None and saved >= rank_key(best.val_score, best.val_loss, result.trial_number):
                return
            backbone = self.backbones[result.config.backbone]
            self._save(
                result.final_model(),
                backbone,
                result.config,
                {
                    "trial": result.trial_number,
                    "val_accuracy": result.best_val_accuracy,
                    "val_score": best.val_score,
                    "val_loss": best.val_loss,
                    "val_metrics": best.val_metrics,
                    "validation": result.extra.get("validation", self.data.validation),
                    "fitted_on": result.extra.get("fitted_on", "train"),
                    "best_epoch": result.best_epoch,
                    "train_loss": _best_epoch_train_loss(result),  # what a refit's is checked against
                    "adapted": result.extra.get("adapted", []),  # what the budget changed in the trial's config
                    # the epochs whose weights were averaged (a greedy soup), when the model is one
                    "soup_epochs": result.extra.get("weight_soup", {}).get("ingredients"),
                    "fit_seconds": round(result.fit_seconds, 3),  # what fitting it again costs (self-training)
                    "train_seconds_per_epoch": (
                        sum(r.train_seconds for r in result.history) / len(result.history)
                        if not get_strategy(result.config.strategy).frozen_body
                        else 0.0
                    ),
                },
            )
            logger.info(
                "trial %d is the best so far (validation %s %.4f): saved to %s",
                result.trial_number,
                result.config.metric,
                best.val_metrics[result.config.metric],
                self.run_dir / BEST_MODEL_DIR,
            )

    def _save(self, model, backbone: Backbone, config: TrialConfig, details: dict[str, Any]) -> None:
        """Write ``model`` as ``best_model`` with its config (see :meth:`_model_config`)."""
        save_model(model, self.run_dir / BEST_MODEL_DIR, self._model_config(backbone, config, details))

    def _model_config(self, backbone: Backbone, config: TrialConfig, details: dict[str, Any]) -> dict[str, Any]:
        """A saved model's config: what it is, how to feed it, and ``details`` (the trial, its figures)."""
        preprocessor = backbone.preprocessor(config.input_options)
        return {
            "backbone": backbone.describe(),
            "head": config.head.to_dict(),
            "classes": self.data.classes,
            "input_column": self.data.input_column,
            "label_column": self.data.label_column,
            "input_options": config.to_dict()["input_options"],
            "preprocessing": preprocessor.describe(),
            "trial_config": config.to_dict(),
            "metric": config.metric,
            "data_fingerprint": self.data.fingerprint,
            **details,
        }

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        result = self._results.pop(trial.number, None)
        if result is None:
            return
        result.state = trial.state.name
        result.error = trial.user_attrs.get("error")
        best = result.best_record
        config = result.config
        logger.info(
            "trial %d %s: %s %s %s epochs run=%d -> val %s=%s (%.1fs)",
            trial.number,
            result.state.lower(),
            config.backbone,
            config.strategy,
            describe_parameters(trial.params),
            len(result.history),
            config.metric,
            "n/a" if best is None else f"{best.val_metrics[config.metric]:.4f}",
            result.seconds,
        )
        get_plugin_manager().hook.trial_finished(result=result)

    # ------------------------------------------------------------ the end

    def _finish(self, study: optuna.Study) -> SearchOutcome:
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            repair_interrupted_save(self.run_dir / BEST_MODEL_DIR)
        board = leaderboard(study)
        write_leaderboard(board, self.run_dir)
        study.set_user_attr(DATA_SUMMARY_ATTR, self._data_summary())
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete or saved_best_accuracy(self.run_dir) is None:
            self._write_report(study)  # what there is: the trials, their failures
            raise AutomlTLError(self._why_nothing_finished(study))
        try:
            self_training = self._self_train()
        except Exception as exc:  # (out of memory, say): the search's results are written all the same
            logger.warning(
                "self-training failed: %s: %s", type(exc).__name__, exc, exc_info=logger.isEnabledFor(logging.DEBUG)
            )
            self_training = {
                **self.pool.summary(),
                "kept": False,
                "reason": f"failed: {type(exc).__name__}: {_shortened(str(exc), 200)}",
            }
        if self_training is not None:
            study.set_user_attr(SELF_TRAINING_ATTR, self_training)  # the report reads it from the study
        refit_note = self._refit_best()
        ensemble, chosen_on = self._ensemble(study)
        study.set_user_attr(ENSEMBLE_ATTR, ensemble)  # the report reads it from the study
        calibration = self._calibrate(study, chosen_on)
        predictor = load_kept_model(kept_model_dir(self.run_dir), self.executor.device)
        saved = read_model_config(self.run_dir / BEST_MODEL_DIR)  # the best single model (the ensemble's anchor)
        best_trial = saved["trial"]
        evaluation, test_note = self._test_evaluation(predictor)
        if evaluation is not None:
            evaluation.update(trial=best_trial, val_accuracy=saved["val_accuracy"])
            study.set_user_attr(TEST_EVALUATION_ATTR, evaluation)  # the report reads it from the study
        test_metrics = None if evaluation is None else evaluation["metrics"]
        metric = saved.get("metric", "accuracy")
        validation_metrics = {
            **saved.get("val_metrics", {}),
            "examples": len(self.data.val),
            "validated_by": saved.get("validation", self.data.validation),
        }
        measured = {
            "trial": best_trial,
            "fitted_on": saved.get("fitted_on", "train"),
            "refit": refit_note,
            "test": test_note,
            "kept": _describe_kept(ensemble),
            "temperature": calibration["temperature"],
        }
        metrics_record = {
            "trial": best_trial,
            "metric": metric,
            "val_accuracy": saved["val_accuracy"],
            "validation": validation_metrics,
            "test": test_metrics,
            "model": measured,
        }
        # (beside the model measured: the test figures are the kept model's, the ensemble's when one is kept)
        for folder in dict.fromkeys((BEST_MODEL_DIR, kept_model_dir(self.run_dir).name)):
            write_json_atomic(self.run_dir / folder / METRICS_FILE, metrics_record)
        best_params = used_parameters(study.trials[best_trial].params)  # what the best model used
        states = board["state"].value_counts().to_dict()
        transferability = self._transferability(board)
        write_summary(
            self.run_dir,
            {
                "study": self.config.study_name,
                "best_trial": best_trial,
                "best_params": best_params,
                "metric": metric,
                "metric_chosen": "given" if self.config.metric else "default for the data",
                "class_weighted_loss": self.space.class_weighted,
                "val_accuracy": saved["val_accuracy"],
                "val_score": saved.get("val_metrics", {}).get(metric),
                "validation": validation_metrics,
                "test": test_metrics,
                "model": measured,
                "trials_by_state": states,
                "total_seconds": float(board["seconds"].fillna(0).sum()),
                "total_cpu_seconds": float(board["cpu_seconds"].fillna(0).sum()),
                "data": self.data.summary(),
                "transferability": transferability,
                "ensemble": ensemble,
                "calibration": calibration,
                **({} if self_training is None else {"self_training": self_training}),
            },
        )
        write_json_atomic(
            self.run_dir / MANIFEST_FILE,
            build_manifest(
                self.config, self.data, [self.backbones[name] for name in self.space.backbones], self.data_source
            ),
        )
        write_model_card(self.run_dir)  # from the files just written: MODEL_CARD.md
        self._write_report(study)
        test_accuracy = "n/a" if test_metrics is None else f"{test_metrics['accuracy']:.4f}"
        logger.info(
            "best trial %d: %s, validation %s %.4f, test accuracy %s (%s)",
            best_trial,
            best_params,
            metric,
            validation_metrics.get(metric, math.nan),
            test_accuracy,
            "the model learnt from training + validation"
            if saved.get("fitted_on") == FITTED_ON_TRAIN_AND_VAL
            else "the model learnt from the training split",
        )
        outcome = SearchOutcome(
            self.run_dir,
            study,
            board,
            best_trial,
            best_params,
            saved["val_accuracy"],
            test_metrics,
            transferability,
            predictor,
        )
        get_plugin_manager().hook.search_finished(outcome=outcome)
        return outcome

    def _why_nothing_finished(self, study: optuna.Study) -> str:
        """The one line that ends a search without a model: the failed trials' most common reason when they
        failed for one other than the budget (out of memory, say), else that the budget was too short."""
        trials = study.get_trials(deepcopy=False)
        failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
        # the first line of each reason: a traceback-like message counts once, however long
        reasons = Counter(
            (str(t.user_attrs.get("error") or "").strip() or "no reason recorded").splitlines()[0] for t in failed
        )
        where = f"the leaderboard is in {self.run_dir}"
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:  # finished, but no model here: a shared --storage given another --output, or one removed
            made_in = study.user_attrs.get("run_dir")
            if made_in and Path(made_in) != self.run_dir.resolve():
                saved = f"in {made_in}, the run directory the study was made in"
            else:
                saved = f"in {self.run_dir / BEST_MODEL_DIR}, which is no longer there"
            return (
                f"{len(complete)} trial(s) of the study finished, and their best model was saved {saved}; "
                f"use that --output, or another --study-name to start a new search in {self.run_dir}"
            )
        not_applicable = [str(t.user_attrs.get("error") or "") for t in trials]
        if trials and all(reason.startswith(NOT_APPLICABLE) for reason in not_applicable):
            return (
                f"no trial finished: the strategies asked for have nothing to train in the backbones searched "
                f"({_shortened(not_applicable[0][len(NOT_APPLICABLE) :], 200)}); choose other strategies or "
                f"backbones ({where})"
            )
        if reasons:
            reason, count = reasons.most_common(1)[0]
            if reason != BUDGET_RAN_OUT:  # a budget raised would not help a trial that fails on its own
                scope = (
                    f"all {len(trials)} trials failed"
                    if len(failed) == len(trials)
                    else f"{len(failed)} of {len(trials)} trials failed"
                )
                return (
                    f"no trial finished: {scope}, {count} of them with: {_shortened(reason, 300)}; "
                    f"{where} (its error column gives each trial's reason)"
                )
        return (
            f"no trial finished within the budget; {where}; raise --timeout or --trials and run the same "
            "command again to continue"
        )

    def _refit_best(self) -> str:
        """Train the best trial's configuration again on training + validation, for the epochs it ran best,
        if the budget allows (the measured estimate and the test evaluation must fit); the refitted model
        replaces ``best_model`` and keeps its trial's validation figures. Returns what was done, for the record."""
        config = saved_best_config(self.run_dir)
        if not self.config.refit:
            return "not asked for (--no-refit)"
        if config.get("fitted_on") == FITTED_ON_TRAIN_AND_VAL:
            return "none needed: the model was fitted on training + validation"
        if not self._refit_due(config):
            return "none: nothing held out for validation to learn from"
        estimate = self._refit_estimate(config)
        testing = self._inference_cost.get(config["trial_config"]["backbone"], 0.0) * len(self.data.test)
        if self._deadline is not None:
            left = self._deadline - time.monotonic() - testing - self._save_margin()
            if estimate > left:
                logger.info(
                    "no refit: it would take about %.0fs, and %.0fs of the budget are left", estimate, max(left, 0)
                )
                return f"skipped: it would take about {estimate:.0f}s, {max(left, 0):.0f}s of the budget were left"
        trial_config = TrialConfig.from_dict(config["trial_config"])
        epochs = config.get("best_epoch") or trial_config.epochs
        backbone = self.backbones[trial_config.backbone]
        started = time.perf_counter()
        deadline = None if self._deadline is None else self._deadline - testing - self._save_margin()
        result = self.executor.fit(
            replace(trial_config, epochs=epochs), backbone, self._training_data(), deadline=deadline, refit=True
        )
        seconds = time.perf_counter() - started
        if not result.has_model or result.stop_reason in (STOP_TIME, STOP_OVER_BUDGET):
            logger.info("refit stopped after %.0fs: the budget ran out; the trial's own model is kept", seconds)
            return f"stopped after {seconds:.0f}s: the budget ran out; the trial's model (training split) is kept"
        trial_loss, refit_loss = config.get("train_loss"), result.history[-1].train_loss if result.history else None
        if _refit_diverged(trial_loss, refit_loss):
            result.release_model()
            logger.warning(
                "refit not kept: its training loss ended at %.3f, far above its trial's %.3f (it diverged); "
                "the trial's own model is kept",
                refit_loss,
                trial_loss,
            )
            return (
                f"not kept: its training loss ended at {refit_loss:.3f}, far above its trial's {trial_loss:.3f} "
                "(it diverged); the trial's model (training split) is kept"
            )
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            details = _trial_details(config)
            self._save(
                result.final_model(),
                backbone,
                result.config,
                {
                    **details,
                    "fitted_on": FITTED_ON_TRAIN_AND_VAL,
                    "refit_seconds": round(seconds, 3),
                    "refit_epochs": epochs,
                    "soup_epochs": None,  # a refit averages nothing: it validates nothing to choose by
                },
            )
        result.release_model()
        pseudo = "" if self._pseudo_labelled is None else f" + {len(self._pseudo_labelled)} pseudo-labelled"
        logger.info(
            "refitted trial %d on training + validation%s (%d examples, %d epoch(s)) in %.1fs",
            config["trial"],
            pseudo,
            len(self._training_data().train) + len(self.data.val),
            epochs,
            seconds,
        )
        return f"refitted on training + validation{pseudo} ({epochs} epoch(s), {seconds:.0f}s)"

    def _training_data(self) -> DatasetBundle:
        """The data the kept model learns from: the pseudo-labelled rows join the training split once
        self-training was kept (see :meth:`_self_train`)."""
        if self._pseudo_labelled is None:
            return self.data
        return replace(self.data, train=Split.union("train+pseudo-labelled", self.data.train, self._pseudo_labelled))

    def _self_train(self) -> dict[str, Any] | None:
        """Self-training on the unlabelled pool, before the refit: the kept model predicts the pool, the rows
        above a confidence threshold chosen on validation (:func:`~automl_tl.search.self_training.choose_threshold`)
        join the training split with their predicted classes for one fit of the same configuration, and that
        model replaces ``best_model`` only if its validation score beats the kept model's (the refit then learns
        from the pseudo-labelled rows too). A kept model scored by cross-validation is checked fold by fold
        instead (see :meth:`_self_train_cross_validated`). Each step is begun only if its measured cost fits the
        time left before what follows (testing, refit, saving). Returns the record for the summary; None
        without a pool."""
        if self.pool is None or not len(self.pool):
            logger.debug("self-training: no unlabelled inputs")
            return None
        record: dict[str, Any] = self.pool.summary()
        started = time.monotonic()

        def done(reason: str, kept: bool = False) -> dict[str, Any]:
            record.update(kept=kept, reason=reason, seconds=round(time.monotonic() - started, 3))
            logger.info("self-training: %s: %s", "kept" if kept else "not kept", reason)
            return record

        if not self.config.self_training:
            return done("not asked for (--no-self-training)")
        saved = saved_best_config(self.run_dir)
        if saved.get("self_trained"):
            return done("none needed: the kept model was self-trained in an earlier run of this search")
        if saved.get("validation") == VALIDATED_BY_CROSS_VALIDATION:
            record["mode"] = "cross-validated"
            return self._self_train_cross_validated(saved, record, done)
        record["mode"] = "validation split"
        if (
            self.data.validation != VALIDATION_HOLDOUT
            or not len(self.data.val)
            or saved.get("fitted_on") == FITTED_ON_TRAIN_AND_VAL
        ):
            return done(
                "skipped: the kept model was not scored on a validation split it did not learn from, nor by "
                "cross-validation (nothing held out, or refitted on training + validation), which self-training "
                "is judged on"
            )
        metric = saved.get("metric", "accuracy")
        record.update(metric=metric, val_score_before=saved.get("val_metrics", {}).get(metric))
        trial_config = TrialConfig.from_dict(saved["trial_config"])
        backbone = self.backbones[trial_config.backbone]
        # what follows must still fit: testing the kept model, its refit (with every pool row, at most), saving
        testing = self._inference_cost.get(trial_config.backbone, 0.0) * len(self.data.test)
        growth = (len(self.data.train) + len(self.pool)) / max(len(self.data.train), 1)
        refit = REFIT_RESERVE_FACTOR * self._refit_estimate(saved) * growth
        deadline = None if self._deadline is None else self._deadline - testing - refit - self._save_margin()
        predictor = load_model_dir(self.run_dir / BEST_MODEL_DIR, self.executor.device)
        # its cost measured on validation first; a frozen body's validation features were cached, so the pool's
        # are counted at the body's measured cost per example (the pre-ranking's, or a fine-tuned trial's)
        try:
            measured = time.perf_counter()
            val_logits = self._member_logits(predictor, self.data.val, deadline)
            per_example = (time.perf_counter() - measured) / len(self.data.val)
        except DeadlineReached:
            return done("skipped: the budget ran out while the kept model predicted the validation split")
        if get_strategy(trial_config.strategy).frozen_body:
            per_example += self._inference_cost.get(trial_config.backbone, 0.0)
        estimate = per_example * len(self.pool) + float(saved.get("fit_seconds") or 0.0) * growth
        if deadline is not None and estimate > deadline - time.monotonic():
            left = max(deadline - time.monotonic(), 0.0)
            return done(
                f"skipped: predicting the {len(self.pool)} unlabelled inputs and fitting again would take "
                f"about {estimate:.0f}s, {left:.0f}s of the budget were left"
            )
        threshold = choose_threshold(torch.softmax(val_logits, 1).numpy(), self.data.val.labels)
        if threshold is None:
            return done("skipped: too few validation rows to choose a confidence threshold on")
        if not _record_threshold(record, threshold):
            return done(_threshold_not_reached(threshold, "on validation"))
        labelled_pool = self._pseudo_label_pool(predictor, threshold, deadline, record)
        del predictor
        if isinstance(labelled_pool, str):
            return done(labelled_pool)
        pool_split, rows, labels = labelled_pool
        pseudo = Split.subset("pseudo-labelled", pool_split, rows, labels)
        augmented = replace(self.data, train=Split.union("train+pseudo-labelled", self.data.train, pseudo))
        result = self.executor.fit(trial_config, backbone, augmented, deadline=deadline)
        best = result.best_record
        if best is None or not result.has_model or result.stop_reason in (STOP_TIME, STOP_OVER_BUDGET):
            result.release_model()
            return done("stopped: the budget ran out during the fit with the pseudo-labelled rows")
        if result.extra.get("adapted"):  # made cheaper to fit the budget: not the same configuration
            result.release_model()
            return done("stopped: the fit with the pseudo-labelled rows had to be cut down to fit the budget")
        record["val_score_after"] = best.val_metrics.get(metric)
        if not best.val_score > saved["val_score"]:
            result.release_model()
            return done(
                f"not better on validation ({metric} {record['val_score_after']:.4f} with the pseudo-labelled "
                f"rows, {record['val_score_before']:.4f} without): the model without them stays"
            )
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            self._save(
                result.final_model(),
                backbone,
                result.config,
                {
                    **_trial_details(saved),
                    "val_accuracy": best.val_accuracy,
                    "val_score": best.val_score,
                    "val_loss": best.val_loss,
                    "val_metrics": best.val_metrics,
                    "best_epoch": result.best_epoch,
                    "train_loss": _best_epoch_train_loss(result),
                    "soup_epochs": result.extra.get("weight_soup", {}).get("ingredients"),
                    "fit_seconds": round(result.fit_seconds, 3),
                    "self_trained": {"pseudo_labelled": len(rows), "threshold": record["threshold"]},
                },
            )
        result.release_model()
        # the kept model's own validation probabilities, for the ensemble's anchor and the calibration
        probabilities = validation_probabilities(result, augmented)
        if probabilities is not None:
            write_trial_predictions(self.run_dir, saved["trial"], probabilities)
        self._pseudo_labelled = pseudo
        return done(
            f"better on validation ({metric} {record['val_score_after']:.4f} with {len(rows)} pseudo-labelled "
            f"rows, {record['val_score_before']:.4f} without)",
            kept=True,
        )

    def _pseudo_label_pool(
        self, predictor: Predictor, threshold: Threshold, deadline: float | None, record: dict[str, Any]
    ) -> tuple[Split, np.ndarray, np.ndarray] | str:
        """The unlabelled pool as a split, and the rows of it the kept model (``predictor``) labels above
        ``threshold`` with those labels (their count goes into ``record``); or, when there are none, why."""
        pool_split = self.pool.split()
        try:
            pool_logits = self._member_logits(predictor, pool_split, deadline)
        except DeadlineReached:
            return "stopped: the budget ran out while the kept model predicted the unlabelled inputs"
        rows, labels = pseudo_labels(torch.softmax(pool_logits, 1).numpy(), threshold.value)
        record["pseudo_labelled"] = len(rows)
        if not len(rows):
            return "none: no unlabelled input is above the threshold"
        return pool_split, rows, labels

    def _self_train_cross_validated(
        self, saved: dict[str, Any], record: dict[str, Any], done: Callable[..., dict[str, Any]]
    ) -> dict[str, Any]:
        """Self-training a kept model scored by cross-validation (a frozen-body one, fitted on every labelled
        row): the threshold is chosen on its trial's out-of-fold predictions, the decision is taken by the same
        folds (:func:`~automl_tl.search.self_training.cross_validated_self_training`: each fold's pseudo-labels
        come from a fit that never saw its held-out rows), kept only if the folds' mean score improves; then
        the configuration is fitted on every labelled row + the rows the kept model pseudo-labelled, replaces
        ``best_model``, and its trial's out-of-fold predictions become the with-pseudo-labels folds'."""
        metric = saved.get("metric", "accuracy")
        record["metric"] = metric
        trial_config = TrialConfig.from_dict(saved["trial_config"])
        if not get_strategy(trial_config.strategy).frozen_body:
            return done("skipped: only a frozen-body model is self-trained by cross-validation")
        # the folds and the final fit run the epochs the trial chose (a probe's); the heads on embeddings, one
        fitted_config = replace(trial_config, epochs=saved.get("best_epoch") or trial_config.epochs)
        backbone = self.backbones[trial_config.backbone]
        labelled = self._labelled_rows()
        folds = cross_validation_folds(labelled.labels)
        if folds < 2:
            return done("skipped: some class has a single labelled row, so nothing can be cross-validated")
        record["folds"] = folds
        testing = self._inference_cost.get(trial_config.backbone, 0.0) * len(self.data.test)
        deadline = None if self._deadline is None else self._deadline - testing - self._save_margin()
        estimate = self._inference_cost.get(trial_config.backbone, 0.0) * len(self.pool) + (
            self._self_training_estimate(saved)
        )
        if deadline is not None and estimate > deadline - time.monotonic():
            left = max(deadline - time.monotonic(), 0.0)
            return done(
                f"skipped: predicting the {len(self.pool)} unlabelled inputs and fitting {folds} folds twice and "
                f"all rows once would take about {estimate:.0f}s, {left:.0f}s of the budget were left"
            )
        out_of_fold = read_trial_predictions(self.run_dir, saved["trial"], self.data)
        if out_of_fold is None or len(out_of_fold) != len(labelled):
            return done("skipped: the kept model's out-of-fold predictions are not on disk to choose a threshold on")
        threshold = choose_threshold(out_of_fold, labelled.labels)
        if threshold is None:
            return done("skipped: too few labelled rows to choose a confidence threshold on")
        if not _record_threshold(record, threshold):
            return done(_threshold_not_reached(threshold, "out of fold"))
        predictor = load_model_dir(self.run_dir / BEST_MODEL_DIR, self.executor.device)
        labelled_pool = self._pseudo_label_pool(predictor, threshold, deadline, record)
        del predictor
        if isinstance(labelled_pool, str):
            return done(labelled_pool)
        pool_split, rows, labels = labelled_pool
        try:
            checked = cross_validated_self_training(
                self.executor, fitted_config, backbone, self.data, labelled, pool_split, threshold.value, deadline
            )
        except DeadlineReached:
            return done("stopped: the budget ran out during the cross-validated fits")
        record.update(
            fold_pseudo_labelled=[fold.pseudo_labelled for fold in checked.folds],
            val_score_before=checked.mean_metric(metric, after=False),
            val_score_after=checked.mean_metric(metric, after=True),
        )
        scores = (
            f"{metric} {record['val_score_after']:.4f} with the pseudo-labelled rows, "
            f"{record['val_score_before']:.4f} without, mean of {folds} folds"
        )
        if not checked.score_after > checked.score_before:
            return done(f"not better by cross-validation ({scores}): the model without them stays")
        pseudo = Split.subset("pseudo-labelled", pool_split, rows, labels)
        try:
            result = fit_head(
                self.executor,
                fitted_config,
                backbone,
                self.data,
                Split.union("labelled+pseudo-labelled", labelled, pseudo),
                deadline,
            )
        except DeadlineReached:
            return done("stopped: the budget ran out during the fit on every labelled row with the pseudo-labels")
        validated = epoch_record(fitted_config.epochs, 0.0, checked.out_of_fold, labelled.labels, metric, 0.0, 0.0)
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            self._save(
                result.final_model(),
                backbone,
                trial_config,
                {
                    **_trial_details(saved),
                    "val_accuracy": validated.val_accuracy,
                    "val_score": validated.val_score,
                    "val_loss": validated.val_loss,
                    "val_metrics": validated.val_metrics,
                    "fit_seconds": round(result.fit_seconds, 3),
                    "self_trained": {
                        "pseudo_labelled": len(rows),
                        "threshold": record["threshold"],
                        "mode": "cross-validated",
                    },
                },
            )
        result.release_model()
        # its out-of-fold probabilities, for the ensemble's anchor and the calibration
        write_trial_predictions(self.run_dir, saved["trial"], torch.softmax(checked.out_of_fold, 1).numpy())
        self._pseudo_labelled = pseudo
        return done(f"better by cross-validation ({scores}; {len(rows)} pseudo-labelled rows)", kept=True)

    def _test_evaluation(self, predictor: Predictor) -> tuple[dict[str, Any] | None, str]:
        """The saved model on the test split, within the budget; and a note of what was done."""
        if not len(self.data.test):
            return None, "no test part held out (the validation estimate is the one reported)"
        try:
            evaluation = self._evaluation(predictor, self.data.test, self._deadline)
        except DeadlineReached:
            logger.info("the budget ran out before the test evaluation finished: no test metrics")
            return None, "not evaluated: the budget ran out first"
        return evaluation, "evaluated on the test split, which no model learnt from"

    def _logits_on(self, predictor: Predictor, split: Split, deadline: float | None) -> torch.Tensor:
        """The kept model's logits on ``split``; an ensemble's are the logarithms of its averaged probabilities.
        A frozen-body model (or member) is run on the cached features, the others on the encoded inputs."""
        members = predictor.members if isinstance(predictor, EnsemblePredictor) else [predictor]
        weights = predictor.weights if isinstance(predictor, EnsemblePredictor) else [1.0]
        if len(members) == 1:
            return self._member_logits(members[0], split, deadline)
        total = sum(w * torch.softmax(self._member_logits(m, split, deadline), 1) for w, m in zip(weights, members))
        return torch.log(total.clamp_min(1e-12))

    def _member_logits(self, predictor: Predictor, split: Split, deadline: float | None) -> torch.Tensor:
        if isinstance(predictor, ConcatenatedPredictor):  # one linear layer on its parts' features: logits add
            return sum(self._member_logits(part, split, deadline) for part in predictor.parts)
        trial_config = predictor.config.get("trial_config", {})
        strategy = trial_config.get("strategy")
        if strategy in FROZEN_BODY_STRATEGIES and predictor.backbone.name in self.backbones:
            options = TrialConfig.from_dict(trial_config).input_options
            features = self.executor.features(predictor.backbone, options, self.data, split, deadline=deadline)
            with torch.no_grad():
                head = predictor.model.head.eval()
                return head(torch.as_tensor(features, device=predictor.device)).float().cpu()
        items = self.executor.encoded(predictor.preprocessor, self.data, split)
        return predict_logits(predictor.model, predictor.preprocessor, items, 64, self.executor.device, deadline)

    def _ensemble(self, study: optuna.Study) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
        """Try an ensemble of the best trial and the probes (see :mod:`automl_tl.search.ensembling`): written as
        ``ensemble_model`` when kept (what ``automl_tl.load`` then returns), else an earlier one is removed.
        Returns the record for the summary (kept or not, why, the members and their weights) and, when kept,
        its averaged probabilities on the validation rows it was chosen on, with their labels."""
        directory = self.run_dir / ENSEMBLE_DIR
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            repair_interrupted_save(directory, (ENSEMBLE_FILE,))
        record, chosen_on = self._build_ensemble(study, directory)
        if not record["kept"]:
            shutil.rmtree(directory, ignore_errors=True)
        logger.info("ensemble: %s: %s", "kept" if record["kept"] else "none", record["reason"])
        return record, chosen_on

    def _build_ensemble(
        self, study: optuna.Study, directory: Path
    ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
        if not self.config.ensemble:
            return {"kept": False, "reason": "not asked for (--no-ensemble)"}, None
        if self.data.validation != VALIDATION_HOLDOUT or not len(self.data.val):
            return {"kept": False, "reason": "no validation split to choose members on"}, None
        best = saved_best_config(self.run_dir)
        metric = best.get("metric", "accuracy")
        candidates, labels = ensemble_candidates(self.run_dir, study, self.data, best["trial"])
        probe, probe_record = self._concatenated_candidate(candidates, labels)
        if probe is not None:
            candidates = [*candidates, probe.candidate()]
        choice = choose_ensemble(candidates, labels, metric, self.config.seed)
        record: dict[str, Any] = {
            "kept": False,
            "reason": choice.reason,
            "candidates": len(candidates),
            "rows": len(labels),
            "concatenated_features": probe_record,
        }
        if choice.cross_validated is not None:
            checked = choice.cross_validated
            record["cross_validated"] = {
                "ensemble": abs(checked.ensemble),
                "single": abs(checked.single),
                "folds": checked.folds,
                "metric": metric,
            }
        if choice.selection is None:
            return record, None
        chosen = [(candidates[i], float(choice.selection.weights[i])) for i in choice.selection.members]
        rebuilt = [c for c, _ in chosen if c.trial != best["trial"]]
        estimate = sum(c.seconds for c in rebuilt) + ENSEMBLE_SAVE_SECONDS * len(chosen)
        if self._deadline is not None:
            testing = self._test_features_cost(
                {name for c in rebuilt for name in (c.joins if c.joins else (c.config.backbone,))}
            )
            left = self._deadline - time.monotonic() - testing - self._save_margin()
            if estimate > left:
                record["reason"] = (
                    f"skipped: building its {len(chosen)} members would take about {estimate:.0f}s, "
                    f"{max(left, 0):.0f}s of the budget were left"
                )
                return record, None
        members = []
        for candidate, weight in chosen:
            if candidate.joins:
                members.append((weight, *self._concatenated_member(probe)))
                continue
            if candidate.trial == best["trial"]:
                anchor = load_model_dir(self.run_dir / BEST_MODEL_DIR, "cpu")
                # (its own temperature, from an earlier end of this run, is not the ensemble's: left out)
                members.append((weight, anchor.model, {k: v for k, v in anchor.config.items() if k != "temperature"}))
                continue
            model, config = self._rebuild_member(candidate)
            if model is None:
                record["reason"] = "skipped: the budget ran out while its members were rebuilt"
                return record, None
            members.append((weight, model, config))
        save_ensemble(
            directory,
            members,
            {
                "kind": "weighted average of probabilities",
                "classes": self.data.classes,
                "input_column": self.data.input_column,
                "label_column": self.data.label_column,
                "metric": metric,
                "data_fingerprint": self.data.fingerprint,
                "selection": {
                    "method": "greedy ensemble selection with replacement (Caruana et al. 2004)",
                    "rounds": ENSEMBLE_ROUNDS,
                    "candidates": len(candidates),
                    "validation_chosen_on": abs(choice.selection.score),
                    "cross_validated": record.get("cross_validated"),
                },
            },
        )
        record.update(
            kept=True,
            members=[_member_record(c, w) for c, w in chosen],
            validation_chosen_on=abs(choice.selection.score),
        )
        average = sum(w * c.probabilities for c, w in chosen)
        return record, (average, labels)

    def _concatenated_candidate(
        self, candidates: list[Candidate], labels: np.ndarray
    ) -> tuple[ConcatenatedProbe | None, dict[str, Any]]:
        """The probe on the concatenated features of the best-scoring backbones with frozen-body trials (see
        :mod:`automl_tl.search.concatenation`), fitted on the rows ``candidates`` were scored on, if two or more
        backbones have such trials and the time left allows it; and the record for the summary (why not)."""
        joined = joinable([c for c in candidates if c.config is not None and c.config.backbone in self.backbones])
        if len(joined) < 2:
            names = sorted(
                {c.config.backbone for c in candidates if c.config and get_strategy(c.config.strategy).frozen_body}
            )
            reason = (
                f"{len(names)} backbone(s) with frozen-body trials ({', '.join(names) or 'none'}): concatenating "
                "features needs 2"
            )
            logger.info("no %s: %s", CONCATENATED_PROBE_NAME, reason)
            return None, {"candidate": False, "reason": reason}
        backbones = [c.config.backbone for c in joined]
        estimate = estimated_seconds(joined, candidates)
        deadline = None if self._deadline is None else self._deadline - self._save_margin()
        if deadline is not None and estimate > deadline - time.monotonic():
            left = max(deadline - time.monotonic(), 0)
            reason = f"skipped: it would take about {estimate:.0f}s, {left:.0f}s of the budget were left"
            logger.info("no %s of %s: %s", CONCATENATED_PROBE_NAME, " + ".join(backbones), reason)
            return None, {"candidate": False, "backbones": backbones, "reason": reason}
        every_row = len(labels) == len(self.data.train) + len(self.data.val)
        try:
            probe = fit_concatenated_probe(
                self.executor, self.backbones, joined, self.data, every_row, self.config.seed, deadline
            )
        except DeadlineReached:
            reason = "skipped: the budget ran out while its features were computed"
            logger.info("no %s of %s: %s", CONCATENATED_PROBE_NAME, " + ".join(backbones), reason)
            return None, {"candidate": False, "backbones": backbones, "reason": reason}
        metric = candidates[0].config.metric
        logits = torch.log(torch.from_numpy(probe.probabilities).clamp_min(1e-12)).float()
        return probe, {
            "candidate": True,
            "backbones": backbones,
            "C": probe.fitted.details["C"],
            "seconds": round(probe.seconds, 3),
            "validation": {"metric": metric, "score": round(metric_value(metric, logits, labels), 4)},
        }

    def _concatenated_member(self, probe: ConcatenatedProbe) -> tuple[ConcatenatedModel, dict[str, Any]]:
        """The probe as an ensemble member: refitted on training + validation with the ``C`` it chose when the
        trials' models are (refit on, a validation split held out), one model per backbone (its pretrained
        body, its block of the layer); and what ``ensemble.json`` lists of it."""
        refit = probe.fitted_on != FITTED_ON_TRAIN_AND_VAL and self._refit_due({"fitted_on": probe.fitted_on})
        fitted = (
            refit_on_train_and_val(probe, self.executor, self.backbones, self.data, self.config.seed)
            if refit
            else probe.fitted
        )
        fitted_on = FITTED_ON_TRAIN_AND_VAL if refit else probe.fitted_on
        details = {
            "fitted_on": fitted_on,
            "C": fitted.details["C"],
            "part_of": CONCATENATED_PROBE_NAME,
            "joined_with": list(probe.backbones),
        }
        parts = []
        for config, head in zip(probe.configs, fitted.module.heads):
            backbone = self.backbones[config.backbone]
            model = backbone.build(num_classes=len(self.data.classes))  # the pretrained body, as the trials had it
            model.head = head
            model.set_trained_groups(0)
            parts.append((model.eval(), self._model_config(backbone, config, details)))
        return ConcatenatedModel(parts), {
            "strategy": CONCATENATED_PROBE_NAME,
            "fitted_on": fitted_on,
            "C": fitted.details["C"],
        }

    def _calibrate(self, study: optuna.Study, ensemble_rows: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        """Fit the kept model's temperature on validation predictions it was not trained on (the ensemble's
        average on its rows; else the best trial's own, held out or out of fold) and write it into the kept
        model's file (1 when not calibrated). Returns the record for the summary."""
        temperature, record = 1.0, {"temperature": 1.0}
        if not self.config.calibrate:
            record["reason"] = "not asked for (--no-calibration)"
        else:
            rows = ensemble_rows or self._best_trial_rows()
            if rows is None or len(rows[1]) < MIN_CALIBRATION_ROWS:
                record["reason"] = "too few validation predictions of the kept model to fit a temperature on"
            elif classifies_every_row(rows[0], rows[1]):
                record["reason"] = (
                    f"the kept model is right on all {len(rows[1])} validation predictions: nothing to fit a "
                    "temperature on (it would only sharpen), so its probabilities are its own"
                )
            else:
                logits = log_probabilities(rows[0])
                temperature = fit_temperature(logits, rows[1])
                fitted = calibration_summary(logits, rows[1], temperature)
                record = {
                    "temperature": round(temperature, 4),
                    "rows": len(rows[1]),
                    "validation_ece_before": round(fitted["ece_before"], 4),
                    "validation_ece_after": round(fitted["ece_after"], 4),
                }
        kept = kept_model_dir(self.run_dir)
        path = kept / (ENSEMBLE_FILE if kept.name == ENSEMBLE_DIR else CONFIG_FILE)
        with exclusive_lock(self.run_dir / BEST_MODEL_LOCK):
            stored = json.loads(path.read_text())
            write_json_atomic(path, {**stored, "temperature": round(temperature, 4)})
        logger.info("probabilities calibrated: temperature %.3f (%s)", temperature, record.get("reason", "fitted"))
        return record

    def _best_trial_rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The best trial's validation probabilities as the trial left them, with their rows' labels."""
        best = saved_best_config(self.run_dir)
        probabilities = read_trial_predictions(self.run_dir, best["trial"], self.data)
        if probabilities is None:
            return None
        if len(probabilities) == len(self.data.val):
            return probabilities, np.asarray(self.data.val.labels)
        return probabilities, np.concatenate([self.data.train.labels, self.data.val.labels])

    def _rebuild_member(self, candidate: Candidate) -> tuple[Any, dict[str, Any]]:
        """A frozen-body trial's model trained again from the cached features (on training + validation
        with refit on, for the epochs it scored best at); (None, {}) when the budget ran out."""
        config = candidate.config
        refit = self.config.refit and self._refit_due({"fitted_on": candidate.attrs.get("fitted_on")})
        if refit:
            config = replace(config, epochs=candidate.attrs.get("best_epoch") or config.epochs)
        backbone = self.backbones[config.backbone]
        deadline = None if self._deadline is None else self._deadline - self._save_margin()
        result = self.executor.fit(config, backbone, self.data, deadline=deadline, refit=refit)
        if not result.has_model or result.stop_reason in (STOP_TIME, STOP_OVER_BUDGET):
            return None, {}
        details = {
            "trial": candidate.trial,
            "val_accuracy": candidate.attrs.get("best_val_accuracy"),
            "val_score": candidate.attrs.get("best_val_score"),
            "val_loss": candidate.attrs.get("best_val_loss"),
            "validation": candidate.attrs.get("validation", self.data.validation),
            "fitted_on": result.extra.get("fitted_on", "train"),
            "best_epoch": candidate.attrs.get("best_epoch"),
        }
        model = result.final_model()
        result.release_model()
        return model, self._model_config(backbone, result.config, details)

    def _transferability(self, board: pd.DataFrame) -> dict[str, Any] | None:
        """Write each backbone's scores next to its best validation accuracy; return the Kendall taus."""
        if self.ranking is None:
            return None
        frame, taus = with_outcomes(self.ranking, best_accuracy_by_backbone(board))
        write_transferability(frame, taus, self.run_dir)
        return {"ranking": frame.dropna(subset=["rank"])["backbone"].tolist(), "kendall_tau": taus}  # ranked only

    def _write_report(self, study: optuna.Study) -> None:
        from automl_tl.results.html_report import write_report  # matplotlib is imported only when a report is drawn

        path = write_report(study, self.run_dir, storage=self.config.storage)
        logger.info("report: %s", path)

    def _evaluation(self, predictor: Predictor, split: Split, deadline: float | None = None) -> dict[str, Any] | None:
        """The saved best model on ``split`` (validation or test): its ``metrics`` (accuracy, balanced
        accuracy, macro F1), and for the report the confusion matrix and each class's precision, recall and
        support (JSON, small enough for a study attribute: left out beyond :data:`MAX_CONFUSION_CLASSES` /
        :data:`MAX_PER_CLASS_ROWS` classes). None for an empty split (no test part held out)."""
        if not len(split):
            return None
        raw = self._logits_on(predictor, split, deadline)
        logits = raw / predictor.temperature  # as predict_proba gives them
        labels = split.labels
        predicted = logits.argmax(1).numpy()
        calibration = calibration_summary(raw.numpy(), labels, predictor.temperature)
        metrics = {**all_metrics(logits, labels), "ece": calibration["ece_after"], "examples": int(len(labels))}
        classes = [str(c) for c in self.data.classes]
        indices = list(range(len(classes)))
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predicted, labels=indices, zero_division=0
        )
        per_class = [
            {
                "class": name,
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(n),
            }
            for name, p, r, f, n in zip(classes, precision, recall, f1, support)
        ]
        matrix = confusion_matrix(labels, predicted, labels=indices).tolist()
        return {
            "metrics": metrics,
            "classes": classes if len(classes) <= MAX_PER_CLASS_ROWS else None,
            "confusion_matrix": matrix if len(classes) <= MAX_CONFUSION_CLASSES else None,
            "per_class": per_class if len(classes) <= MAX_PER_CLASS_ROWS else None,
            "calibration": {"temperature": predictor.temperature, **calibration},
        }


#: the keys of a saved model's config that describe the model itself (see Search._model_config), not its trial
_MODEL_KEYS = (
    "backbone",
    "head",
    "classes",
    "input_column",
    "label_column",
    "input_options",
    "preprocessing",
    "trial_config",
    "metric",
    "data_fingerprint",
)


def _best_epoch_train_loss(result: TrialResult) -> float | None:
    """The mean training loss of the epoch whose weights ``result`` keeps (a soup's: its best ingredient's);
    None where it has none (no epoch, or a head fitted at once whose loss is not a number)."""
    if not result.history:
        return None
    loss = max(result.history, key=lambda r: r.rank_key).train_loss
    return round(float(loss), 5) if math.isfinite(loss) else None


def _refit_diverged(trial_loss: float | None, refit_loss: float | None) -> bool:
    """Whether a refit's last training loss ends far above its trial's (see :data:`REFIT_LOSS_FACTOR`); never
    without both figures (a model saved by an earlier version has no trial loss)."""
    if trial_loss is None or refit_loss is None or not math.isfinite(trial_loss):
        return False
    return not refit_loss <= REFIT_LOSS_FACTOR * trial_loss + REFIT_LOSS_MARGIN  # (a NaN loss diverged too)


def _trial_details(config: dict[str, Any]) -> dict[str, Any]:
    """A saved model's config less what describes the model (its trial, its figures): what a model fitted
    again from the same trial keeps."""
    return {k: v for k, v in config.items() if k not in _MODEL_KEYS}


def _record_threshold(record: dict[str, Any], threshold: Threshold) -> bool:
    """Write the chosen confidence threshold into the self-training ``record``; whether it reached the target."""
    record.update(
        threshold=round(threshold.value, 4),
        threshold_precision=round(threshold.precision, 4),
        threshold_rows=threshold.rows,
        pseudo_labelled=0,
    )
    return threshold.reached


def _threshold_not_reached(threshold: Threshold, where: str) -> str:
    return (
        f"none: at no threshold was the kept model {PSEUDO_LABEL_PRECISION:.0%} right {where} "
        f"(at best {threshold.precision:.0%}): its labels would teach it its errors"
    )


def _member_record(candidate: Candidate, weight: float) -> dict[str, Any]:
    """An ensemble member as the summary, the report and the card list it."""
    if candidate.joins:
        return {
            "trial": None,
            "backbone": " + ".join(candidate.joins),
            "strategy": CONCATENATED_PROBE_NAME,
            "kind": CONCATENATED_FEATURES,
            "backbones": list(candidate.joins),
            "weight": round(weight, 4),
        }
    config = candidate.config
    return {
        "trial": candidate.trial,
        "backbone": config.backbone,
        "strategy": config.strategy,
        "weight": round(weight, 4),
    }


def _describe_kept(ensemble: dict[str, Any]) -> str:
    """What ``automl_tl.load(run_dir)`` returns, in words."""
    if not ensemble.get("kept"):
        return "the best trial's model (best_model)"
    members = ensemble["members"]
    parts = []
    trials = [str(member["trial"]) for member in members if member.get("kind") != CONCATENATED_FEATURES]
    if trials:
        parts.append(f"trial{'s' if len(trials) > 1 else ''} {', '.join(trials)}")
    parts += [
        f"{CONCATENATED_PROBE_NAME} of {member['backbone']}"
        for member in members
        if member.get("kind") == CONCATENATED_FEATURES
    ]
    what = f"{len(members)} models" if len(members) > 1 else "1 model"
    return f"an ensemble of {what} ({'; '.join(parts)}; {ENSEMBLE_DIR})"


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame``'s rows as plain JSON values (numpy numbers made Python ones, NaN made None)."""
    return json.loads(frame.to_json(orient="records"))


def run_search(
    data: DatasetBundle,
    config: SearchConfig,
    run_dir: str | Path,
    executor: Executor | None = None,
    workers: int = 1,
    data_source: dict[str, Any] | None = None,
    started: float | None = None,
    pool: UnlabelledPool | None = None,
    ray: RaySettings | None = None,
) -> SearchOutcome:
    """Run (or resume) a search; see :class:`Search`. ``workers`` > 1 needs ``data_source``, and so does ``ray``.
    ``started`` (a ``time.monotonic()`` value) is when the budget began: by default, now. ``pool``: unlabelled
    inputs for self-training (see :func:`automl_tl.data.pool.unlabelled_pool`). ``ray``: run the trials on Ray
    (see :mod:`automl_tl.search.ray_trials`)."""
    return Search(data, config, run_dir, executor, data_source=data_source, pool=pool).run(workers, started, ray)


def prepare_worker(
    storage: str,
    study_name: str,
    run_dir: str | Path | None = None,
    timeout: float | None = None,
    show_progress: bool | None = None,
) -> tuple[Search, optuna.Study]:
    """The :class:`Search` of one more worker on the study ``study_name`` in ``storage``, and the study, ready
    for :meth:`Search.optimize`: the settings, the space and the data's source come from the study, the data
    are loaded again and refused if their fingerprint differs. ``run_dir`` (default: the study's own) receives
    the best model; ``timeout`` (default: the study's) counts from now."""
    check_storage_url(storage)
    opened = open_storage(storage, Path("."), heartbeat=OPTUNA_HEARTBEAT)
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        raise ConfigError(
            f"no study {study_name!r} in {storage}; start one with "
            f"'automl-tl search --storage {storage} --study-name {study_name} ...'"
        ) from None
    attrs = study.user_attrs
    if "search_config" not in attrs or "search_space" not in attrs:
        raise ConfigError(
            f"study {study_name!r} in {storage} was not made by 'automl-tl search' (it has no stored settings to join)"
        )
    if not attrs.get("data_source"):
        raise ConfigError(
            f"study {study_name!r} was made with data in memory; a worker can join only a study "
            "whose data came from a file, a folder or a registered data set"
        )
    overrides: dict[str, Any] = {"storage": storage, "study_name": study_name}
    if timeout is not None:
        overrides["timeout"] = timeout
    config = SearchConfig.from_dict({**attrs["search_config"], **overrides})
    data = load_data_source(attrs["data_source"])
    run_dir = Path(run_dir or attrs.get("run_dir") or Path("runs") / study_name)
    executor = Executor(feature_cache=FeatureCache(enabled=config.feature_cache), show_progress=show_progress)
    search = Search(data, config, run_dir, executor, data_source=attrs["data_source"])
    search.space = SearchSpace.from_dict(attrs["search_space"])
    search.start_clock()
    search.announce_start()
    joined = search.open_study()  # checks the data's fingerprint and the space against the stored ones
    logger.info("joined study %r in %s as a worker; run directory %s", study_name, storage, run_dir)
    return search, joined


def join_study(
    storage: str,
    study_name: str,
    run_dir: str | Path | None = None,
    timeout: float | None = None,
    finish: bool = True,
    show_progress: bool | None = None,
) -> "SearchOutcome | None":
    """Join the study ``study_name`` in ``storage`` as one more worker, and run trials until it has enough.

    The data are loaded from the source stored with the study (see :func:`prepare_worker`). ``run_dir``
    (default: the study's own) receives the best model. With ``finish``, the worker then writes the
    leaderboard, the summary and the test metrics like ``automl-tl search`` does, and returns them.
    """
    search, joined = prepare_worker(storage, study_name, run_dir, timeout, show_progress)
    run_dir = search.run_dir
    search.optimize(joined)
    if not finish:
        return None
    if saved_best_accuracy(run_dir) is None:
        logger.info(
            "this worker kept no model in %s (the study had its trials, or others' were better); "
            "the study's results are where its other workers write them",
            run_dir,
        )
        return None
    return search._finish(joined)
