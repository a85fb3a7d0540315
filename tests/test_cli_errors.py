"""The command line refuses user mistakes with one line on stderr, exit status 2 and no traceback.

Each ``python -m automl_tl.cli`` process spends ~4 s importing torch and scikit-learn, so:

* the cases that show the real entry point end to end (one per kind of failure: data, option,
  backbone, storage, output directory, saved model) run as subprocesses, started together by one
  module fixture so that they share the CPU cores;
* the long list of data mistakes runs through ``automl_tl.cli.main(argv)`` in this process: the same
  parse, dispatch and error handler, with stderr captured; any exception that escapes ``main``
  (what would be a traceback) fails the test.

Only one search trains a model: ``finished_run``, a real search of one linear-probe trial (a few
seconds), shared by the tests of mistakes made on a finished run (nothing of it may be lost), of
predicting with it, and of tampered copies of its saved model.

The bad inputs of issue 5, and where each is tested:

* missing column: ``_missing_label_column``, ``_missing_input_column``, ``test_predict_refuses_bad_data``
  (``predict_csv_without_the_input_column``)
* unknown label in predict: ``test_predict_refuses_bad_data`` (``unknown_label``), and
  ``test_predict_ignores_extra_columns_and_empty_labels``
* one class only: ``_one_class``; empty dataset: ``_empty_csv``, ``_zero_rows``, ``_folder_without_files``,
  ``_only_unlabelled_rows``; no readable file: ``_every_image_unreadable``, ``_predict_every_image_missing``
* the bad-input policy (issue 11): ``_one_bad_image_refused_on_request``, ``_too_many_bad_images``,
  ``_a_class_left_too_small_by_skipping``, ``test_predict_keeps_the_place_of_an_unreadable_row``; the skipping
  itself is tested in ``tests/test_messy_data.py``
* unreadable image / audio / text file: ``corrupt_image_in_folder``, ``_garbage_image`` and the other
  image cases, ``_garbage_wav_in_folder``, ``_garbage_wav_in_csv``, ``_text_not_utf8``,
  ``_text_file_dangling_link``, ``_text_file_empty``
* unknown backbone with close names: ``unknown_backbone_suggests_close_names``
* malformed storage URL: ``malformed_storage_url``
* unwritable output directory: ``output_below_a_regular_file``, ``test_search_refuses_a_read_only_output``
* a plugin that raises at import: ``tests/test_plugins.py::test_plugin_that_fails_to_import_is_named``
* negative or zero budget: ``zero_trials``, ``test_argparse_errors_exit_2_with_a_message``
* nothing already finished is lost: ``test_mistakes_on_a_finished_run_lose_nothing``
* tampered model directories: ``test_predict_refuses_a_broken_model_dir``,
  ``test_predict_refuses_a_tampered_model``, ``test_pickles_beside_the_model_are_never_read``
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import TINY_SEARCH, error_line, image_folder, read_only_directory, run_main, write_png
from PIL import Image

# flags that keep a search tiny should an error check ever fail to fire
SMALL_SEARCH = ["--backbones", "mobilenetv2_100", "--image-size", "32", "--trials", "1", "--max-epochs", "1"]

# ---------------------------------------------------------------- data on disk


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
    config = {
        "format_version": 1,
        "backbone": {"name": "mobilenetv2_100"},
        "classes": ["cat", "dog"],
        "input_column": "image",
        "input_options": {"image_size": 32},
        "preprocessing": {},
    }
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
    return subprocess.run(
        [sys.executable, "-m", "automl_tl.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


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
    args = [
        "search",
        "--data",
        folder,
        "--output",
        tmp / "run",
        "--backbones",
        "tf_efficientnet_lit0",
        "--image-size",
        "32",
        "--trials",
        "1",
        "--max-epochs",
        "1",
    ]
    return args, ["unknown backbone 'tf_efficientnet_lit0'", "did you mean", "tf_efficientnet_lite0"]


def case_malformed_storage_url(tmp: Path):
    folder = image_folder(tmp / "pets")
    return (
        ["search", "--data", folder, "--output", tmp / "run", "--storage", "foo://bar", *SMALL_SEARCH],
        ["malformed storage URL 'foo://bar'", "sqlite"],
    )


def case_output_below_a_regular_file(tmp: Path):
    folder = image_folder(tmp / "pets")
    blocker = tmp / "somefile"
    blocker.write_text("a file, not a folder")
    output = blocker / "run"
    return (
        ["search", "--data", folder, "--output", output, *SMALL_SEARCH],
        ["cannot write to output directory", str(output)],
    )


def case_predict_run_dir_missing(tmp: Path):
    image_folder(tmp / "new")
    missing = tmp / "no_such_run"
    return (
        ["predict", missing, "--data", tmp / "new", "--output", tmp / "p.csv"],
        ["run directory not found", str(missing)],
    )


def case_predict_pickle_in_safetensors(tmp: Path):
    model = model_dir(tmp / "model")
    marker = tmp / "code_was_executed"
    (model / "model.safetensors").write_bytes(pickle.dumps({"weight": CreatesMarker(marker)}))
    image_folder(tmp / "new")
    return (
        ["predict", model, "--data", tmp / "new", "--output", tmp / "p.csv"],
        ["model.safetensors", "is not a valid safetensors file"],
    )


SUBPROCESS_CASES = {
    f.__name__[len("case_") :]: f
    for f in (
        case_data_path_missing,
        case_corrupt_image_in_folder,
        case_zero_trials,
        case_unknown_backbone_suggests_close_names,
        case_malformed_storage_url,
        case_output_below_a_regular_file,
        case_predict_run_dir_missing,
        case_predict_pickle_in_safetensors,
    )
}


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
    # a test part asked for: each class needs one example for training, validation and test
    csv = csv_data(tmp, {"cat": 5, "dog": 2})
    return [csv, "--test-size", "0.2"], ["class 'dog'", "2 example(s)", "at least 3"]


def _class_with_one_example(tmp):
    # below 2,000 examples no test part is held out by default: training and validation need one each
    csv = csv_data(tmp, {"cat": 5, "dog": 1})
    return [csv], ["class 'dog'", str(csv), "1 example(s)", "at least 2"]


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
    (tmp / "imgs" / "cat3.png").write_bytes(buffer.getvalue()[: -len(buffer.getvalue()) // 3])
    return [csv], ["cannot read image file", str(tmp / "imgs" / "cat3.png")]


def _huge_bmp_header(tmp):
    csv = csv_data(tmp)
    bad = tmp / "imgs" / "huge.bmp"
    bad.write_bytes(
        b"BM"
        + struct.pack("<IHHI", 54, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    )
    edit_csv(csv, lambda f: f.assign(image=["imgs/huge.bmp"] + list(f["image"][1:])))
    return [csv], ["1 of 8 labelled rows", "(12%) cannot be used", "is too large: 30000x30000 pixels", str(bad)]


def _every_image_unreadable(tmp):  # a folder with no readable file
    folder = image_folder(tmp / "pets")
    for file in folder.rglob("*.png"):
        file.write_bytes(b"not a png")
    return [folder], ["none of the 8 labelled inputs of", str(folder), "can be used", "cannot read image file"]


def _one_bad_image_refused_on_request(tmp):
    csv = csv_data(tmp, {"cat": 10, "dog": 10})
    (tmp / "imgs" / "dog3.png").write_bytes(b"not a png")  # 1 of 20: skipped by default, not with 'error'
    return [csv, "--on-bad-input", "error"], ["cannot read image file", str(tmp / "imgs" / "dog3.png")]


def _too_many_bad_images(tmp):
    csv = csv_data(tmp, {"cat": 10, "dog": 10})
    for name in ("cat1", "dog4", "dog5"):
        (tmp / "imgs" / f"{name}.png").unlink()
    return [csv, "--max-bad-fraction", "0.1"], [
        "3 of 20 labelled rows of",
        str(csv),
        "(15%) cannot be used, more than the 10%",
        "--max-bad-fraction",
        "the first: image file not found",
        str(tmp / "imgs" / "cat1.png"),
    ]


def _only_unlabelled_rows(tmp):
    csv = edit_csv(csv_data(tmp), lambda f: f.assign(label=None))
    return [csv], [str(csv), "has no labelled rows: all 8 have an empty 'label'"]


def _a_class_left_too_small_by_skipping(tmp):
    csv = csv_data(tmp, {"cat": 30, "dog": 2})
    (tmp / "imgs" / "dog1.png").write_bytes(b"broken")
    return [csv], ["class 'dog'", "once its 1 unreadable row(s) are skipped", "1 example(s)", "at least 2"]


def _nonexistent_csv(tmp):
    return [tmp / "nope.csv"], ["data file not found", str(tmp / "nope.csv")]


def _folder_without_classes(tmp):
    write_png(tmp / "flat" / "a.png")
    return [tmp / "flat"], ["no class subfolders", str(tmp / "flat")]


def _folder_without_files(tmp):
    for name in ("cat", "dog"):
        (tmp / "pets" / name).mkdir(parents=True)
    (tmp / "pets" / "cat" / "notes.md").write_text("not a data file")
    return [tmp / "pets"], ["folder", str(tmp / "pets"), "holds no image, audio or text files"]


def write_wav(path: Path, frequency: float) -> Path:
    """A real 0.2 s sine wave at 16 kHz."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(3200) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), 16000)
    return path


