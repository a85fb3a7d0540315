"""The command line refuses user mistakes with one line on stderr, exit status 2 and no traceback.

Each ``python -m automl_tl.cli`` process spends ~4 s importing torch and scikit-learn, so:

* the cases that show the real entry point end to end (one per kind of failure: data, option,
  backbone, storage, output directory, saved model) run as subprocesses, started together by one
  module fixture so that they share the CPU cores;
* the long list of data mistakes runs through ``automl_tl.cli.main(argv)`` in this process: the same
  parse, dispatch and error handler, with stderr captured; any exception that escapes ``main``
  (what would be a traceback) fails the test.

No case trains a model: every one fails before the first trial.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

PREFIX = "automl-tl: error:"
# flags that keep a search tiny should an error check ever fail to fire
SMALL_SEARCH = ["--backbones", "mobilenetv2_100", "--image-size", "32", "--trials", "1", "--max-epochs", "1"]

# ---------------------------------------------------------------- data on disk


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def image_folder(root: Path, counts: dict[str, int] | None = None) -> Path:
    """root/<class>/<i>.png; by default a valid data set of 2 classes x 4 images."""
    seed = 0
    for name, count in (counts or {"cat": 4, "dog": 4}).items():
        for i in range(count):
            write_png(root / name / f"{i}.png", seed=seed)
            seed += 1
    return root


def csv_data(directory: Path, counts: dict[str, int] | None = None) -> Path:
    """directory/data.csv with relative image paths and a label column (valid as written)."""
    rows, seed = [], 0
    for name, count in (counts or {"cat": 4, "dog": 4}).items():
        for i in range(count):
            write_png(directory / "imgs" / f"{name}{i}.png", seed=seed)
            seed += 1
            rows.append({"image": f"imgs/{name}{i}.png", "label": name})
    path = directory / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def edit_csv(path: Path, edit) -> Path:
    """Rewrite a CSV with ``edit(frame)``."""
    edit(pd.read_csv(path)).to_csv(path, index=False)
    return path


def model_dir(directory: Path) -> Path:
    """A hand-made model directory with a valid config.json and no weights."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format_version": 1, "backbone": {"name": "mobilenetv2_100"}, "classes": ["cat", "dog"],
              "input_column": "image", "input_options": {"image_size": 32}, "preprocessing": {}}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


class CreatesMarker:
    """Unpickling this runs os.mkdir(marker): proof that code ran if the marker appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ---------------------------------------------------------------- running the CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "automl_tl.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def error_line(code: int, stderr: str) -> str:
    """The one error line of a refused command; checks status 2 and that nothing else went wrong."""
    assert "Traceback" not in stderr, stderr
    assert code == 2, f"exit status {code}, stderr:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1, f"expected one '{PREFIX}' line, stderr:\n{stderr}"
    assert lines[-1] == errors[0], f"the error must be the last thing on stderr:\n{stderr}"
    return errors[0]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """``automl_tl.cli.main`` in this process: exit status and stderr (argparse exits by SystemExit)."""
    from automl_tl.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- subprocess cases


def case_data_path_missing(tmp: Path):
    missing = tmp / "no_such_folder"
    return ["search", "--data", missing, *SMALL_SEARCH], ["data path not found", str(missing)]


def case_corrupt_image_in_folder(tmp: Path):
    folder = image_folder(tmp / "pets")
    bad = folder / "dog" / "x.png"
    bad.write_bytes(b"garbage bytes, not a PNG" * 4)
    return ["search", "--data", folder, *SMALL_SEARCH], ["cannot read image file", str(bad)]


def case_zero_trials(tmp: Path):
    return ["search", "--trials", "0"], ["--trials", "expected a number >= 1, got 0"]


def case_unknown_backbone_suggests_close_names(tmp: Path):
    folder = image_folder(tmp / "pets")
    args = ["search", "--data", folder, "--output", tmp / "run", "--backbones", "tf_efficientnet_lit0",
            "--image-size", "32", "--trials", "1", "--max-epochs", "1"]
    return args, ["unknown backbone 'tf_efficientnet_lit0'", "did you mean", "tf_efficientnet_lite0"]


def case_malformed_storage_url(tmp: Path):
    folder = image_folder(tmp / "pets")
    return (["search", "--data", folder, "--output", tmp / "run", "--storage", "foo://bar", *SMALL_SEARCH],
            ["malformed storage URL 'foo://bar'", "sqlite"])


def case_output_below_a_regular_file(tmp: Path):
    folder = image_folder(tmp / "pets")
    blocker = tmp / "somefile"
    blocker.write_text("a file, not a folder")
    output = blocker / "run"
    return (["search", "--data", folder, "--output", output, *SMALL_SEARCH],
            ["cannot write to output directory", str(output)])


def case_predict_run_dir_missing(tmp: Path):
    image_folder(tmp / "new")
    missing = tmp / "no_such_run"
    return (["predict", missing, "--data", tmp / "new", "--output", tmp / "p.csv"],
            ["run directory not found", str(missing)])


def case_predict_pickle_in_safetensors(tmp: Path):
    model = model_dir(tmp / "model")
    marker = tmp / "code_was_executed"
    (model / "model.safetensors").write_bytes(pickle.dumps({"weight": CreatesMarker(marker)}))
    image_folder(tmp / "new")
    return (["predict", model, "--data", tmp / "new", "--output", tmp / "p.csv"],
            ["model.safetensors", "is not a valid safetensors file"])


SUBPROCESS_CASES = {f.__name__[len("case_"):]: f for f in (
    case_data_path_missing, case_corrupt_image_in_folder, case_zero_trials,
    case_unknown_backbone_suggests_close_names, case_malformed_storage_url, case_output_below_a_regular_file,
    case_predict_run_dir_missing, case_predict_pickle_in_safetensors,
)}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every subprocess case, run concurrently: name -> (tmp dir, expected fragments, finished process)."""
    prepared = {}
    for name, build in SUBPROCESS_CASES.items():
        tmp = tmp_path_factory.mktemp(name)
        args, expected = build(tmp)
        prepared[name] = (tmp, args, expected)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=tmp) for name, (tmp, args, _) in prepared.items()}
        return {name: (prepared[name][0], prepared[name][2], future.result()) for name, future in futures.items()}


