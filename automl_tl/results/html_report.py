"""``RUN_DIR/report.html``: one self-contained page about a search, drawn from its Optuna study alone.

Everything on the page comes from the study (trials, their parameters and user attributes; the study's
user attributes: the best model's test evaluation, the transferability scores, the data's summary), so
``automl-tl report RUN_DIR`` rebuilds the same page after the CSV and JSON files are gone, or from a
database study on another machine. The figures (:mod:`automl_tl.results.plots`) are also written as PNG files
to ``RUN_DIR/plots/`` and embedded in the page as base64 data URIs; the CSS is inline and nothing is
fetched, so the file opens offline and can be mailed as it is. A figure that cannot be drawn (too few
trials, no test evaluation, an error) is replaced by a line saying why; it never stops the run.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from automl_tl.config import check_storage_url, is_journal_path
from automl_tl.errors import AutomlTLError, first_line
from automl_tl.files import write_bytes_atomic, write_text_atomic
from automl_tl.layout import JOURNAL_FILE, PLOTS_DIR, REPORT_FILE
from automl_tl.options import DEFAULT_STUDY_NAME
from automl_tl.rank.ranking import with_outcomes
from automl_tl.rank.transferability import SCORES
from automl_tl.results import plots
from automl_tl.results.report import (
    DATA_SUMMARY_ATTR,
    ENSEMBLE_ATTR,
    LEADERBOARD_COLUMNS,
    SELF_TRAINING_ATTR,
    TEST_EVALUATION_ATTR,
    TRANSFERABILITY_ATTR,
    best_accuracy_by_backbone,
    describe_candidates,
    describe_concatenated,
    describe_self_training,
    describe_skipped,
    leaderboard,
    soup_epochs,
)
from automl_tl.storage import mask_password, open_storage
from automl_tl.strategies import current_names, used_parameters

logger = logging.getLogger(__name__)

#: fANOVA on fewer complete trials than this says nothing worth a figure
MIN_IMPORTANCE_TRIALS = 3
#: every figure the report may draw, by file name (stale ones are removed when a figure is not drawn)
PLOT_FILES = (
    "leaderboard.png",
    "history.png",
    "importance.png",
    "cost.png",
    "trained_groups.png",
    "confusion_matrix.png",
    "per_class.png",
    "transferability.png",
)
#: figures earlier versions drew under another name (now trained_groups.png): removed when a report is rebuilt
RETIRED_PLOT_FILES = ("freeze_depth.png",)


def write_report(study: optuna.Study, run_dir: str | Path, storage: str | None = None) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/plots/*.png`` from ``study``; return the page's path.

    ``storage`` (the study's storage URL or journal path; None for ``run_dir/study.journal``) is used
    only to print the matching ``optuna-dashboard`` command on the page.
    """
    run_dir = Path(run_dir)
    page = _Page(run_dir / PLOTS_DIR)
    board = leaderboard(study)
    attrs = study.user_attrs
    evaluation = attrs.get(TEST_EVALUATION_ATTR)

    page.add(_overview(study, board, attrs, evaluation, _dashboard_command(storage, run_dir)))
    page.add("<h2>Leaderboard</h2>")
    if board.empty:
        page.note("The study has no trials yet.")
    else:
        metric = (study.user_attrs.get("search_space") or {}).get("metric", "accuracy")
        page.add(_leaderboard_table(board, None if evaluation is None else evaluation.get("trial"), metric))
        page.figure("leaderboard.png", "Validation accuracy of every trial", lambda: plots.leaderboard_chart(board))
    page.add("<h2>Optimisation history</h2>")
    page.figure(
        "history.png",
        "Optimisation history",
        lambda: plots.history_chart(board),
        missing=None if _has_values(board) else "No trial has a validation accuracy yet.",
    )
    page.add("<h2>Parameter importances</h2>")
    importances, why_not = parameter_importances(study)
    page.figure("importance.png", "Parameter importances", lambda: plots.importance_chart(importances), missing=why_not)
    page.add("<h2>Cost: best accuracy per backbone against CPU-seconds</h2>")
    page.figure(
        "cost.png",
        "Best validation accuracy per backbone against CPU-seconds",
        lambda: plots.cost_chart(board),
        missing=None if _has_values(board) else "No trial has a validation accuracy yet.",
    )
    page.add("<h2>Trained layer groups</h2>")
    page.figure(
        "trained_groups.png",
        "Trained layer groups against validation accuracy",
        lambda: plots.trained_groups_chart(board),
        missing=None if _has_values(board) else "No trial has a validation accuracy yet.",
    )
    self_training = describe_self_training(attrs.get(SELF_TRAINING_ATTR))
    if self_training is not None:  # only when there were unlabelled inputs
        page.add("<h2>Self-training on the unlabelled inputs</h2>")
        page.add(f"<p>{html.escape(self_training)}.</p>")
    page.add("<h2>Ensemble</h2>")
    _ensemble_section(page, attrs.get(ENSEMBLE_ATTR))
    page.add("<h2>Best model on the test set</h2>")
    _test_section(page, evaluation)
    page.add("<h2>Transferability pre-ranking</h2>")
    _transferability_section(page, attrs.get(TRANSFERABILITY_ATTR), board)
    page.remove_stale_plots()

    title = f"automl_tl report: study {study.study_name}"
    path = run_dir / REPORT_FILE
    write_text_atomic(path, _document(title, page.html()))
    return path