def audio_folder(root: Path) -> Path:
    for name, base in (("low", 220.0), ("high", 880.0)):
        for i in range(3):
            write_wav(root / name / f"{i}.wav", base * (1 + i / 10))
    return root


GARBAGE_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(7, 120))


def _garbage_wav_in_folder(tmp):
    folder = audio_folder(tmp / "sounds")
    bad = folder / "high" / "1.wav"
    bad.write_bytes(GARBAGE_WAV)
    return [folder], ["cannot read audio file", str(bad), "corrupt, or not the audio format its extension says"]


def _garbage_wav_in_csv(tmp):
    folder = audio_folder(tmp / "sounds")
    bad = folder / "low" / "2.wav"
    bad.write_bytes(b"\x00" * 64)
    files = sorted(folder.rglob("*.wav"))
    csv = tmp / "sounds.csv"
    pd.DataFrame({"audio": [str(f.relative_to(tmp)) for f in files], "label": [f.parent.name for f in files]}).to_csv(
        csv, index=False
    )
    return [csv], ["cannot read audio file", str(bad)]


def text_folder(root: Path) -> Path:
    for name, words in (("good", "a fine film"), ("bad", "a dull plot")):
        for i in range(3):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"{i}.txt").write_text(f"{words} number {i}", encoding="utf-8")
    return root