# argparse errors have their own format ("usage: ...", then "automl-tl search: error: ..."): checked apart
ARGPARSE_CASES = ("zero_trials",)


@pytest.mark.parametrize("name", [n for n in SUBPROCESS_CASES if n not in ARGPARSE_CASES])
def test_cli_subprocess_refuses_with_one_line(cli_results, name):
    _, expected, result = cli_results[name]
    line = error_line(result.returncode, result.stderr)
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert "Traceback" not in result.stdout


def test_cli_subprocess_argparse_rejects_zero_trials(cli_results):
    _, expected, result = cli_results["zero_trials"]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("automl-tl search: error:") and all(f in last for f in expected), last


def test_predict_never_unpickles_model_file(cli_results):
    tmp, _, result = cli_results["predict_pickle_in_safetensors"]
    assert result.returncode == 2
    assert not (tmp / "code_was_executed").exists(), "loading the model ran code from a pickle"


def test_output_directory_is_not_created_for_data_errors(cli_results):
    # a refused search leaves nothing behind in the working directory
    tmp, _, result = cli_results["data_path_missing"]
    assert result.returncode == 2 and not (tmp / "runs").exists()


# ---------------------------------------------------------------- data mistakes through main(argv)


def _missing_label_column(tmp):
    csv = edit_csv(csv_data(tmp), lambda f: f.rename(columns={"label": "kind"}))
    return [csv], ["label column 'label' not found", str(csv), "columns: image, kind"]


def _missing_input_column(tmp):
    csv = csv_data(tmp)
    return [csv, "--input-column", "path"], ["input column 'path' not found", str(csv), "columns: image, label"]


def _empty_csv(tmp):
    csv = tmp / "empty.csv"
    csv.write_bytes(b"")
    return [csv], ["cannot read CSV file", str(csv)]


def _zero_rows(tmp):
    csv = tmp / "header.csv"
    csv.write_text("image,label\n")
    return [csv], [str(csv), "holds no rows"]


def _one_class(tmp):
    csv = csv_data(tmp, {"cat": 5})
    return [csv], ["1 class", "'cat'", "at least 2"]


def _small_class(tmp):
    csv = csv_data(tmp, {"cat": 5, "dog": 2})
    return [csv], ["class 'dog'", "2 example(s)", "at least 3"]


def _missing_image(tmp):
    csv = csv_data(tmp)
    (tmp / "imgs" / "dog2.png").unlink()
    return [csv], ["image file not found", str(tmp / "imgs" / "dog2.png")]


