"""The report people open: report.html and plots/ after a real search, rebuilt from the study alone,
rendered by a real headless Chromium, and the study served by optuna-dashboard.

One small real search (digits at 32 px, two offline ImageNet backbones, pre-ranking on, 4 trials of at
most 2 epochs; about 15 s on 2 cores) is shared by the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix

import automl_tl
from automl_tl import InputOptions, SearchConfig, run_search
from automl_tl.cli import main
from automl_tl.errors import AutomlTLError
from automl_tl.results.html_report import PLOT_FILES, write_report
from automl_tl.results.report import TEST_EVALUATION_ATTR, TRANSFERABILITY_ATTR, leaderboard
from automl_tl.train.executor import Executor

BACKBONES = ("mobilenetv2_100", "tf_efficientnet_lite0")
ALWAYS_DRAWN = {
    "leaderboard.png",
    "history.png",
    "cost.png",
    "trained_groups.png",
    "confusion_matrix.png",
    "per_class.png",
    "transferability.png",
    "reliability.png",  # (the kept model's calibration on the test set)
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_bundle):
    """A finished search and its study (read back from the journal, as a later process would)."""
    run_dir = tmp_path_factory.mktemp("report-run")
    config = SearchConfig(
        backbones=BACKBONES,
        n_trials=4,
        seed=0,
        max_epochs=2,
        max_trained_groups=2,
        input_options=InputOptions(image_size=32),
    )
    outcome = run_search(digits_bundle, config, run_dir, Executor(show_progress=False))
    return outcome, optuna.load_study(study_name="automl_tl", storage=journal(run_dir / "study.journal"))


def journal(path: Path) -> optuna.storages.BaseStorage:
    return optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


class _Page(HTMLParser):
    """What a test needs from the page: its images' sources, other links to resources, the leaderboard rows."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.resources: list[str] = []  # any src/href that would load something
        self.leaderboard_rows: list[list[str]] = []
        self._in_board = self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif attrs.get("src") or (attrs.get("href") and tag in ("link", "a", "script")):
            self.resources.append(attrs.get("src") or attrs.get("href"))
        if tag == "table" and attrs.get("id") == "leaderboard":
            self._in_board = True
        elif tag == "tbody" and self._in_board:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.leaderboard_rows.append(self._row)
            self._row = None
        elif tag == "table" and self._in_board:
            self._in_board = self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_a_search_writes_a_self_contained_report_with_its_figures(run):
    outcome, study = run
    run_dir = outcome.run_dir
    text = (run_dir / "report.html").read_text()
    page = _Page(text)
    # self-contained: every image is an embedded PNG, nothing else is loaded from anywhere
    assert page.resources == []
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)

    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    expected = ALWAYS_DRAWN | ({"importance.png"} if complete >= 3 else set())
    assert {p.name for p in (run_dir / "plots").iterdir()} == expected
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.images]
    for name in expected:  # each figure on disk is a real PNG, and is the one embedded in the page
        png = (run_dir / "plots" / name).read_bytes()
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200, name
        assert png in embedded, name
    assert len(embedded) == len(expected)
    if complete < 3:
        assert "need at least 3 complete trials" in text

    # the leaderboard table: one row per trial, best first, the same values as leaderboard.csv
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(page.leaderboard_rows) == len(board) == 4
    assert [int(row[0]) for row in page.leaderboard_rows] == board["trial"].tolist()
    assert [float(row[2]) for row in page.leaderboard_rows] == pytest.approx(board["val_score"].tolist(), abs=1e-4)
    assert [float(row[3]) for row in page.leaderboard_rows] == pytest.approx(board["val_accuracy"].tolist(), abs=1e-4)
    assert [row[4] for row in page.leaderboard_rows] == board["backbone"].tolist()
    # the best model and its test metrics are on the page
    assert f"{outcome.test_metrics['accuracy']:.4f}" in text
    assert "optuna-dashboard study.journal" in text


def test_the_study_holds_the_test_evaluation_and_the_ranking(run, digits_bundle):
    outcome, study = run
    evaluation = study.user_attrs[TEST_EVALUATION_ATTR]
    assert evaluation["trial"] == outcome.best_trial
    assert evaluation["metrics"] == outcome.test_metrics
    assert evaluation["classes"] == [str(c) for c in digits_bundle.classes]
    # the stored confusion matrix is the saved model's on the test set, computed here independently
    predictor = automl_tl.load(outcome.run_dir)
    predicted = predictor.predict(list(digits_bundle.test.inputs))
    truth = [digits_bundle.classes[i] for i in digits_bundle.test.labels]
    expected = confusion_matrix(truth, list(predicted), labels=digits_bundle.classes)
    assert np.array_equal(np.array(evaluation["confusion_matrix"]), expected)
    assert np.trace(expected) / expected.sum() == pytest.approx(outcome.test_metrics["accuracy"])
    per_class = pd.DataFrame(evaluation["per_class"])
    assert per_class["support"].tolist() == expected.sum(axis=1).tolist()
    assert per_class["recall"].tolist() == pytest.approx((np.diag(expected) / expected.sum(axis=1)).tolist(), abs=1e-4)
    # the ranking's scores are those of transferability.csv
    stored = pd.DataFrame(study.user_attrs[TRANSFERABILITY_ATTR]["scores"])
    on_disk = pd.read_csv(outcome.run_dir / "transferability.csv")
    assert stored["backbone"].tolist() == on_disk["backbone"].tolist()
    assert stored["logme"].tolist() == pytest.approx(on_disk["logme"].tolist())
    json.dumps(study.user_attrs)  # everything stored is plain JSON