def _text_not_utf8(tmp):
    folder = text_folder(tmp / "reviews")
    bad = folder / "bad" / "1.txt"
    bad.write_bytes(b"\x00\x01 binary \xff\xfe\x00")  # neither UTF-8 nor any text: a Latin-1 one is read
    return [folder], ["text file", str(bad), "is not UTF-8", "holds NUL bytes", "convert it to UTF-8"]


def _text_file_dangling_link(tmp):
    folder = text_folder(tmp / "reviews")
    bad = folder / "good" / "moved.txt"
    bad.symlink_to(tmp / "elsewhere" / "moved.txt")  # the file was moved away: not silently skipped
    return [folder], ["cannot read text file", str(bad), "No such file or directory"]


def _text_file_empty(tmp):
    folder = text_folder(tmp / "reviews")
    (folder / "good" / "2.txt").write_text(" \n")
    return [folder], ["text file", str(folder / "good" / "2.txt"), "is empty"]


DATA_MISTAKES = [
    _missing_label_column,
    _missing_input_column,
    _empty_csv,
    _zero_rows,
    _one_class,
    _small_class,
    _class_with_one_example,
    _missing_image,
    _garbage_image,
    _truncated_png,
    _huge_bmp_header,
    _every_image_unreadable,
    _one_bad_image_refused_on_request,
    _too_many_bad_images,
    _only_unlabelled_rows,
    _a_class_left_too_small_by_skipping,
    _nonexistent_csv,
    _folder_without_classes,
    _folder_without_files,
    _garbage_wav_in_folder,
    _garbage_wav_in_csv,
    _text_not_utf8,
    _text_file_dangling_link,
    _text_file_empty,
]


