"""MLflow tracking: every trial's parameters and metrics, and the best model, logged to MLflow.

An observer plugin, registered through the ``automl_tl`` entry-point group like every other plugin. It
does nothing unless the search sets ``tracking_uri`` (``automl-tl search --mlflow [URI]``): a folder
(``mlruns`` by default, which ``mlflow ui`` in the same directory opens), ``sqlite:///mlflow.db`` or a
tracking server's ``http://`` address.

What lands in MLflow:

* one experiment per study name (``automl_tl`` unless ``--study-name`` says otherwise);
* one parent run per run directory, found again by its tags when the search resumes and by every worker
  that joins the study, so a study run by several processes stays one MLflow run;
* one nested run per trial: every setting of the trial as parameters, the validation accuracy and the
  losses of each epoch as metric histories, the best validation accuracy, seconds and CPU-seconds, and
  the trial's state, stop reason and error as tags;
* at the end, on the parent run: the best model's files (``best_model/``: safetensors and JSON), the
  leaderboard, summary, manifest, report and plots, the test metrics, and the best trial's parameters.

A tracker that cannot start (MLflow not installed, a server that does not answer) refuses the search
before any compute is spent; a tracking error later on is logged as a warning and the search goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_tl.errors import ConfigError, first_line
from automl_tl.hookspecs import hookimpl
from automl_tl.layout import RESULT_FILES  # logged with the best model (those that exist)

if TYPE_CHECKING:
    from automl_tl.config import SearchConfig
    from automl_tl.search.study import SearchOutcome
    from automl_tl.train.executor import TrialResult

logger = logging.getLogger(__name__)

RUN_DIR_TAG = "automl_tl.run_dir"
TRIAL_TAG = "automl_tl.trial"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nesting runs


def tracking_uri_for(uri: str) -> str:
    """``uri`` as MLflow takes it: a plain folder path becomes an absolute ``file:`` URI (so that workers
    started elsewhere log to the same folder); URIs with a scheme are kept."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as MLflow's flat parameters: ``{"head": {"kind": "mlp"}}`` -> ``{"head.kind": "mlp"}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            "MLflow tracking needs the mlflow package: pip install 'automl_tl[mlflow]' (or mlflow-skinny)"
        ) from None
    return mlflow


class MlflowTracker:
    """The hook implementations; one instance per process, holding the client and the parent run."""

    def __init__(self) -> None:
        self._client = None
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self._run_dir: str | None = None

    @hookimpl
    def search_started(self, run_dir: Path, study_name: str, config: "SearchConfig") -> None:
        self._client = None
        if config.tracking_uri is None:
            return
        mlflow = _import_mlflow()
        uri = tracking_uri_for(config.tracking_uri)
        if uri.startswith("file:"):
            # MLflow keeps its folder store in maintenance mode and refuses it unless told: a local folder is
            # what the user asked for (and what 'mlflow ui' reads), so say yes for this process.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)
            self._experiment_id = self._experiment(client, study_name)
            self._run_dir = str(Path(run_dir).resolve())
            self._parent_run_id = self._parent_run(client, self._run_dir)
        except Exception as exc:  # noqa: BLE001 - a bad URI, a server down, a folder not writable: the user's to fix
            raise ConfigError(f"cannot log to MLflow at {uri}: {first_line(exc)}") from None
        self._client = client
        logger.info("logging trials to MLflow at %s (experiment %r, run %s)", uri, study_name, self._parent_run_id)

    @staticmethod
    def _experiment(client, name: str) -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # another worker created it a moment ago
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _parent_run(self, client, run_dir: str) -> str:
        """The run directory's MLflow run: the existing one (a resumed search, another worker) or a new one."""
        runs = client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` != ''",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
        )
        for run in runs:
            if run.data.tags.get(RUN_DIR_TAG) == run_dir and PARENT_TAG not in run.data.tags:
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        run = client.create_run(self._experiment_id, run_name=Path(run_dir).name, tags={RUN_DIR_TAG: run_dir})
        return run.info.run_id

    def _log_safely(self, what: str, log: Callable[[], None]) -> None:
        """Run ``log`` if tracking is on; a tracking error is a warning: it must never cost the search its work."""
        if self._client is None:
            return
        try:
            log()
        except Exception as exc:  # noqa: BLE001 - the results are on disk whatever MLflow says
            logger.warning("could not log %s to MLflow: %s", what, first_line(exc))

    @hookimpl
    def trial_finished(self, result: "TrialResult") -> None:
        self._log_safely(f"trial {result.trial_number}", lambda: self._log_trial(result))

    def _log_trial(self, result: "TrialResult") -> None:
        from mlflow.entities import Metric, Param

        client = self._client
        tags = {
            PARENT_TAG: self._parent_run_id,
            TRIAL_TAG: str(result.trial_number),
            "state": result.state,
            "stop_reason": result.stop_reason,
            RUN_DIR_TAG: self._run_dir,
        }
        if result.error:
            tags["error"] = result.error[:5000]
        run = client.create_run(self._experiment_id, run_name=f"trial {result.trial_number}", tags=tags)
        params = [Param(key, str(value)) for key, value in flatten(result.config.to_dict()).items()]
        # Epoch histories as steps; timestamps in milliseconds, as MLflow wants them.
        now = run.info.start_time
        metrics = []
        for record in result.history:
            for name in ("val_accuracy", "val_loss", "train_loss"):
                metrics.append(Metric(name, float(getattr(record, name)), now, record.epoch))
        totals = {
            "best_val_accuracy": result.best_val_accuracy,
            "seconds": result.seconds,
            "cpu_seconds": result.cpu_seconds,
            "samples_seen": result.samples_seen,
            "epochs_run": len(result.history),
        }
        metrics += [Metric(name, float(value), now, 0) for name, value in totals.items() if value is not None]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        status = "FAILED" if result.state == "FAIL" else "FINISHED"  # a pruned trial finished early, by design
        client.set_terminated(run.info.run_id, status=status)

    @hookimpl
    def search_finished(self, outcome: "SearchOutcome") -> None:
        self._log_safely("the best model", lambda: self._log_outcome(outcome))

    def _log_outcome(self, outcome: "SearchOutcome") -> None:
        client, run_id, run_dir = self._client, self._parent_run_id, outcome.run_dir
        client.log_artifacts(run_id, str(run_dir / "best_model"), "best_model")
        for name in RESULT_FILES:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        if (run_dir / "plots").is_dir():
            client.log_artifacts(run_id, str(run_dir / "plots"), "plots")
        metrics = {
            "best_val_accuracy": outcome.best_val_accuracy,
            **{f"test_{name}": value for name, value in (outcome.test_metrics or {}).items()},
        }
        for name, value in metrics.items():
            client.log_metric(run_id, name, float(value))
        # Tags, not parameters: a resumed search may find a better trial, and MLflow's parameters never change.
        client.set_tag(run_id, "best_trial", str(outcome.best_trial))
        for name, value in outcome.best_params.items():
            client.set_tag(run_id, f"best.{name}", str(value))
        client.set_terminated(run_id, status="FINISHED")
        logger.info("logged the best model (trial %d) to MLflow run %s", outcome.best_trial, run_id)


#: the object the entry point names and pluggy registers: one tracker per process
tracker = MlflowTracker()
