"""The study: pre-ranking, sampler, pruner, storage, budgets, resume, and keeping the best model.

Before any fine-tuning, every candidate backbone is scored by transferability on its cached
features (:mod:`automl_tl.ranking`); the best-ranked are tried first and, with ``top_k``,
only they are searched. Every trial then runs through the shared
:class:`~automl_tl.executor.Executor`; this module turns the executor's per-epoch callback
into Optuna reports and prunes (successive halving or Hyperband over epochs), enforces the
search's and each trial's wall-clock budget, and owns the trial states. The study lives in a
journal file in the run directory (safe for several processes on one machine) or in a database
(``--storage postgresql://...``), so running the same command again resumes it: every trial
carries a heartbeat, and a trial whose worker died is marked failed and run again
(:mod:`automl_tl.liveness`). Several workers can share one study (:mod:`automl_tl.workers`): the
study stores the settings and the data's source, and each worker stops when the study as a whole
has enough trials.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from tqdm.auto import tqdm

from automl_tl.backbone import Backbone
from automl_tl.config import FROZEN_BODY_STRATEGIES, JOURNAL_FILE, SearchConfig, is_journal_path
from automl_tl.data import DatasetBundle
from automl_tl.errors import AutomlTLError, ConfigError, first_line
from automl_tl.executor import STOP_CALLBACK, Executor, TrialResult, accuracy, predict_logits
from automl_tl.model_io import (BEST_MODEL_DIR, CONFIG_FILE, Predictor, load_model_dir, repair_interrupted_save,
                                save_model, write_json_atomic)
from automl_tl.feature_cache import FeatureCache
from automl_tl.liveness import Heartbeat, InterruptionBlindPruner, recover_dead_trials, trial_slot
from automl_tl.locking import exclusive_lock
from automl_tl.manifest import build_manifest
from automl_tl.model_card import write_model_card
from automl_tl.plugins import get_plugin_manager
from automl_tl.ranking import rank_backbones, warm_start_params, with_outcomes
from automl_tl.registry import get_registry
from automl_tl.report import (DATA_SUMMARY_ATTR, TEST_EVALUATION_ATTR, TRANSFERABILITY_ATTR, best_accuracy_by_backbone,
                              leaderboard, write_leaderboard, write_skipped, write_summary, write_transferability)
from automl_tl.sampling import SlotSeededSampler
from automl_tl.space import SearchSpace, suggest_trial_config

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"  # package versions, seeds, data hash, backbones, hardware
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = (optuna.trial.TrialState.RUNNING,)
# A study attribute is one JSON text (64 KiB at most in MySQL): the test evaluation keeps the confusion
# matrix up to this many classes, and the per-class rows up to the second number.
MAX_CONFUSION_CLASSES = 50
MAX_PER_CLASS_ROWS = 200


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


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """The study storage: a journal file in ``run_dir`` by default, or a database URL."""
    if url is None or is_journal_path(url):
        path = run_dir / JOURNAL_FILE if url is None else Path(url)
        try:
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as exc:
            raise ConfigError(f"cannot open the study journal {path}: {exc.strerror}") from None
        return optuna.storages.journal.JournalStorage(backend)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - driver missing, server down, bad credentials: all the user's to fix
        raise ConfigError(f"cannot open the study storage {mask_password(url)}: {first_line(exc)}") from None


def mask_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def _make_sampler_and_pruner(config: SearchConfig, warm_starts: int = 0,
                             ) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    # A few random trials first, then TPE; fewer than Optuna's default 10 because our budgets are small.
    # Warm-start trials already spread the first trials over the backbones, so they stand in for most of
    # the random ones (TPE counts them as startup trials too): two random trials follow them.
    startup = max(2, min(10, config.n_trials // 3))
    if warm_starts:
        startup = min(startup, warm_starts + 2)
    if config.sampler == "random":
        def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.RandomSampler(seed=seed)
    else:
        def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    # seeded per trial: a resumed or shared study draws what an uninterrupted one would have
    sampler = SlotSeededSampler(make_sampler, config.seed)
    if config.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=config.min_epochs, max_resource=config.max_epochs,
                                                reduction_factor=3)
    elif config.pruner == "successive_halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_epochs, reduction_factor=3)
    else:
        pruner = optuna.pruners.NopPruner()
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        return sampler, pruner  # unwrapped: samplers look for it by type, to see one bracket's trials only
    return sampler, InterruptionBlindPruner(pruner)


def saved_best_accuracy(run_dir: Path) -> float | None:
    """Validation accuracy of the model in ``run_dir/best_model``, if there is one."""
    saved = _saved_best(run_dir)
    return None if saved is None else saved[0]


def _saved_best(run_dir: Path) -> tuple[float, int] | None:
    """(validation accuracy, trial number) of the model in ``run_dir/best_model``, if there is one."""
    path = run_dir / BEST_MODEL_DIR / CONFIG_FILE
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("val_accuracy"), config.get("trial", -1)


class Search:
    """One study over the configured space; :meth:`run` optimises until the budget is spent."""

    def __init__(self, data: DatasetBundle, config: SearchConfig, run_dir: str | Path, executor: Executor | None = None,
                 callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
                 data_source: dict[str, Any] | None = None):
        """``callbacks`` are Optuna study callbacks run after each trial (one may call ``study.stop()``).

        A given ``executor`` brings its own feature cache; ``config.feature_cache`` applies to the default one.
        ``data_source`` says how to load ``data`` again (see :func:`automl_tl.workers.load_data_source`);
        it is stored with the study so that other workers can join it.
        """
        self.data = data
        self.data_source = data_source
        self.callbacks = list(callbacks or [])
        self.config = config
        self.run_dir = Path(run_dir)
        self.executor = executor or Executor(feature_cache=FeatureCache(enabled=config.feature_cache))
        self.backbones: dict[str, Backbone] = {
            b.name: b for b in get_registry().resolve_backbones(config.backbones, modality=data.modality)}
        wrong = [b.name for b in self.backbones.values() if b.modality != data.modality]
        if wrong:
            raise ConfigError(f"backbone(s) {', '.join(wrong)} are not for {data.modality} data")
        self.ranking: pd.DataFrame | None = None
        self.space: SearchSpace | None = None
        self._results: dict[int, TrialResult] = {}
        self._deadline: float | None = None
        self._attempts_left = 0  # trials this process may still start in this run

    def prepare(self) -> SearchSpace:
        """Rank the backbones by transferability (unless ``prerank`` is off), keep the ``top_k``, and fix the space."""
        candidates = list(self.backbones)
        if self.config.prerank:
            started = time.perf_counter()
            self.ranking = rank_backbones(list(self.backbones.values()), self.data, self.executor,
                                          self.config.input_options)
            logger.info("pre-ranked %d backbone(s) in %.1fs: %s", len(candidates), time.perf_counter() - started,
                        ", ".join(self.ranking["backbone"]))
            if self.config.top_k is not None:
                candidates = list(self.ranking["backbone"][:self.config.top_k])
        max_groups = max(self.backbones[name].build(2, pretrained=False).num_groups for name in candidates)
        self.space = SearchSpace.from_config(self.config, candidates, max_groups, self.data.modality,
                                             few_labels=self.data.shots is not None, validation=self.data.validation)
        return self.space

    # ------------------------------------------------------------ the study

    def open_study(self) -> optuna.Study:
        """Create the study, or load it and check it was made for the same data and space."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / ".write-test").touch()
            (self.run_dir / ".write-test").unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write to output directory {self.run_dir}: {exc.strerror}") from None
        if self.space is None:
            self.prepare()
        storage = open_storage(self.config.storage, self.run_dir)
        try:  # load first, create only if missing: a refused resume must not even append to the journal
            study = optuna.load_study(study_name=self.config.study_name, storage=storage)
        except KeyError:
            study = optuna.create_study(storage=storage, study_name=self.config.study_name, direction="maximize",
                                        load_if_exists=True)
        # (A worker joining has no ranking of its own: the study's maker enqueued the warm starts.)
        warm_starts = [] if self.ranking is None else warm_start_params(self.ranking, self.space)[:self.config.n_trials]
        # the sampler starts as the study's maker set it up, whichever process this is
        study.sampler, study.pruner = _make_sampler_and_pruner(
            self.config, study.user_attrs.get("warm_starts", len(warm_starts)))
        stored_data = study.user_attrs.get("data_fingerprint")
        stored_space = study.user_attrs.get("search_space")
        if stored_data is None:
            study.set_user_attr("data_fingerprint", self.data.fingerprint)
            study.set_user_attr("search_space", self.space.to_dict())
            study.set_user_attr("classes", [str(c) for c in self.data.classes])
            # What a worker elsewhere needs to join: the settings, the data's source, where the run lives.
            study.set_user_attr("search_config", self.config.to_dict())
            study.set_user_attr("data_source", self.data_source)
            study.set_user_attr("run_dir", str(self.run_dir.resolve()))
            study.set_user_attr("warm_starts", len(warm_starts))
        elif stored_data != self.data.fingerprint:
            raise ConfigError(f"study {self.config.study_name!r} in {self.run_dir} was made for other data "
                              f"(fingerprint {stored_data}, now {self.data.fingerprint}); "
                              "use another --output or --study-name to start a new search")
        elif stored_space != self.space.to_dict():
            changed = sorted(k for k in self.space.to_dict() if stored_space.get(k) != self.space.to_dict()[k])
            raise ConfigError(f"study {self.config.study_name!r} in {self.run_dir} was made with another search space "
                              f"(different {', '.join(changed)}); rerun with the original options to continue it, "
                              "or use another --output or --study-name to start a new search")
        if self.ranking is not None and TRANSFERABILITY_ATTR not in study.user_attrs:
            # kept with the study, so that the report can be rebuilt from the storage alone
            study.set_user_attr(TRANSFERABILITY_ATTR, {"scores": _json_records(self.ranking)})
        if warm_starts and not study.user_attrs.get("warm_starts_enqueued"):
            # A new study: the best-ranked backbones first, as cheap probes, then one strong fine-tuning.
            # (Counting those already there: a run killed while enqueueing them adds only the rest.)
            present = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("warm_start"))
            for params in warm_starts[present:]:
                study.enqueue_trial(params, user_attrs={"warm_start": True})
            study.set_user_attr("warm_starts_enqueued", True)
        write_skipped(self.run_dir, self.data.skipped)  # now, so that it is there even if the search fails later
        return study

    def run(self, workers: int = 1) -> SearchOutcome:
        """Optimise until ``n_trials`` trials have finished (counting earlier runs) or the timeout passes.

        The timeout covers the whole run, pre-ranking included. With ``workers`` > 1, that many worker
        processes share the study (see :func:`automl_tl.workers.run_local_workers`); this process
        prepares the study, waits for them, and writes the results.
        """
        self.start_clock()
        self.announce_start()  # before pre-ranking: a tracker that cannot start refuses at once
        study = self.open_study()
        if workers > 1:
            from automl_tl.workers import run_local_workers

            run_local_workers(self, workers, None if self._deadline is None else self._deadline - time.monotonic())
        else:
            self.optimize(study)
        return self._finish(study)

    def start_clock(self) -> None:
        """Start the search's wall-clock budget (``config.timeout``) now."""
        self._deadline = time.monotonic() + self.config.timeout if self.config.timeout else None

    def announce_start(self) -> None:
        """Tell observer plugins that this process is about to run trials of the study."""
        get_plugin_manager().hook.search_started(run_dir=self.run_dir, study_name=self.config.study_name,
                                                 config=self.config)

    def optimize(self, study: optuna.Study) -> None:
        """Run trials in this process until the study has ``n_trials`` finished (or running) trials, this
        process has started as many as were missing when it began, or the deadline passes.

        Trials of dead workers are recovered first, and again after every trial.
        """
        recover_dead_trials(study)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        remaining = self.config.n_trials - finished
        if finished:
            logger.info("resuming study %r: %d trial(s) already finished, %d to go",
                        self.config.study_name, finished, max(remaining, 0))
        self._attempts_left = remaining  # failed trials count too, so a search that keeps failing ends
        time_left = None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)
        if self._enough(study) or time_left == 0.0:
            return
        progress = tqdm(total=remaining, desc="trials", unit="trial", disable=not self.executor.show_progress)
        try:
            study.optimize(self._objective, n_trials=None, timeout=time_left, catch=(TrialFailed,),
                           callbacks=[self._after_trial, lambda *_: progress.update(), self._stop_when_enough,
                                      *self.callbacks])
        finally:
            progress.close()
            write_leaderboard(leaderboard(study), self.run_dir)  # even when interrupted: nothing finished is lost

    def _enough(self, study: optuna.Study) -> bool:
        """Whether this process should start no more trials: the study's finished and running trials
        (other workers' included) reach ``n_trials``, or this process used up its attempts."""
        counted = len(study.get_trials(deepcopy=False, states=FINISHED + RUNNING))
        return counted >= self.config.n_trials or self._attempts_left <= 0

    def _stop_when_enough(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._attempts_left -= 1
        recover_dead_trials(study)
        if self._enough(study):
            study.stop()

    # ------------------------------------------------------------ one trial

    def _objective(self, trial: optuna.Trial) -> float:
        # The slot, read afresh: the sampler recorded it after this Trial object cached its attributes.
        slot = trial_slot(trial.study, trial.study._storage.get_trial(trial._trial_id))
        config = suggest_trial_config(trial, self.space, self.config, slot=slot)
        backbone = self.backbones[config.backbone]

        def on_epoch(epoch: int, val_accuracy: float) -> bool:
            if config.strategy in FROZEN_BODY_STRATEGIES:
                # A probe on cached features costs next to nothing: pruning it saves nothing, and its
                # many passes per epoch would set an unfair bar at each rung for the fine-tuning trials.
                # (A head fitted on the embeddings has one "epoch", and nothing left to save either.)
                return False
            trial.report(val_accuracy, step=epoch)
            # After the last epoch there is nothing left to save by pruning: the trial is complete.
            return epoch < config.epochs and trial.should_prune()

        deadline = self._deadline
        if self.config.trial_timeout is not None:
            trial_deadline = time.monotonic() + self.config.trial_timeout
            deadline = trial_deadline if deadline is None else min(deadline, trial_deadline)
        try:
            # trial._trial_id: the storage's id of this trial (Optuna has no public accessor)
            with Heartbeat(trial.study._storage, trial._trial_id):
                result = self.executor.fit(config, backbone, self.data, on_epoch=on_epoch, deadline=deadline)
        except AutomlTLError:
            raise  # the user's problem (data, weights): stop the search with the message
        except Exception as exc:  # anything else fails this trial only
            logger.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            self._results[trial.number] = TrialResult(config, [], "error", 0.0, 0.0, 0, error=str(exc),
                                                      trial_number=trial.number)
            raise TrialFailed(str(exc)) from exc

        result.trial_number = trial.number
        self._results[trial.number] = result
        self._record(trial, result)
        if result.stop_reason == STOP_CALLBACK:
            result.release_model()
            raise optuna.TrialPruned(f"pruned after epoch {result.history[-1].epoch}")
        if not result.has_model:
            # Failed, not pruned: a resumed search with more time should try this trial again.
            trial.set_user_attr("error", "the time budget ran out before the first epoch finished")
            logger.info("trial %d stopped: the time budget ran out before its first epoch finished", trial.number)
            raise TrialFailed("the time budget ran out before the first epoch finished")
        self._keep_if_best(result)
        result.release_model()  # the weights are on disk if they were the best; free them now
        return result.best_val_accuracy

    def _record(self, trial: optuna.Trial, result: TrialResult) -> None:
        attrs = {"stop_reason": result.stop_reason, "seconds": round(result.seconds, 3),
                 "cpu_seconds": round(result.cpu_seconds, 3), "samples_seen": result.samples_seen,
                 "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                 "best_val_accuracy": result.best_val_accuracy,
                 "val_accuracy_by_epoch": [round(r.val_accuracy, 5) for r in result.history],
                 "batch_size_used": result.config.batch_size}
        if "oom_retry" in result.extra:  # ran out of memory once and finished at half the batch size
            attrs["oom_retry"] = result.extra["oom_retry"]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _keep_if_best(self, result: TrialResult) -> None:
        """Save the trial's model as ``best_model`` if no better one is saved (atomic, under a lock)."""
        with exclusive_lock(self.run_dir / ".best_model.lock"):
            repair_interrupted_save(self.run_dir / BEST_MODEL_DIR)  # a worker killed while saving
            # Ties go to the lower trial number, as in the leaderboard, whichever worker finished first.
            saved = _saved_best(self.run_dir)
            if saved is not None and (saved[0], -saved[1]) >= (result.best_val_accuracy, -result.trial_number):
                return
            backbone = self.backbones[result.config.backbone]
            preprocessor = backbone.preprocessor(result.config.input_options)
            save_model(result.final_model(), self.run_dir / BEST_MODEL_DIR, {
                "backbone": backbone.describe(),
                "head": result.config.head.to_dict(),
                "classes": self.data.classes,
                "input_column": self.data.input_column,
                "label_column": self.data.label_column,
                "input_options": result.config.to_dict()["input_options"],
                "preprocessing": preprocessor.describe(),
                "trial": result.trial_number,
                "trial_config": result.config.to_dict(),
                "val_accuracy": result.best_val_accuracy,
                "best_epoch": result.best_epoch,
                "data_fingerprint": self.data.fingerprint,
            })
            logger.info("trial %d is the best so far (validation accuracy %.4f): saved to %s",
                        result.trial_number, result.best_val_accuracy, self.run_dir / BEST_MODEL_DIR)

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        result = self._results.pop(trial.number, None)
        if result is None:
            return
        result.state = trial.state.name
        result.error = trial.user_attrs.get("error")
        value = result.best_val_accuracy
        config = result.config
        logger.info("trial %d %s: %s %s depth=%s backbone_lr=%.1e decay=%.2f head=%s head_lr=%.1e epochs run=%d "
                    "-> val_accuracy=%s (%.1fs)", trial.number, result.state.lower(), config.backbone,
                    config.strategy, config.freeze_depth, config.backbone_lr, config.layer_decay, config.head.kind,
                    config.head_lr, len(result.history),
                    "n/a" if value is None else f"{value:.4f}", result.seconds)
        get_plugin_manager().hook.trial_finished(result=result)

    # ------------------------------------------------------------ the end

    def _finish(self, study: optuna.Study) -> SearchOutcome:
        with exclusive_lock(self.run_dir / ".best_model.lock"):
            repair_interrupted_save(self.run_dir / BEST_MODEL_DIR)
        board = leaderboard(study)
        write_leaderboard(board, self.run_dir)
        study.set_user_attr(DATA_SUMMARY_ATTR, {k: v for k, v in self.data.summary().items() if k != "classes"})
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete or saved_best_accuracy(self.run_dir) is None:
            self._write_report(study)  # what there is: the trials, their failures
            raise AutomlTLError(f"no trial finished within the budget; the leaderboard is in {self.run_dir}; "
                                "raise --timeout or --trials and run the same command again to continue")
        predictor = load_model_dir(self.run_dir / BEST_MODEL_DIR, self.executor.device)
        best_trial = predictor.config["trial"]
        evaluation = self._evaluation(predictor, self.data.test)
        if evaluation is not None:
            evaluation.update(trial=best_trial, val_accuracy=predictor.config["val_accuracy"])
            study.set_user_attr(TEST_EVALUATION_ATTR, evaluation)  # the report reads it from the study
        test_metrics = None if evaluation is None else evaluation["metrics"]
        validation_metrics = self._evaluation(predictor, self.data.val)["metrics"]
        write_json_atomic(self.run_dir / BEST_MODEL_DIR / "metrics.json",
                          {"trial": best_trial, "val_accuracy": predictor.config["val_accuracy"],
                           "validation": validation_metrics, "test": test_metrics})
        best_params = study.trials[best_trial].params
        states = board["state"].value_counts().to_dict()
        transferability = self._transferability(board)
        write_summary(self.run_dir, {
            "study": self.config.study_name, "best_trial": best_trial, "best_params": best_params,
            "val_accuracy": predictor.config["val_accuracy"], "test": test_metrics,
            "trials_by_state": states, "total_seconds": float(board["seconds"].fillna(0).sum()),
            "total_cpu_seconds": float(board["cpu_seconds"].fillna(0).sum()), "data": self.data.summary(),
            "transferability": transferability,
        })
        write_json_atomic(self.run_dir / MANIFEST_FILE, build_manifest(
            self.config, self.data, [self.backbones[name] for name in self.space.backbones], self.data_source))
        write_model_card(self.run_dir)  # from the files just written: MODEL_CARD.md
        self._write_report(study)
        test_accuracy = "n/a" if test_metrics is None else f"{test_metrics['accuracy']:.4f}"
        logger.info("best trial %d: %s, validation accuracy %.4f, test accuracy %s",
                    best_trial, best_params, predictor.config["val_accuracy"], test_accuracy)
        outcome = SearchOutcome(self.run_dir, study, board, best_trial, best_params,
                                predictor.config["val_accuracy"], test_metrics, transferability, predictor)
        get_plugin_manager().hook.search_finished(outcome=outcome)
        return outcome

    def _transferability(self, board: pd.DataFrame) -> dict[str, Any] | None:
        """Write each backbone's scores next to its best validation accuracy; return the Kendall taus."""
        if self.ranking is None:
            return None
        frame, taus = with_outcomes(self.ranking, best_accuracy_by_backbone(board))
        write_transferability(frame, taus, self.run_dir)
        return {"ranking": frame["backbone"].tolist(), "kendall_tau": taus}

    def _write_report(self, study: optuna.Study) -> None:
        from automl_tl.html_report import write_report  # matplotlib is imported only when a report is drawn

        path = write_report(study, self.run_dir, storage=self.config.storage)
        logger.info("report: %s", path)

    def _evaluation(self, predictor, split) -> dict[str, Any] | None:
        """The saved best model on ``split`` (validation or test): its ``metrics`` (accuracy, balanced
        accuracy, macro F1), and for the report the confusion matrix and each class's precision, recall and
        support (JSON, small enough for a study attribute: left out beyond :data:`MAX_CONFUSION_CLASSES` /
        :data:`MAX_PER_CLASS_ROWS` classes). None for an empty split (no test part held out)."""
        if not len(split):
            return None
        items = self.executor.encoded(predictor.preprocessor, self.data, split)
        logits = predict_logits(predictor.model, predictor.preprocessor, items, 64, self.executor.device)
        labels = split.labels
        predicted = logits.argmax(1).numpy()
        metrics = {"accuracy": accuracy(logits, labels),
                   "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
                   "macro_f1": float(f1_score(labels, predicted, average="macro")),
                   "examples": int(len(labels))}
        classes = [str(c) for c in self.data.classes]
        indices = list(range(len(classes)))
        precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices,
                                                                         zero_division=0)
        per_class = [{"class": name, "precision": round(float(p), 4), "recall": round(float(r), 4),
                      "f1": round(float(f), 4), "support": int(n)}
                     for name, p, r, f, n in zip(classes, precision, recall, f1, support)]
        matrix = confusion_matrix(labels, predicted, labels=indices).tolist()
        return {"metrics": metrics, "classes": classes if len(classes) <= MAX_PER_CLASS_ROWS else None,
                "confusion_matrix": matrix if len(classes) <= MAX_CONFUSION_CLASSES else None,
                "per_class": per_class if len(classes) <= MAX_PER_CLASS_ROWS else None}


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame``'s rows as plain JSON values (numpy numbers made Python ones, NaN made None)."""
    return json.loads(frame.to_json(orient="records"))


def search(data: DatasetBundle, config: SearchConfig, run_dir: str | Path, executor: Executor | None = None,
           workers: int = 1, data_source: dict[str, Any] | None = None) -> SearchOutcome:
    """Run (or resume) a search; see :class:`Search`. ``workers`` > 1 needs ``data_source``."""
    return Search(data, config, run_dir, executor, data_source=data_source).run(workers)