@pytest.mark.parametrize("mistake", DATA_MISTAKES, ids=[m.__name__.strip("_") for m in DATA_MISTAKES])
def test_search_refuses_bad_data(tmp_path, capsys, monkeypatch, mistake):
    monkeypatch.chdir(tmp_path)
    data_args, expected = mistake(tmp_path)
    code, stderr = run_main(["search", "--data", *data_args, *SMALL_SEARCH], capsys)
    line = error_line(code, stderr)
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["search", "--trials", "-3"], "argument --trials: expected a number >= 1, got -3"),
        (["search", "--trials", "many"], "argument --trials: expected a whole number, got 'many'"),
        (["search", "--timeout", "0"], "argument --timeout: expected a positive number of seconds, got 0.0"),
        (["search", "--timeout", "-1"], "argument --timeout: expected a positive number of seconds, got -1.0"),
        (["search", "--timeout", "-5"], "argument --timeout: expected a positive number of seconds, got -5.0"),
        (["search", "--timeout", "nan"], "argument --timeout: expected a finite number of seconds, got 'nan'"),
        (["search", "--timeout", "inf"], "argument --timeout: expected a finite number of seconds, got 'inf'"),
        (["search", "--trials", "-1"], "argument --trials: expected a number >= 1, got -1"),
        (
            ["search", "--trial-timeout", "-5"],
            "argument --trial-timeout: expected a positive number of seconds, got -5.0",
        ),
        (["search", "--max-epochs", "0"], "argument --max-epochs: expected a number >= 1, got 0"),
        (["search", "--pruner", "fast"], "argument --pruner: invalid choice: 'fast'"),
        (["search", "--strategies", "freeze_all"], "argument --strategies: invalid choice: 'freeze_all'"),
        (["search", "--heads", "attention"], "argument --heads: invalid choice: 'attention'"),
        (["search", "--top-k", "0"], "argument --top-k: expected a number >= 1, got 0"),
        (
            ["search", "--trial-timeout", "0"],
            "argument --trial-timeout: expected a positive number of seconds, got 0.0",
        ),
        (["search", "--sampler", "grid"], "argument --sampler: invalid choice: 'grid'"),
        (["predict", "somewhere"], "the following arguments are required: --data, --output"),
        (["search", "--max-bad-fraction", "1.5"], "--max-bad-fraction: expected a share between 0 and 1, got '1.5'"),
        (["search", "--max-bad-fraction", "nan"], "--max-bad-fraction: expected a share between 0 and 1, got 'nan'"),
        (["search", "--on-bad-input", "ignore"], "argument --on-bad-input: invalid choice: 'ignore'"),
        (["search", "--max-image-pixels", "0"], "argument --max-image-pixels: expected a number >= 1, got 0"),
        (
            ["predict", "run", "--data", "x", "--output", "y", "--on-bad-input", "drop"],
            "argument --on-bad-input: invalid choice: 'drop'",
        ),
    ],
)
def test_argparse_errors_exit_2_with_a_message(capsys, argv, expected):
    code, stderr = run_main(argv, capsys)
    assert code == 2 and "Traceback" not in stderr
    assert expected in stderr.strip().splitlines()[-1], stderr


def test_data_and_dataset_together(tmp_path, capsys):
    code, stderr = run_main(["search", "--data", tmp_path, "--dataset", "digits"], capsys)
    assert "--data or --dataset" in error_line(code, stderr)


@pytest.mark.parametrize(
    "counts, max_samples, expected",
    [
        ({"cat": 5, "dog": 1}, 3, ["class 'dog'", "1 example"]),  # checked before sampling
        ({"cat": 4, "dog": 4, "owl": 4}, 2, ["stratified sample of 2 rows", "data.csv"]),  # fewer samples than classes
        ({"cat": 30, "dog": 3}, 10, ["class 'dog'", "a sample of 10 rows"]),  # the sample leaves a class too small
    ],
)
def test_max_samples_that_cannot_be_stratified(tmp_path, capsys, counts, max_samples, expected):
    csv = csv_data(tmp_path, counts)
    code, stderr = run_main(["search", "--data", csv, "--max-samples", max_samples, *SMALL_SEARCH], capsys)
    line = error_line(code, stderr)
    for fragment in expected:
        assert fragment in line, line


def test_max_samples_with_missing_label_column_names_the_column(tmp_path, capsys):
    csv = csv_data(tmp_path)
    code, stderr = run_main(
        ["search", "--data", csv, "--label", "species", "--max-samples", "4", *SMALL_SEARCH], capsys
    )
    line = error_line(code, stderr)
    assert "label column 'species' not found" in line and "columns: image, label" in line