def test_report_rebuilds_from_the_study_alone(run, tmp_path, capsys):
    outcome, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(outcome.run_dir, copy)
    original_page = (copy / "report.html").read_bytes()
    original_plots = {p.name: p.read_bytes() for p in (copy / "plots").iterdir()}
    for path in copy.iterdir():  # everything but the study: the CSVs, the JSON, the model, the report
        if path.name != "study.journal":
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    assert main(["report", str(copy)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (copy / "report.html").read_bytes() == original_page
    assert {p.name: p.read_bytes() for p in (copy / "plots").iterdir()} == original_plots


def test_report_from_a_database_study(run, tmp_path, capsys):
    outcome, _ = run
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.copy_study(
        from_study_name="automl_tl",
        from_storage=journal(outcome.run_dir / "study.journal"),
        to_storage=url,
        to_study_name="pets",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main(["report", str(elsewhere), "--storage", url, "--study", "pets"]) == 0
    page = (elsewhere / "report.html").read_text()
    original = (outcome.run_dir / "report.html").read_text()
    assert f"optuna-dashboard {url}" in page and "automl_tl report: study pets" in page
    # the same trials, figures and test evaluation as the journal's report
    assert _Page(page).leaderboard_rows == _Page(original).leaderboard_rows
    assert _Page(page).images == _Page(original).images
    assert {p.name for p in (elsewhere / "plots").iterdir()} == {p.name for p in (outcome.run_dir / "plots").iterdir()}


def test_report_refuses_bad_input_in_one_line(run, tmp_path, capsys):
    outcome, _ = run
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (str(tmp_path / "missing"),): "run directory not found",
        (str(empty),): "no study in",
        (str(outcome.run_dir), "--study", "nope"): "no study 'nope'",
        (str(empty), "--storage", str(tmp_path / "missing.journal")): "study journal not found",
        (str(empty), "--storage", "ftp://x"): "malformed storage URL",
    }
    for args, expected in cases.items():
        assert main(["report", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("automl-tl: error: ") and expected in err and err.count("\n") == 1, err
    assert not (empty / "study.journal").exists()  # looking did not create a study
    assert main(["report", str(outcome.run_dir), "--study", "nope"]) == 2
    assert "it holds 'automl_tl'" in capsys.readouterr().err


def test_a_run_without_a_best_model_still_gets_a_report(tmp_path, digits_bundle):
    # the whole budget is gone before the first trial: no model, no test evaluation, yet a page
    config = SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=2,
        timeout=1e-3,
        max_epochs=1,
        prerank=False,
        input_options=InputOptions(image_size=32),
    )
    with pytest.raises(AutomlTLError, match="no trial finished"):
        run_search(digits_bundle, config, tmp_path / "run", Executor(show_progress=False))
    text = (tmp_path / "run" / "report.html").read_text()
    assert "No best model was evaluated on the test set" in text
    assert "The study has no trials yet" in text and "Pre-ranking did not run" in text


def test_report_of_failed_and_pruned_trials_says_why_figures_are_missing(tmp_path):
    # a study made by hand with Optuna: what the report draws from trials alone, without a test evaluation
    study = optuna.create_study(
        storage=journal(tmp_path / "study.journal"), study_name="automl_tl", direction="maximize"
    )
    backbone = optuna.distributions.CategoricalDistribution(["a$b", "<c>"])
    strategy = optuna.distributions.CategoricalDistribution(["linear_probe", "full"])
    for value, state, name in ((0.5, "COMPLETE", "a$b"), (None, "FAIL", "<c>"), (None, "PRUNED", "<c>")):
        study.add_trial(
            optuna.trial.create_trial(
                params={"backbone": name, "strategy": "full"},
                distributions={"backbone": backbone, "strategy": strategy},
                value=value,
                state=optuna.trial.TrialState[state],
                user_attrs={"cpu_seconds": 2.0, "best_val_accuracy": 0.25}
                if state == "PRUNED"
                else {"error": "RuntimeError: " + "x" * 200}
                if state == "FAIL"
                else {"cpu_seconds": 1.0},
            )
        )
    path = write_report(study, tmp_path)
    text = path.read_text()
    assert "need at least 3 complete trials; this study has 1" in text
    assert "No test evaluation is stored" in text
    assert "&lt;c&gt;" in text and "<c>" not in text  # user strings are escaped
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "leaderboard.png",
        "history.png",
        "cost.png",
        "trained_groups.png",
    }
    assert set(PLOT_FILES) >= {p.name for p in (tmp_path / "plots").iterdir()}


def test_the_leaderboard_and_the_best_model_say_which_epochs_a_weight_soup_averages(tmp_path):
    # a study made by hand with Optuna: two fine-tunes, the first kept a greedy soup of its epochs 4 and 1
    study = optuna.create_study(
        storage=journal(tmp_path / "study.journal"), study_name="automl_tl", direction="maximize"
    )
    distributions = {
        "backbone": optuna.distributions.CategoricalDistribution(["mobilenetv2_100"]),
        "strategy": optuna.distributions.CategoricalDistribution(["full"]),
    }
    soups = ({"ingredients": [4, 1], "val_score": 0.9, "best_single": 0.85}, {"reason": "no average validated better"})
    for value, soup in zip((0.9, 0.8), soups):
        study.add_trial(
            optuna.trial.create_trial(
                params={"backbone": "mobilenetv2_100", "strategy": "full"},
                distributions=distributions,
                value=value,
                user_attrs={"best_val_accuracy": value, "best_epoch": 4, "weight_soup": soup, "cpu_seconds": 1.0},
            )
        )
    study.set_user_attr(
        TEST_EVALUATION_ATTR, {"trial": 0, "val_accuracy": 0.9, "metrics": {"accuracy": 0.875, "examples": 8}}
    )
    board = leaderboard(study)
    soups = board.set_index("trial")["soup_epochs"]
    assert soups[0] == "4 and 1" and pd.isna(soups[1])  # the second kept its best epoch alone
    text = write_report(study, tmp_path).read_text()
    table = text[text.index('<table id="leaderboard"') :]
    assert "<th>soup_epochs</th>" in table and "<td>4 and 1</td>" in table[: table.index("</table>")]
    best_model = text[text.index("<h3>Best model</h3>") :]
    assert "averaged over epochs 4 and 1 (a greedy weight soup)" in best_model[: best_model.index("</table>")]


# ---------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium command with a fresh profile; skipped without Chromium, except in CI."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is not installed (setup.sh installs it as root)")
        pytest.skip("chromium is not installed")
    command = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    if os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root inside its sandbox
    return command


def test_chromium_renders_the_report_with_every_image_decoded(run, chromium, tmp_path):
    outcome, _ = run
    url = (outcome.run_dir / "report.html").resolve().as_uri()
    dom = subprocess.run([*chromium, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    decoded = int(re.search(r'data-images-decoded="(\d+)"', body).group(1))
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    shown = _Page(dom.stdout)
    assert total == len(shown.images) >= len(ALWAYS_DRAWN)
    assert decoded == total  # every embedded PNG decoded in the browser
    assert len(shown.leaderboard_rows) == 4

    shot = tmp_path / "report.png"
    taken = subprocess.run(
        [*chromium, "--window-size=1280,2400", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        pixels = np.asarray(image.convert("L"))
    assert (pixels < 128).mean() > 0.01  # text and plot lines, not a blank page
    assert len(np.unique(pixels)) > 50  # anti-aliased text and the figures' colours


# ---------------------------------------------------------------- optuna-dashboard


def _wsgi_get(app, path: str) -> tuple[str, dict]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def test_optuna_dashboard_serves_the_run_storage(run):
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    outcome, study = run
    # the journal's path as a string, exactly as 'optuna-dashboard RUN_DIR/study.journal' receives it
    app = optuna_dashboard.wsgi(str(outcome.run_dir / "study.journal"))
    status, listing = _wsgi_get(app, "/api/studies")
    assert status.startswith("200")
    [summary] = listing["study_summaries"]
    assert summary["study_name"] == "automl_tl" and summary["directions"] == ["maximize"]
    status, detail = _wsgi_get(app, f"/api/studies/{summary['study_id']}")
    assert status.startswith("200")
    assert len(detail["trials"]) == len(study.trials)
    assert detail["best_trials"][0]["number"] == study.best_trial.number


def test_the_optuna_dashboard_command_opens_the_journal(run):
    pytest.importorskip("optuna_dashboard")
    outcome, _ = run
    command = Path(sys.executable).with_name("optuna-dashboard")
    assert command.is_file(), "optuna-dashboard is installed with the test extra"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(command), str(outcome.run_dir / "study.journal"), "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        listing, deadline = None, time.monotonic() + 60
        while listing is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    listing = json.loads(answer.read())
            except OSError:
                time.sleep(0.3)
        assert listing is not None, server.stderr.read().decode() if server.poll() is not None else "no answer"
        assert [s["study_name"] for s in listing["study_summaries"]] == ["automl_tl"]
    finally:
        server.terminate()
        server.wait(timeout=30)
