"""``automl-tl search --config FILE``: a YAML or TOML file gives the same options as the flags.

The searches are real (mobilenetv2_100 at 32 pixels, linear-probe trials on real digits written as
PNG files) and run through ``automl_tl.cli.main`` in this process; the mistakes never start a search.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

PREFIX = "automl-tl: error:"

YAML_JOB = """\
data: digits            # relative to this file's folder
backbones: [mobilenetv2_100]
trials: 2
max-epochs: 1
image-size: 32
strategies: linear_probe
heads: [linear, mlp]
seed: 3
output: run_yaml
"""

TOML_JOB = """\
data = "digits"
backbones = ["mobilenetv2_100"]
trials = 2
max_epochs = 1
image_size = 32
strategies = ["linear_probe"]
heads = ["linear", "mlp"]
seed = 3
output = "run_toml"
"""


def run_main(argv: list, capsys) -> tuple[int, str, str]:
    from automl_tl.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_digits_folder(root: Path, frame: pd.DataFrame, per_class: int) -> Path:
    for label, group in frame.groupby("label"):
        (root / f"digit{label}").mkdir(parents=True)
        for i, image in enumerate(group["image"].head(per_class)):
            Image.fromarray(image).save(root / f"digit{label}" / f"{i}.png")
    return root


@pytest.fixture
def job_folder(tmp_path, digits_frame, monkeypatch):
    """A folder with the digits and the two job files; the tests run from another folder."""
    folder = tmp_path / "job"
    write_digits_folder(folder / "digits", digits_frame, per_class=10)
    (folder / "job.yaml").write_text(YAML_JOB)
    (folder / "job.toml").write_text(TOML_JOB)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


def test_a_yaml_and_a_toml_file_give_the_same_run(job_folder, capsys):
    for name in ("job.yaml", "job.toml"):
        code, out, err = run_main(["search", "--config", job_folder / name], capsys)
        assert code == 0, err
        assert "best trial" in out
    runs = [job_folder / "run_yaml", job_folder / "run_toml"]  # relative paths: next to the file, not the cwd
    assert not (Path.cwd() / "run_yaml").exists()
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    manifests = [json.loads((run / "manifest.json").read_text()) for run in runs]
    boards = [pd.read_csv(run / "leaderboard.csv") for run in runs]

    assert manifests[0]["search"] == manifests[1]["search"]
    settings = manifests[0]["search"]
    assert settings["backbones"] == ["mobilenetv2_100"] and settings["n_trials"] == 2
    assert settings["max_epochs"] == 1 and settings["seed"] == 3 and settings["strategies"] == ["linear_probe"]
    assert settings["input_options"]["image_size"] == 32 and settings["heads"] == ["linear", "mlp"]
    assert manifests[0]["data"]["source"]["data"] == str((job_folder / "digits").resolve())
    assert summaries[0]["data"] == summaries[1]["data"]  # the same split of the same files
    assert summaries[0]["best_params"] == summaries[1]["best_params"]
    columns = ["trial", "backbone", "strategy", "head", "head_lr"]
    pd.testing.assert_frame_equal(boards[0][columns], boards[1][columns])
    assert len(boards[0]) == 2


def test_flags_override_the_file(job_folder, capsys, tmp_path):
    output = tmp_path / "override"
    code, out, err = run_main(
        ["search", "--config", job_folder / "job.yaml", "--trials", "1", "--heads", "mlp", "--output", output], capsys
    )
    assert code == 0, err
    assert not (job_folder / "run_yaml").exists()  # --output won over the file's output
    board = pd.read_csv(output / "leaderboard.csv")
    assert len(board) == 1 and set(board["head"]) == {"mlp"}  # --trials 1 and --heads mlp won
    settings = json.loads((output / "manifest.json").read_text())["search"]
    assert settings["max_epochs"] == 1 and settings["seed"] == 3  # the file's other options held


def test_switches_take_true_or_false_under_either_name(tmp_path):
    from automl_tl.cli import build_parser
    from automl_tl.config_file import options_from_file

    parser = build_parser()
    search = next(a for a in parser._actions if a.dest == "command").choices["search"]
    job = tmp_path / "job.yaml"
    job.write_text("no-prerank: true\nfeature_cache: false\nworkers: 2\n")
    assert options_from_file(job, search) == {"prerank": False, "feature_cache": False, "workers": 2}
    job.write_text("prerank: false\nno-feature-cache: false\n")
    assert options_from_file(job, search) == {"prerank": False, "feature_cache": True}


def _write(name: str, text: str):
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_text(text)
        return path

    return make


MISTAKES = [
    # (file maker, extra flags, fragments of the one error line; the file's name is checked for every case)
    (_write("job.yaml", "max_epoch: 2\n"), [], ["unknown option 'max_epoch'", "did you mean max-epochs"]),
    (_write("job.toml", "colour = 'red'\n"), [], ["unknown option 'colour'", "expected some of", "max-epochs"]),
    (_write("job.yaml", "max-epochs: 0\n"), [], ["option 'max-epochs'", "expected a number >= 1, got 0"]),
    (_write("job.yaml", "trials: many\n"), [], ["option 'trials'", "expected a number, got 'many'"]),
    (_write("job.toml", "trials = 2.5\n"), [], ["option 'trials'", "expected a whole number, got '2.5'"]),
    (_write("job.yaml", "timeout: .inf\n"), [], ["option 'timeout'", "expected a finite number of seconds"]),
    (_write("job.yaml", "seed: true\n"), [], ["option 'seed'", "expected a number, got True"]),
    (_write("job.yaml", "pruner: fast\n"), [], ["option 'pruner'", "invalid choice 'fast'", "successive_halving"]),
    (_write("job.yaml", "strategies: [full, freeze]\n"), [], ["option 'strategies'", "invalid choice 'freeze'"]),
    (_write("job.yaml", "backbones: []\n"), [], ["option 'backbones'", "expected a list of values"]),
    (_write("job.yaml", "study-name: 2024\n"), [], ["option 'study-name'", "expected text, got 2024"]),
    (_write("job.yaml", "no-prerank: yes please\n"), [], ["option 'no-prerank'", "expected true or false"]),
    (_write("job.yaml", "timeout:\n"), [], ["option 'timeout' has no value"]),
    (
        _write("job.yaml", "max-epochs: 2\nmax_epochs: 3\n"),
        [],
        ["option 'max_epochs' is given twice (as 'max-epochs' too)"],
    ),
    (_write("job.yaml", "config: other.yaml\n"), [], ["unknown option 'config'"]),
    (_write("job.yaml", "image-size: 8\n"), [], ["image size must be at least 16 pixels, got 8"]),
    (_write("job.yaml", "min-epochs: 5\n"), ["--max-epochs", "2"], ["1 <= min (5) <= max (2)"]),
    (_write("job.yaml", "storage: mysql:/nowhere\n"), [], ["malformed storage URL 'mysql:/nowhere'"]),
    (_write("job.yaml", "trials: [1\n"), [], ["cannot parse", "as YAML", "line 2"]),
    (_write("job.toml", "trials = \n"), [], ["cannot parse", "as TOML", "line 1"]),
    (_write("job.yaml", "- trials\n- 2\n"), [], ["holds a list; expected a mapping"]),
    (_write("job.json", "{}\n"), [], ["unknown extension '.json'", "expected .yaml, .yml or .toml"]),
    (lambda folder: folder / "missing.yaml", [], ["config file not found"]),
]


@pytest.mark.parametrize("make, flags, expected", MISTAKES, ids=[f"{i}" for i in range(len(MISTAKES))])
def test_file_mistakes_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch, make, flags, expected):
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    code, _, err = run_main(["search", "--config", path, *flags], capsys)
    assert "Traceback" not in err and code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert str(path) in lines[0], lines[0]
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not (tmp_path / "runs").exists()  # no search started


def test_a_mistake_of_the_flags_is_not_blamed_on_the_file(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("max-epochs: 2\n")
    code, _, err = run_main(["search", "--config", job, "--image-size", "8"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and line == f"{PREFIX} image size must be at least 16 pixels, got 8"
    code, _, err = run_main(["search", "--config", job, "--max-epochs", "0"], capsys)
    assert code == 2 and "argument --max-epochs: expected a number >= 1, got 0" in err