def test_max_samples_on_an_image_folder_uses_its_folder_labels(tmp_path, capsys):
    # --label applies to tables; an image folder's labels are its subfolders, with or without --max-samples
    folder = image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    code, stderr = run_main(
        [
            "search",
            "--data",
            folder,
            "--label",
            "species",
            "--max-samples",
            "9",
            "--output",
            tmp_path / "run",
            "--backbones",
            "no_such_backbone",
        ],
        capsys,
    )
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


@pytest.mark.parametrize(
    "config",
    [
        {"backbone": {"name": "mobilenetv2_100"}, "classes": ["a", "b"], "input_options": {}},  # a field missing
        {"backbone": {"name": "mobilenetv2_100"}, "classes": ["a", "b"], "preprocessing": {}},
    ],
)
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


# ---------------------------------------------------------------- unwritable output directory


@pytest.mark.parametrize("below", [False, True], ids=["the_directory_itself", "a_new_folder_in_it"])
def test_search_refuses_a_read_only_output(tmp_path, capsys, below):
    folder = image_folder(tmp_path / "pets")
    with read_only_directory(tmp_path / "locked") as locked:
        output = locked / "run" if below else locked
        code, stderr = run_main(["search", "--data", folder, "--output", output, *SMALL_SEARCH], capsys)
        assert sorted(locked.iterdir()) == [], "nothing may be written into a read-only directory"
    line = error_line(code, stderr)
    assert "cannot write to output directory" in line and str(output) in line, line
    assert ("Permission denied" in line) or ("Operation not permitted" in line), line


# ---------------------------------------------------------------- a finished run, and mistakes made on it

RUN_FLAGS = TINY_SEARCH


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, run directory) of a real search that ran to completion: one linear-probe trial."""
    from automl_tl.cli import main

    tmp = tmp_path_factory.mktemp("finished")
    folder = image_folder(tmp / "pets")
    run = tmp / "run"
    assert main([str(a) for a in ["search", "--data", folder, "--output", run, *RUN_FLAGS]]) == 0
    for name in ("leaderboard.csv", "summary.json", "best_model/model.safetensors", "best_model/config.json"):
        assert (run / name).is_file(), name
    return folder, run


JOURNAL = "study.journal"


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file below ``directory`` but the study journal, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != JOURNAL
    }


def stored_trials(run: Path) -> list[tuple]:
    """Number, state, value and parameters of every trial in the run's study."""
    import optuna

    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run / JOURNAL)))
    study = optuna.load_study(study_name="automl_tl", storage=storage)
    return [(t.number, t.state.name, t.value, t.params) for t in study.trials]


def _other_data(tmp: Path, folder: Path) -> list:
    other = image_folder(tmp / "other", {"cat": 4, "dog": 4, "owl": 4})
    return [["--data", other, *RUN_FLAGS], ["was made for other data", "use another --output or --study-name"]]


def _another_search_space(tmp: Path, folder: Path) -> list:
    flags = [f if f != "linear_probe" else "full" for f in RUN_FLAGS]
    return [["--data", folder, *flags], ["was made with another search space", "strategies", "rerun with the original"]]


def _backbone_typo(tmp: Path, folder: Path) -> list:
    flags = [f if f != "mobilenetv2_100" else "mobilenet_v2_100" for f in RUN_FLAGS]
    return [["--data", folder, *flags], ["unknown backbone 'mobilenet_v2_100'", "did you mean", "mobilenetv2_100"]]


def _bad_storage(tmp: Path, folder: Path) -> list:
    return [
        ["--data", folder, *RUN_FLAGS, "--storage", "sqlit:///study.db"],
        ["malformed storage URL 'sqlit:///study.db'"],
    ]


def _negative_trained_groups(tmp: Path, folder: Path) -> list:  # passes argparse (type=int), refused by SearchConfig
    return [["--data", folder, *RUN_FLAGS, "--max-trained-groups", "-1"], ["max trained groups must be >= 0, got -1"]]


def _image_too_small(tmp: Path, folder: Path) -> list:
    flags = [f if f != "32" else "8" for f in RUN_FLAGS]
    return [["--data", folder, *flags], ["image size must be at least 16 pixels, got 8"]]