def rebuild_report(run_dir: str | Path, storage: str | None = None, study_name: str | None = None) -> Path:
    """Rebuild ``run_dir/report.html`` and its plots from the study alone (``automl-tl report``).

    ``storage`` defaults to ``run_dir/study.journal`` and ``study_name`` to ``automl_tl``. A missing run
    directory, a run directory without a study, or a study name the storage does not hold raise
    :class:`~automl_tl.errors.AutomlTLError` with one line saying what was expected.
    """
    run_dir = Path(run_dir)
    name = study_name or DEFAULT_STUDY_NAME
    if not run_dir.is_dir():
        raise AutomlTLError(f"run directory not found: {run_dir}")
    if storage is None:
        if not (run_dir / JOURNAL_FILE).is_file():
            raise AutomlTLError(
                f"no study in {run_dir}: {JOURNAL_FILE} is missing (a run that kept its study in "
                "a database needs --storage URL)"
            )
        shown = str(run_dir / JOURNAL_FILE)
    else:
        check_storage_url(storage)
        shown = mask_password(storage)
        if is_journal_path(storage) and not Path(storage).is_file():  # opening it would create an empty one
            raise AutomlTLError(f"study journal not found: {storage}")
    try:
        opened = open_storage(storage, run_dir, repair=False)  # a report only reads: the journal stays as it is
        study = optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        names = optuna.get_all_study_names(opened)
        raise AutomlTLError(
            f"no study {name!r} in {shown}; it holds "
            f"{', '.join(map(repr, names)) if names else 'no study'} (give --study NAME)"
        ) from None
    except AutomlTLError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt journal, a database that is not Optuna's
        raise AutomlTLError(f"cannot read the study in {shown}: {first_line(exc, 200)}") from None
    return write_report(study, run_dir, storage=storage)


def parameter_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's fANOVA importance of each parameter (seeded, so a rebuilt report is the same), or None and
    a sentence saying why there is none (too few complete trials, or Optuna's own refusal)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, (
            f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials; "
            f"this study has {len(complete)}."
        )
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(
            _under_current_names(study, complete), evaluator=evaluator
        )
    except Exception as exc:  # noqa: BLE001 - e.g. no parameter common to the complete trials
        return None, f"Optuna could not compute parameter importances: {first_line(exc, 300)}"
    if not importances:
        return None, "No searched parameter is shared by the complete trials, so none can be compared."
    return {name: float(value) for name, value in importances.items()}, None