def _garbage_image(tmp):
    csv = csv_data(tmp)
    (tmp / "imgs" / "cat1.png").write_bytes(os.urandom(300))
    return [csv], ["cannot read image file", str(tmp / "imgs" / "cat1.png")]


def _truncated_png(tmp):
    csv = csv_data(tmp)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp / "imgs" / "cat3.png").write_bytes(buffer.getvalue()[:-len(buffer.getvalue()) // 3])
    return [csv], ["cannot read image file", str(tmp / "imgs" / "cat3.png")]


def _huge_bmp_header(tmp):
    csv = csv_data(tmp)
    bad = tmp / "imgs" / "huge.bmp"
    bad.write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
                    + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 2835, 2835, 0, 0))
    edit_csv(csv, lambda f: f.assign(image=["imgs/huge.bmp"] + list(f["image"][1:])))
    return [csv], ["cannot read image file", str(bad)]


def _empty_labels(tmp):
    csv = csv_data(tmp)
    edit_csv(csv, lambda f: f.assign(label=[None if i == 2 else v for i, v in enumerate(f["label"])]))
    return [csv], ["1 rows with an empty", "'label'", "row 2", str(csv)]


def _nonexistent_csv(tmp):
    return [tmp / "nope.csv"], ["data file not found", str(tmp / "nope.csv")]


def _folder_without_classes(tmp):
    write_png(tmp / "flat" / "a.png")
    return [tmp / "flat"], ["no class subfolders", str(tmp / "flat")]


DATA_MISTAKES = [_missing_label_column, _missing_input_column, _empty_csv, _zero_rows, _one_class, _small_class,
                 _missing_image, _garbage_image, _truncated_png, _huge_bmp_header, _empty_labels, _nonexistent_csv,
                 _folder_without_classes]


@pytest.mark.parametrize("mistake", DATA_MISTAKES, ids=[m.__name__.strip("_") for m in DATA_MISTAKES])
def test_search_refuses_bad_data(tmp_path, capsys, monkeypatch, mistake):
    monkeypatch.chdir(tmp_path)
    data_args, expected = mistake(tmp_path)
    code, stderr = run_main(["search", "--data", *data_args, *SMALL_SEARCH], capsys)
    line = error_line(code, stderr)
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, expected", [
    (["search", "--trials", "-3"], "argument --trials: expected a number >= 1, got -3"),
    (["search", "--trials", "many"], "argument --trials: expected a whole number, got 'many'"),
    (["search", "--timeout", "0"], "argument --timeout: expected a positive number of seconds, got 0.0"),
    (["search", "--timeout", "-1"], "argument --timeout: expected a positive number of seconds, got -1.0"),
    (["search", "--max-epochs", "0"], "argument --max-epochs: expected a number >= 1, got 0"),
    (["search", "--pruner", "fast"], "argument --pruner: invalid choice: 'fast'"),
    (["search", "--strategies", "freeze_all"], "argument --strategies: invalid choice: 'freeze_all'"),
    (["search", "--heads", "attention"], "argument --heads: invalid choice: 'attention'"),
    (["search", "--top-k", "0"], "argument --top-k: expected a number >= 1, got 0"),
    (["search", "--trial-timeout", "0"], "argument --trial-timeout: expected a positive number of seconds, got 0.0"),
    (["search", "--sampler", "grid"], "argument --sampler: invalid choice: 'grid'"),
    (["predict", "somewhere"], "the following arguments are required: --data, --output"),
])
def test_argparse_errors_exit_2_with_a_message(capsys, argv, expected):
    code, stderr = run_main(argv, capsys)
    assert code == 2 and "Traceback" not in stderr
    assert expected in stderr.strip().splitlines()[-1], stderr


def test_data_and_dataset_together(tmp_path, capsys):
    code, stderr = run_main(["search", "--data", tmp_path, "--dataset", "digits"], capsys)
    assert "--data or --dataset" in error_line(code, stderr)