def _data_broken_since(tmp: Path, folder: Path) -> list:
    broken = tmp / "broken"
    shutil.copytree(folder, broken)
    (broken / "dog" / "0.png").write_bytes(b"not a png any more")
    return [["--data", broken, *RUN_FLAGS], ["cannot read image file", str(broken / "dog" / "0.png")]]


RERUN_MISTAKES = [
    _other_data,
    _another_search_space,
    _backbone_typo,
    _bad_storage,
    _negative_trained_groups,
    _image_too_small,
    _data_broken_since,
]


def test_mistakes_on_a_finished_run_lose_nothing(finished_run, tmp_path, capsys):
    """Each mistake, made with the same --output as a finished search, is one line and exit 2; every file
    of the run (leaderboard, summary, best model) stays byte for byte as it was, and the study journal
    keeps its trials. (Optuna's create_study(load_if_exists=True) appends a no-op "create study" record to
    a journal that exists, so the journal is checked as append-only, not as unchanged bytes.)"""
    folder, run = finished_run
    before, journal, trials = snapshot(run), (run / JOURNAL).read_bytes(), stored_trials(run)
    assert {
        "leaderboard.csv",
        "leaderboard.md",
        "summary.json",
        "best_model/model.safetensors",
        "best_model/config.json",
        "best_model/metrics.json",
    } <= set(before)
    assert [state for _, state, _, _ in trials] == ["COMPLETE"]
    for mistake in RERUN_MISTAKES:
        args, expected = mistake(tmp_path, folder)
        code, stderr = run_main(["search", "--output", run, *args], capsys)
        line = error_line(code, stderr)
        for fragment in expected:
            assert fragment in line, f"{mistake.__name__}: {fragment!r} not in {line!r}"
        assert snapshot(run) == before, f"{mistake.__name__} changed the finished run"
        assert (run / JOURNAL).read_bytes().startswith(journal), f"{mistake.__name__} rewrote the study journal"
        assert stored_trials(run) == trials, f"{mistake.__name__} changed the study's trials"

    from automl_tl import load

    assert load(run).config["trial"] == 0  # and the model still loads


# ---------------------------------------------------------------- predicting with the finished run


def _unknown_label(tmp: Path) -> list:
    csv = csv_data(tmp, {"cat": 2, "owl": 2})
    return [csv], [
        "label column 'label' of",
        str(csv),
        "2 label(s) the model was not trained on",
        "first 'owl' at line 4",
        "its classes: 'cat', 'dog'",
        "drop the column",
    ]


def _predict_csv_without_the_input_column(tmp: Path) -> list:
    csv = edit_csv(csv_data(tmp), lambda f: f.rename(columns={"image": "path"}))
    return [csv], ["input column 'image' not found in", str(csv), "columns: path, label"]


def _predict_every_image_missing(tmp: Path) -> list:
    csv = csv_data(tmp)
    for file in (tmp / "imgs").iterdir():
        file.unlink()
    return [csv], [
        "none of the 8 inputs can be read",
        "the first: image file not found",
        str(tmp / "imgs" / "cat0.png"),
    ]


def _predict_missing_image_refused_on_request(tmp: Path) -> list:
    csv = csv_data(tmp)
    (tmp / "imgs" / "dog1.png").unlink()
    return [csv, "--on-bad-input", "error"], ["image file not found", str(tmp / "imgs" / "dog1.png")]


def _predict_folder_of_texts(tmp: Path) -> list:
    return [text_folder(tmp / "reviews")], ["folder", str(tmp / "reviews"), "holds no image files"]


PREDICT_MISTAKES = [
    _unknown_label,
    _predict_csv_without_the_input_column,
    _predict_every_image_missing,
    _predict_missing_image_refused_on_request,
    _predict_folder_of_texts,
]


@pytest.mark.parametrize("mistake", PREDICT_MISTAKES, ids=[m.__name__.strip("_") for m in PREDICT_MISTAKES])
def test_predict_refuses_bad_data(finished_run, tmp_path, capsys, mistake):
    _, run = finished_run
    data_args, expected = mistake(tmp_path)
    code, stderr = run_main(["predict", run, "--data", *data_args, "--output", tmp_path / "p.csv"], capsys)
    line = error_line(code, stderr)
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not (tmp_path / "p.csv").exists()