def _under_current_names(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    """``study``, or, when some of its ``complete`` trials hold a parameter under the name an earlier version
    gave it, an in-memory study of the complete trials under today's names (:func:`current_names`): fANOVA
    compares only the parameters every trial holds, and would otherwise leave that one out (or show its old name)."""
    if all(current_names(t.params) == t.params for t in complete):
        return study
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory"
    try:
        renamed = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    renamed.add_trials(
        [
            optuna.trial.create_trial(
                state=t.state,
                values=t.values,
                params=current_names(t.params),
                distributions=current_names(t.distributions),
            )
            for t in complete
        ]
    )
    return renamed


# ---------------------------------------------------------------- the page


class _Page:
    """The page's body, built in order; figures are drawn, saved to ``plots_dir`` and embedded."""

    def __init__(self, plots_dir: Path):
        self.plots_dir = plots_dir
        self.parts: list[str] = []
        self.drawn: set[str] = set()

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, file_name: str, alt: str, draw: Callable[[], Any], missing: str | None = None) -> None:
        """Draw a figure, or say why not: ``missing`` (known beforehand) or the error the drawing raised."""
        if missing is not None:
            self.note(missing)
            return
        try:
            png = plots.png_bytes(draw())
        except Exception as exc:  # noqa: BLE001 - a figure must never cost the run its report
            logger.warning(
                "could not draw %s: %s", file_name, first_line(exc), exc_info=logger.isEnabledFor(logging.DEBUG)
            )
            self.note(f"This figure could not be drawn: {type(exc).__name__}: {first_line(exc, 300)}")
            return
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.plots_dir / file_name, png)
        self.drawn.add(file_name)
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(
            f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{PLOTS_DIR}/{file_name}</figcaption></figure>"
        )

    def remove_stale_plots(self) -> None:
        """Delete figures an earlier report drew that this one did not (they would describe another state)."""
        for name in (*PLOT_FILES, *RETIRED_PLOT_FILES):
            if name not in self.drawn:
                (self.plots_dir / name).unlink(missing_ok=True)

    def html(self) -> str:
        return "\n".join(self.parts)


def _has_values(board: pd.DataFrame) -> bool:
    return not board.empty and board["val_accuracy"].notna().any()


def _dashboard_command(storage: str | None, run_dir: Path) -> str:
    """The ``optuna-dashboard`` command that opens this study (run from the run directory for a journal)."""
    if storage is None or (is_journal_path(storage) and Path(storage).resolve() == (run_dir / JOURNAL_FILE).resolve()):
        return f"optuna-dashboard {JOURNAL_FILE}"
    return f"optuna-dashboard {storage if is_journal_path(storage) else mask_password(storage)}"