@pytest.mark.parametrize("counts, max_samples, expected", [
    ({"cat": 5, "dog": 1}, 3, ["class 'dog'", "1 example"]),  # checked before sampling
    ({"cat": 4, "dog": 4, "owl": 4}, 2, ["stratified sample of 2 rows", "data.csv"]),  # fewer samples than classes
    ({"cat": 30, "dog": 3}, 10, ["class 'dog'", "a sample of 10 rows"]),  # the sample leaves a class too small
])
def test_max_samples_that_cannot_be_stratified(tmp_path, capsys, counts, max_samples, expected):
    csv = csv_data(tmp_path, counts)
    code, stderr = run_main(["search", "--data", csv, "--max-samples", max_samples, *SMALL_SEARCH], capsys)
    line = error_line(code, stderr)
    for fragment in expected:
        assert fragment in line, line


def test_max_samples_with_missing_label_column_names_the_column(tmp_path, capsys):
    csv = csv_data(tmp_path)
    code, stderr = run_main(["search", "--data", csv, "--label", "species", "--max-samples", "4", *SMALL_SEARCH],
                            capsys)
    line = error_line(code, stderr)
    assert "label column 'species' not found" in line and "columns: image, label" in line


def test_max_samples_on_an_image_folder_uses_its_folder_labels(tmp_path, capsys):
    # --label applies to tables; an image folder's labels are its subfolders, with or without --max-samples
    folder = image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    code, stderr = run_main(["search", "--data", folder, "--label", "species", "--max-samples", "9",
                             "--output", tmp_path / "run", "--backbones", "no_such_backbone"], capsys)
    assert "unknown backbone 'no_such_backbone'" in error_line(code, stderr)  # got past the data


def _weights_missing(model: Path):
    return ["model.safetensors is missing", str(model)]


def _config_not_json(model: Path):
    (model / "config.json").write_bytes(b"\xff\xfe{{ this is not json")
    (model / "model.safetensors").write_bytes(b"")
    return ["config.json", "is not valid JSON", str(model)]


def _config_truncated_json(model: Path):
    (model / "config.json").write_text('{"backbone": {"name": "mobilenetv2_100"}, "classes": ["cat", ')
    (model / "model.safetensors").write_bytes(b"")
    return ["config.json", "is not valid JSON", str(model)]


def _config_missing(model: Path):
    (model / "config.json").unlink()
    return ["no saved model in", "config.json is missing", str(model)]


def _weights_not_safetensors(model: Path):
    (model / "model.safetensors").write_bytes(b"\x00" * 3)
    return ["model.safetensors", "is not a valid safetensors file"]


BAD_MODELS = [_weights_missing, _config_not_json, _config_truncated_json, _config_missing, _weights_not_safetensors]


@pytest.mark.parametrize("damage", BAD_MODELS, ids=[d.__name__.strip("_") for d in BAD_MODELS])
def test_predict_refuses_a_broken_model_dir(tmp_path, capsys, damage):
    model = model_dir(tmp_path / "model")
    expected = damage(model)
    image_folder(tmp_path / "new")
    code, stderr = run_main(["predict", model, "--data", tmp_path / "new", "--output", tmp_path / "p.csv"], capsys)
    line = error_line(code, stderr)
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not (tmp_path / "p.csv").exists()


def test_predict_refuses_a_torch_pickle_renamed_to_safetensors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    model = model_dir(tmp_path / "model")
    marker = tmp_path / "code_was_executed"
    torch.save({"weight": CreatesMarker(marker)}, model / "model.safetensors")  # a zip holding a pickle
    image_folder(tmp_path / "new")
    code, stderr = run_main(["predict", model, "--data", tmp_path / "new", "--output", tmp_path / "p.csv"], capsys)
    assert "is not a valid safetensors file" in error_line(code, stderr)
    assert not marker.exists()


@pytest.mark.parametrize("config", [
    {"backbone": {"name": "mobilenetv2_100"}, "classes": ["a", "b"], "input_options": {}},  # a field missing
    {"backbone": {"name": "mobilenetv2_100"}, "classes": ["a", "b"], "preprocessing": {}},
])
def test_predict_refuses_config_missing_a_field(tmp_path, capsys, config):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    image_folder(tmp_path / "new")
    code, stderr = run_main(["predict", model, "--data", tmp_path / "new", "--output", tmp_path / "p.csv"], capsys)
    line = error_line(code, stderr)
    assert "config.json" in line and "lacks the field" in line


def test_predict_refuses_config_that_is_not_an_object(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("5")
    image_folder(tmp_path / "new")
    code, stderr = run_main(["predict", model, "--data", tmp_path / "new", "--output", tmp_path / "p.csv"], capsys)
    assert "config.json" in error_line(code, stderr)