def test_predict_ignores_extra_columns_and_empty_labels(finished_run, tmp_path, capsys):
    _, run = finished_run
    csv = edit_csv(
        csv_data(tmp_path),
        lambda f: f.assign(label=[None if i == 1 else v for i, v in enumerate(f["label"])], notes="taken in 2023"),
    )
    code, stderr = run_main(["predict", run, "--data", csv, "--output", tmp_path / "p.csv"], capsys)
    assert code == 0, stderr
    predictions = pd.read_csv(tmp_path / "p.csv")
    # the input's columns are copied as they are (empty labels stay empty), then the predictions
    assert list(predictions.columns) == ["image", "label", "notes", "prediction", "proba:cat", "proba:dog", "error"]
    assert predictions["label"].isna().sum() == 1 and set(predictions["notes"]) == {"taken in 2023"}
    assert len(predictions) == 8 and set(predictions["prediction"]) <= {"cat", "dog"}
    assert predictions["error"].isna().all()  # (empty cells)


def test_predict_keeps_the_place_of_an_unreadable_row(finished_run, tmp_path, capsys, caplog):
    _, run = finished_run
    csv = csv_data(tmp_path)
    (tmp_path / "imgs" / "dog1.png").unlink()
    (tmp_path / "imgs" / "cat2.png").write_bytes(b"=HYPERLINK(broken)")
    code, stderr = run_main(["predict", run, "--data", csv, "--output", tmp_path / "p.csv"], capsys)
    assert code == 0, stderr
    predictions = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(predictions["image"]) == list(pd.read_csv(csv)["image"])  # as written, relative to the CSV
    broken = predictions.set_index("image").loc[[f"imgs/{name}" for name in ("cat2.png", "dog1.png")]]
    probabilities = ["proba:cat", "proba:dog"]
    assert (broken["prediction"] == "").all() and (broken[probabilities] == "").all().all()
    assert broken["error"].str.contains("corrupt or truncated").iloc[0] and "file not found" in broken["error"].iloc[1]
    readable = predictions[predictions["error"] == ""]
    assert len(readable) == 6 and set(readable["prediction"]) <= {"cat", "dog"}
    assert np.allclose(readable[probabilities].astype(float).sum(axis=1), 1.0, atol=1e-5)
    assert "2 of 8 inputs cannot be read" in caplog.text


def test_predict_refuses_an_unwritable_output(finished_run, tmp_path, capsys):
    _, run = finished_run
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    code, stderr = run_main(
        ["predict", run, "--data", image_folder(tmp_path / "new"), "--output", blocker / "p.csv"], capsys
    )
    line = error_line(code, stderr)
    assert "cannot write predictions to" in line and str(blocker / "p.csv") in line


# ---------------------------------------------------------------- tampered copies of the finished model


def _edit_tensors(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(model / "model.safetensors"))
        edit(state)
        save_file(state, str(model / "model.safetensors"))  # a valid safetensors file, with other tensors

    return damage


def _edit_config(**fields) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        config.update(fields)
        (model / "config.json").write_text(json.dumps(config))

    return damage


def _head_rows(state):
    import torch

    state["head.weight"] = torch.zeros(3, state["head.weight"].shape[1])


def _body_shape(state):
    import torch

    state["body.conv_stem.weight"] = torch.zeros(8, 3, 3, 3)


def _all_replaced(state):
    import torch

    state.clear()
    state.update({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})


def _int_tensor(state):
    import torch

    state["head.bias"] = torch.zeros(2, dtype=torch.int64)