def _number(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return format(value, spec)


def _key_values(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _overview(
    study: optuna.Study, board: pd.DataFrame, attrs: dict[str, Any], evaluation: dict[str, Any] | None, dashboard: str
) -> str:
    data = attrs.get(DATA_SUMMARY_ATTR) or {}
    classes = attrs.get("classes") or []
    states = board["state"].value_counts().to_dict() if not board.empty else {}
    rows = [("study", study.study_name)]
    if data:
        rows.append(
            (
                "data",
                f"{data.get('modality', '?')}: {data.get('train', '?')} train / {data.get('val', '?')} "
                f"validation / {data.get('test', '?')} test examples, {len(classes)} classes",
            )
        )
    elif classes:
        rows.append(("classes", str(len(classes))))
    skipped = describe_skipped(data.get("skipped"))
    if skipped:
        rows.append(("rows left out", skipped))
    rows.append(("trials", ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none"))
    if not board.empty:
        rows.append(
            (
                "time spent in trials",
                f"{board['seconds'].astype(float).fillna(0).sum():.1f} s wall, "
                f"{board['cpu_seconds'].astype(float).fillna(0).sum():.1f} CPU-seconds",
            )
        )
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    if ends:
        rows.append(("last trial finished", max(ends).strftime("%Y-%m-%d %H:%M:%S")))
    parts = ["<h2>Summary</h2>", _key_values(rows)]
    if evaluation is not None:
        trial = evaluation.get("trial")
        metrics = evaluation.get("metrics") or {}
        trials = study.get_trials(deepcopy=False)
        kept = trials[trial] if trial is not None and 0 <= trial < len(trials) else None
        params = kept.params if kept is not None else {}
        best = [("trial", str(trial)), ("validation accuracy", _number(evaluation.get("val_accuracy"), ".4f"))]
        best += [
            (f"test {name.replace('_', ' ')}", _number(metrics.get(name), ".4f"))
            for name in ("accuracy", "balanced_accuracy", "macro_f1")
        ]
        best.append(("test examples", str(metrics.get("examples", ""))))
        best += [(name, _param(value)) for name, value in used_parameters(params).items()]
        soup = soup_epochs(kept.user_attrs.get("weight_soup")) if kept is not None else None
        if soup:
            best.append(("weights", f"averaged over epochs {soup} (a greedy weight soup)"))
        parts += ["<h3>Best model</h3>", _key_values(best)]
    else:
        parts.append(
            '<p class="note">No best model was evaluated on the test set: no trial completed, or the '
            "run stopped before its end. The trials so far are below.</p>"
        )
    parts.append(f"<p>Browse the study interactively (from this folder): <code>{html.escape(dashboard)}</code></p>")
    return "\n".join(parts)


def _param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.2e}"
    return str(value)


#: how each leaderboard column is shown (format spec); others as text
_FORMATS = {
    "backbone_lr": ".2e",
    "head_lr": ".2e",
    "layer_decay": ".3f",
    "head_dropout": ".2f",
    "val_score": ".4f",
    "val_accuracy": ".4f",
    "val_loss": ".4f",
    "seconds": ".1f",
    "cpu_seconds": ".1f",
}
_NUMERIC = {"trial", "trained_groups", "head_hidden", "best_epoch", "epochs_run", *_FORMATS}


#: the leaderboard's columns as the page shows them: what a reader compares first on the left
_FIRST_COLUMNS = ["trial", "state", "val_score", "val_accuracy", "backbone", "strategy"]
_SHOWN_COLUMNS = [*_FIRST_COLUMNS, *[c for c in LEADERBOARD_COLUMNS if c not in _FIRST_COLUMNS]]


def _leaderboard_table(board: pd.DataFrame, best_trial: int | None, metric: str = "accuracy") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _SHOWN_COLUMNS)
    body = []
    for row in board.to_dict("records"):
        cells = []
        for column in _SHOWN_COLUMNS:
            value = row[column]
            if column in _FORMATS:
                text = _number(value, _FORMATS[column])
            elif value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                text = ""
            else:
                text = str(value)
            if column == "error" and len(text) > 80:
                cells.append(f'<td class="error" title="{html.escape(text)}">{html.escape(text[:77])}...</td>')
                continue
            css = ' class="num"' if column in _NUMERIC else (' class="error"' if column == "error" else "")
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        css = ' class="best"' if row["trial"] == best_trial else f' class="{str(row["state"]).lower()}"'
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table id="leaderboard" class="grid"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f'<p class="legend">val_score is the validation {html.escape(metric.replace("_", " "))} the search '
        "selected by; the best first (ties: the lower val_loss), the best model's row highlighted. Pruned "
        "trials show the score they had when stopped; soup_epochs: the epochs a fine-tune's weights average, "
        "when a greedy weight soup of them validated better than its best epoch alone.</p>"
    )


def _ensemble_section(page: _Page, ensemble: dict[str, Any] | None) -> None:
    """Whether the search kept an ensemble, why, and its members (the test section is then the ensemble's)."""
    if not ensemble:
        page.note("No ensemble was tried (a search of an earlier version, or one that has not finished).")
        return
    reason = html.escape(str(ensemble.get("reason", "")))
    concatenated = describe_concatenated(ensemble)
    if not ensemble.get("kept"):
        page.add(f"<p>None kept: {reason}.</p>")
        if concatenated:
            page.add(f"<p>{html.escape(concatenated)}</p>")
        return
    page.add(
        f"<p>Kept, and what <code>automl_tl.load()</code> returns: the weighted average of the class "
        f"probabilities of {len(ensemble['members'])} models, chosen by greedy ensemble selection among "
        f"{html.escape(describe_candidates(ensemble))}; {reason}. The test figures below are "
        "the ensemble's.</p>"
    )
    if concatenated:
        page.add(f"<p>{html.escape(concatenated)}</p>")
    members = pd.DataFrame(ensemble["members"], columns=["trial", "backbone", "strategy", "weight"])
    page.add(members.to_html(index=False, border=0, classes="grid", escape=True))


def _test_section(page: _Page, evaluation: dict[str, Any] | None) -> None:
    if evaluation is None:
        page.note("No test evaluation is stored in the study (the search has not finished with a best model).")
        return
    matrix, classes, per_class = (
        evaluation.get("confusion_matrix"),
        evaluation.get("classes"),
        evaluation.get("per_class"),
    )
    page.figure(
        "confusion_matrix.png",
        "Confusion matrix on the test set",
        lambda: plots.confusion_chart(matrix, classes),
        missing=None if matrix is not None and classes else "The confusion matrix is kept only for up to 50 classes.",
    )
    calibration = evaluation.get("calibration")
    if calibration:
        page.add(
            f"<p>Probabilities: temperature {calibration['temperature']:.3f} (fitted on validation); expected "
            f"calibration error on the test set {_number(calibration.get('ece_before'), '.4f')} as trained, "
            f"{_number(calibration.get('ece_after'), '.4f')} calibrated.</p>"
        )
        page.figure(
            "reliability.png",
            "Reliability diagram on the test set",
            lambda: plots.reliability_chart(
                calibration.get("reliability_before") or [],
                calibration.get("reliability_after") or [],
                float(calibration["temperature"]),
            ),
        )
    if not per_class:
        page.note("Per-class precision and recall are kept only for up to 200 classes.")
        return
    if len(per_class) <= 50:
        page.figure("per_class.png", "Precision and recall per class", lambda: plots.per_class_chart(per_class))
    rows = "".join(
        f'<tr><td>{html.escape(str(r["class"]))}</td><td class="num">{r["precision"]:.4f}</td>'
        f'<td class="num">{r["recall"]:.4f}</td><td class="num">{r["f1"]:.4f}</td>'
        f'<td class="num">{r["support"]}</td></tr>'
        for r in per_class
    )
    page.add(
        '<table id="per-class" class="grid"><thead><tr><th>class</th><th>precision</th><th>recall</th>'
        f"<th>F1</th><th>support</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _transferability_section(page: _Page, stored: dict[str, Any] | None, board: pd.DataFrame) -> None:
    if not stored or not stored.get("scores"):
        page.note("Pre-ranking did not run for this study (--no-prerank, or a study made before it was stored).")
        return
    ranking = pd.DataFrame(stored["scores"])
    table, taus = with_outcomes(ranking, best_accuracy_by_backbone(board) if not board.empty else {})
    scores = [name for name in SCORES if name in table.columns]
    columns = ["rank", "backbone", *scores, "best_val_accuracy"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for row in table.to_dict("records"):
        cells = [f'<td class="num">{_number(row["rank"], ".0f")}</td>', f"<td>{html.escape(str(row['backbone']))}</td>"]
        cells += [f'<td class="num">{_number(row[c], ".4g")}</td>' for c in scores]
        cells.append(f'<td class="num">{_number(row["best_val_accuracy"], ".4f")}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    page.add(
        f'<table id="transferability" class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    page.add(
        "<p>Kendall tau of each score against the best validation accuracy: "
        + html.escape(", ".join(f"{n} {'n/a' if t is None else f'{t:+.3f}'}" for n, t in taus.items()))
        + "</p>"
    )
    tried = table["best_val_accuracy"].notna().sum()
    page.figure(
        "transferability.png",
        "Transferability score against fine-tuned accuracy",
        lambda: plots.transferability_chart(table, taus, scores),
        missing=None if tried else "No ranked backbone has finished a trial yet.",
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1.5rem 2rem; color: #1d2430; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 2px solid #dde3ea; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
table.kv th { text-align: left; padding: 0.15rem 1.2rem 0.15rem 0; color: #4a5568; font-weight: 600; }
table.kv td { padding: 0.15rem 0; }
table.grid th, table.grid td { border: 1px solid #d5dbe3; padding: 0.2rem 0.4rem; white-space: nowrap; }
table.grid th { background: #eef2f7; position: sticky; top: 0; }
table.grid tbody tr:nth-child(even) { background: #f8fafc; }
table.grid tr.best { background: #fff3c4 !important; font-weight: 600; }
table.grid tr.fail td, table.grid tr.running td { color: #8a94a3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { color: #b42318; white-space: normal; max-width: 22rem; }
div.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e8f0; }
figcaption { font-size: 0.75rem; color: #718096; }
p.note { background: #f1f5f9; border-left: 4px solid #94a3b8; padding: 0.5rem 0.8rem; }
p.legend { font-size: 0.8rem; color: #4a5568; }
code { background: #f1f5f9; padding: 0.1rem 0.3rem; border-radius: 3px; }
"""

# Marks the page once every image has loaded (or failed): data-images-decoded counts those a browser could
# decode. A test (and anyone doubting a copy of the file) can read it from the rendered DOM.
_SCRIPT = """
window.addEventListener("load", function () {
  var decoded = 0;
  for (var i = 0; i < document.images.length; i++) {
    if (document.images[i].complete && document.images[i].naturalWidth > 0) decoded++;
  }
  document.body.setAttribute("data-images-decoded", String(decoded));
  document.body.setAttribute("data-images-total", String(document.images.length));
});
"""


def _document(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