TAMPERED = {
    "head_with_more_rows": (
        _edit_tensors(_head_rows),
        [
            "model.safetensors does not match its config.json",
            "mobilenetv2_100, 2 classes, linear head",
            "tensor head.weight has shape [3, 1280], expected [2, 1280]",
        ],
    ),
    "body_tensor_reshaped": (
        _edit_tensors(_body_shape),
        ["tensor body.conv_stem.weight has shape [8, 3, 3, 3], expected [32, 3, 3, 3]"],
    ),
    "tensor_missing": (_edit_tensors(lambda s: s.pop("head.bias")), ["1 tensor(s) missing (head.bias)"]),
    "tensor_unexpected": (
        _edit_tensors(lambda s: s.update(evil=s["head.bias"].clone())),
        ["1 unexpected tensor(s) (evil)"],
    ),
    "every_tensor_foreign": (
        _edit_tensors(_all_replaced),
        [
            "2 tensor(s) missing (head.weight, head.bias)",  # the head is checked first: before anything is built
            "2 unexpected tensor(s) (bias, weight)",
        ],
    ),
    "integer_tensor": (_edit_tensors(_int_tensor), ["tensor head.bias holds torch.int64, expected floating point"]),
    "more_classes_than_the_head": (
        _edit_config(classes=["cat", "dog", "owl"]),
        ["3 classes", "tensor head.weight has shape [2, 1280], expected [3, 1280]"],
    ),
    "one_class": (
        _edit_config(classes=["cat"]),
        ["config.json: field 'classes' holds 1 class(es) ('cat'); expected at least 2 distinct classes"],
    ),
    "repeated_class": (_edit_config(classes=["cat", "cat"]), ["field 'classes' holds 2 class(es)", "2 distinct"]),
    "unknown_backbone": (
        _edit_config(backbone={"name": "mobilenetv2_10"}),
        [
            "config.json names backbone 'mobilenetv2_10', which no installed plugin registers",
            "(close names: mobilenetv2_100)",
        ],
    ),
    "head_kind_changed": (
        _edit_config(head={"kind": "mlp", "hidden": 16, "dropout": 0.1}),
        ["mlp head", "4 tensor(s) missing (head.0.weight, head.0.bias, head.3.weight, ...)"],
    ),
    "unknown_input_option": (
        _edit_config(input_options={"image_size": 32, "exec": "rm -rf /"}),
        ["field 'input_options' holds 'exec'", "each a number or null"],
    ),
    "input_option_not_a_number": (
        _edit_config(input_options={"image_size": "big"}),
        ["field 'input_options' holds 'image_size': 'big'"],
    ),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_predict_refuses_a_tampered_model(finished_run, tmp_path, capsys, name):
    _, run = finished_run
    model = tmp_path / "model"
    shutil.copytree(run / "best_model", model)
    damage, expected = TAMPERED[name]
    damage(model)
    code, stderr = run_main(
        ["predict", model, "--data", image_folder(tmp_path / "new"), "--output", tmp_path / "p.csv"], capsys
    )
    line = error_line(code, stderr)
    assert str(model) in line, line
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert len(line) < 500, f"a tampered file must not flood the terminal: {len(line)} characters"
    assert not (tmp_path / "p.csv").exists()


PICKLE_NAMES = ("model.pt", "pytorch_model.bin", "model.pkl")


def test_pickles_beside_the_model_are_never_read(finished_run, tmp_path, capsys, monkeypatch):
    """Pickles dropped into a model directory are ignored (loading reads only config.json and
    model.safetensors), and are no fallback when model.safetensors is gone; nothing is ever unpickled."""
    import torch

    from automl_tl import load

    _, run = finished_run
    model = tmp_path / "model"
    shutil.copytree(run / "best_model", model)
    marker = tmp_path / "code_was_executed"
    for name in PICKLE_NAMES:
        (model / name).write_bytes(pickle.dumps({"head.weight": CreatesMarker(marker)}))

    def refuse(*args, **kwargs):
        raise AssertionError("loading a saved model must never unpickle")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(owner, name, refuse)
    new = image_folder(tmp_path / "new")
    expected = load(run).predict_proba(new)
    assert load(model).predict_proba(new).equals(expected)  # the same model: the pickles changed nothing

    (model / "model.safetensors").unlink()
    code, stderr = run_main(["predict", model, "--data", new, "--output", tmp_path / "p.csv"], capsys)
    line = error_line(code, stderr)
    assert f"no saved model in {model}: model.safetensors is missing" in line, line
    assert not marker.exists(), "a pickle in the model directory was unpickled"


def test_predictor_refuses_unknown_labels_from_python_too(finished_run, tmp_path):
    from automl_tl import load
    from automl_tl.errors import DataError

    _, run = finished_run
    frame = pd.read_csv(csv_data(tmp_path, {"cat": 1, "dog": 1}))
    frame["image"] = [str(tmp_path / p) for p in frame["image"]]
    predictor = load(run)
    assert len(predictor.predict(frame)) == 2  # known labels: predicted as usual
    with pytest.raises(DataError, match=r"first 'Dog' at row 1"):
        predictor.predict(frame.assign(label=["cat", "Dog"]))  # a misspelt class
