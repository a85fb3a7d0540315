"""The bad-input corpus of issue 12, data side: inputs that gave wrong results without a word, or a traceback.

Every case is a small real file written to tmp_path (PNG, TIFF and JPEG files by PIL from numpy arrays,
CSV, Excel files), read by the real code:

* duplicates leaking across splits, and user-named groups (``group_column``, ``--group-column``);
* 16-bit, 32-bit and float images, transparency (LA, P with tRNS) and CMYK;
* a folder laid out ``train/ val/ test/`` with class folders inside, and hidden files and folders;
* the data's fingerprint: the same CSV named by another path resumes the same study;
* a column of image paths and texts, the label column named as the input column, Excel and ``;`` tables,
  ``~`` in paths, line numbers in messages;
* every image decoded once, and PIL's warnings naming the file.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import TINY_SEARCH, error_line, image_folder, run_main, write_png
from PIL import Image

from automl_tl.data.bundle import prepare_dataset, prepare_unlabelled
from automl_tl.data.readers import check_input, read_folder, read_image
from automl_tl.errors import ConfigError, DataError, UnreadableInputError

# ---------------------------------------------------------------- helpers


def split_of(bundle) -> dict:
    """Each input's split name (an input in two splits fails the test)."""
    where: dict = {}
    for split in (bundle.train, bundle.val, bundle.test):
        for value in split.inputs:
            key = value.tobytes() if isinstance(value, np.ndarray) else str(value)
            assert where.setdefault(key, split.name) == split.name, (
                f"{str(value)[:40]} in {where[key]} and {split.name}"
            )
    return where


def every_class_everywhere(bundle) -> None:
    n = len(bundle.classes)
    for split in (bundle.train, bundle.val, bundle.test):
        if len(split):
            assert len(set(split.labels.tolist())) == n, f"{split.name} lacks a class"


# ---------------------------------------------------------------- 1. duplicates and groups


def tripled_texts(n: int = 40) -> pd.DataFrame:
    """n distinct texts of 2 classes, each row written three times (as in the issue's reproduction)."""
    rows = [
        {"text": f"review number {i} says {'good' if i % 2 else 'bad'} things", "label": "pos" if i % 2 else "neg"}
        for i in range(n)
    ]
    return pd.DataFrame(rows * 3).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_identical_texts_never_cross_splits_and_are_counted():
    bundle = prepare_dataset(tripled_texts(), val_fraction=0.2, test_fraction=0.2)
    split_of(bundle)  # fails if a text is in two splits
    every_class_everywhere(bundle)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 120
    assert len(bundle.test) % 3 == 0 and len(bundle.val) % 3 == 0  # whole groups of three
    assert 12 <= len(bundle.test) <= 36 and 12 <= len(bundle.val) <= 36  # about 20 % each
    duplicates = bundle.summary()["duplicates"]
    assert duplicates == {"rows": 80, "sets": 40, "conflicting_labels": 0}


def test_texts_differing_only_in_spacing_are_one_group():
    frame = tripled_texts(20)
    frame["text"] = [t if i % 2 else "  " + t.replace(" ", "   ") + "\n" for i, t in enumerate(frame["text"])]
    bundle = prepare_dataset(frame, val_fraction=0.2, test_fraction=0.2)
    groups = {" ".join(str(t).split()): set() for t in frame["text"]}
    for split in (bundle.train, bundle.val, bundle.test):
        for text in split.inputs:
            groups[" ".join(text.split())].add(split.name)
    assert all(len(names) == 1 for names in groups.values())


def test_the_same_image_by_another_path_or_a_copy_stays_in_one_split(tmp_path):
    rows = []
    for i in range(24):
        label = "cat" if i % 2 else "dog"
        write_png(tmp_path / "imgs" / f"{i}.png", seed=i)
        (tmp_path / "copies").mkdir(exist_ok=True)
        (tmp_path / "copies" / f"{i}.png").write_bytes((tmp_path / "imgs" / f"{i}.png").read_bytes())
        rows += [
            {"image": f"imgs/{i}.png", "label": label},
            {"image": f"./imgs/../imgs/{i}.png", "label": label},
            {"image": str(tmp_path / "copies" / f"{i}.png"), "label": label},
        ]
    csv = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    bundle = prepare_dataset(csv, val_fraction=0.2, test_fraction=0.2)
    by_content: dict = {}
    for split in (bundle.train, bundle.val, bundle.test):
        for path in split.inputs:
            by_content.setdefault(Path(path).read_bytes(), set()).add(split.name)
    assert len(by_content) == 24 and all(len(names) == 1 for names in by_content.values())
    every_class_everywhere(bundle)
    assert bundle.summary()["duplicates"]["rows"] == 48


def test_identical_image_arrays_are_one_group():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(30)]
    frame = pd.DataFrame(
        {"image": [im.copy() for im in images for _ in range(2)], "label": [i % 3 for i in range(30) for _ in range(2)]}
    )
    bundle = prepare_dataset(frame, val_fraction=0.2, test_fraction=0.2)
    split_of(bundle)
    every_class_everywhere(bundle)


def test_conflicting_labels_of_one_input_are_kept_together_and_counted(caplog):
    frame = tripled_texts(30)
    frame.loc[len(frame)] = ["the very same words", "pos"]
    frame.loc[len(frame)] = ["the very same words", "neg"]
    bundle = prepare_dataset(frame, val_fraction=0.2, test_fraction=0.2)
    where = split_of(bundle)
    assert sum(1 for s in (bundle.train, bundle.val, bundle.test) for t in s.inputs if t == "the very same words") == 2
    assert "the very same words" in where
    assert bundle.summary()["duplicates"]["conflicting_labels"] == 1
    assert "different labels" in caplog.text and "the very same words" in caplog.text


def test_no_duplicates_no_group_column_keeps_the_usual_split(digits_frame):
    from automl_tl.data.bundle import stratified_split

    bundle = prepare_dataset(digits_frame, seed=3)
    labels = np.concatenate([bundle.train.labels, bundle.val.labels, bundle.test.labels])
    train, val, test = stratified_split(np.sort(labels), 3, 0.15, 0.15)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (len(train), len(val), len(test))
    assert bundle.summary()["duplicates"] == {"rows": 0, "sets": 0, "conflicting_labels": 0}


def patients_frame(n_patients: int = 30, per_patient: int = 4) -> pd.DataFrame:
    """Texts of patients with 4 distinct notes each, one diagnosis per patient (3 classes)."""
    rows = [
        {"text": f"patient {p} visit {v} notes", "label": ["flu", "cold", "well"][p % 3], "patient": f"P{p:03d}"}
        for p in range(n_patients)
        for v in range(per_patient)
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_a_group_column_keeps_each_patient_in_one_split():
    frame = patients_frame()
    bundle = prepare_dataset(frame, input_column="text", group_column="patient", val_fraction=0.2, test_fraction=0.2)
    patient = dict(zip(frame["text"], frame["patient"]))
    seen: dict = {}
    for split in (bundle.train, bundle.val, bundle.test):
        for text in split.inputs:
            assert seen.setdefault(patient[text], split.name) == split.name
    every_class_everywhere(bundle)
    summary = bundle.summary()
    assert summary["group_column"] == "patient" and summary["groups"] == 30
    other = prepare_dataset(frame, input_column="text", val_fraction=0.2, test_fraction=0.2)
    assert other.fingerprint != bundle.fingerprint  # another split: a stored study must not resume on it


def test_groups_and_duplicates_together_and_the_seed_changes_the_split():
    frame = patients_frame()
    frame.loc[len(frame)] = [frame["text"][0], frame["label"][0], "P999"]  # a note copied into another patient
    one = prepare_dataset(frame, input_column="text", group_column="patient", seed=0)
    split_of(one)
    other = prepare_dataset(frame, input_column="text", group_column="patient", seed=1)
    assert sorted(one.test.inputs) != sorted(other.test.inputs)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"group_column": "patiend"}, "group column 'patiend' not found"),
        ({"group_column": "label"}, "the group column and the label column are both 'label'"),
        ({"group_column": "text"}, "the group column and the input column are both 'text'"),
    ],
)
def test_group_column_mistakes(kwargs, expected):
    with pytest.raises(DataError, match=expected):
        prepare_dataset(patients_frame(), input_column="text", **kwargs)


def test_a_class_in_too_few_groups_is_refused_naming_it():
    frame = patients_frame(30)
    number = frame["patient"].str[1:].astype(int)
    frame["label"] = np.where(frame["patient"].isin(["P000", "P003"]), "flu", np.where(number % 2, "cold", "well"))
    with pytest.raises(DataError, match=r"class 'flu' .*2 groups.*at least 3"):
        prepare_dataset(frame, input_column="text", group_column="patient", test_fraction=0.2)


def test_few_shots_never_test_on_a_copy_of_a_drawn_example():
    frame = tripled_texts(40)
    bundle = prepare_dataset(frame, shots=5, seed=0)
    drawn = set(bundle.train.inputs) | set(bundle.val.inputs)
    assert not drawn & set(bundle.test.inputs)
    assert len(set(bundle.train.inputs)) == 10  # 5 distinct texts per class


def test_cli_and_estimator_take_a_group_column(tmp_path, capsys):
    from automl_tl import TransferClassifier
    from automl_tl.cli import build_parser, search_estimator_params

    args = build_parser().parse_args(["search", "--group-column", "patient"])
    assert search_estimator_params(args)["group_column"] == "patient"
    assert TransferClassifier(group_column="patient").get_params()["group_column"] == "patient"
    csv = tmp_path / "notes.csv"
    patients_frame().to_csv(csv, index=False)
    output = tmp_path / "run"
    code, err = run_main(
        [
            "search",
            "--data",
            csv,
            "--input-column",
            "text",
            "--group-column",
            "patiend",
            "--output",
            output,
            "--trials",
            "1",
        ],
        capsys,
    )
    assert "group column 'patiend' not found" in error_line(code, err)
    assert not output.exists()
    with pytest.raises(ConfigError, match="group_column"):
        TransferClassifier(group_column="patient").fit(["a", "b"], ["x", "y"])


def test_workers_rebuild_the_grouped_split(tmp_path):
    from automl_tl.data.source import data_source, load_data_source

    csv = tmp_path / "notes.csv"
    patients_frame().to_csv(csv, index=False)
    bundle = prepare_dataset(csv, input_column="text", group_column="patient")
    source = data_source(data=csv, input_column="text", group_column="patient")
    assert load_data_source(source).fingerprint == bundle.fingerprint


# ---------------------------------------------------------------- 2. image modes


def gradient16() -> np.ndarray:
    return (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520


@pytest.mark.parametrize("name", ["grey16.png", "grey16.tif"])
def test_a_16_bit_image_is_scaled_not_clipped(tmp_path, name):
    pixels = gradient16()
    Image.fromarray(pixels).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode.startswith("I;16")
    got = np.asarray(read_image(tmp_path / name))[:, :, 0].astype(int)
    assert np.abs(got - np.round(pixels / 257)).max() <= 1
    assert (got == 255).mean() < 0.01  # was 74 % at 255


def test_a_16_bit_image_decoded_reduced_is_scaled_too(tmp_path):
    Image.fromarray(gradient16()).save(tmp_path / "grey16.png")
    got = np.asarray(read_image(tmp_path / "grey16.png", size=8))  # 64 px >= 2 x 3 x 8: decoded reduced
    assert got.shape[0] < 64 and 100 < got.mean() < 155  # mid-grey on average, as the gradient is


def test_32_bit_integer_and_float_images(tmp_path):
    pixels = gradient16()
    Image.fromarray(pixels.astype(np.int32)).save(tmp_path / "int.tif")  # mode I holding 16-bit values
    assert Image.open(tmp_path / "int.tif").mode == "I"
    got = np.asarray(read_image(tmp_path / "int.tif"))[:, :, 0].astype(int)
    assert np.abs(got - np.round(pixels / 257)).max() <= 1

    unit = pixels.astype(np.float32) / 65520
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    got = np.asarray(read_image(tmp_path / "unit.tif"))[:, :, 0].astype(int)
    assert np.abs(got - np.round(unit * 255)).max() <= 1

    wide = unit * 8 - 3  # [-3, 5]: scaled from its own range
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    got = np.asarray(read_image(tmp_path / "wide.tif"))[:, :, 0].astype(int)
    assert got.min() == 0 and got.max() == 255 and np.abs(got - np.round(unit * 255)).max() <= 1

    small_ints = (np.arange(64 * 64).reshape(64, 64) % 200).astype(np.int32)  # 8-bit values in mode I: kept
    Image.fromarray(small_ints).save(tmp_path / "small.tif")
    assert np.array_equal(np.asarray(read_image(tmp_path / "small.tif"))[:, :, 0], small_ints.astype(np.uint8))


def test_transparent_pixels_become_white(tmp_path):
    grey = np.full((8, 8), 40, dtype=np.uint8)
    alpha = np.zeros((8, 8), dtype=np.uint8)
    alpha[:, 4:] = 255
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    got = np.asarray(read_image(tmp_path / "la.png"))
    assert (got[:, :4] == 255).all() and (got[:, 4:] == 40).all()

    palette = Image.fromarray((np.arange(64).reshape(8, 8) % 2).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns converting such a palette image straight to RGB
        got = np.asarray(read_image(tmp_path / "p.png"))
    index = np.arange(64).reshape(8, 8) % 2
    assert (got[index == 0] == 255).all() and (got[index == 1] == [200, 0, 0]).all()


def test_premultiplied_alpha_images_are_composited_too():
    """``La`` and ``RGBa`` (alpha premultiplied: no file format stores them, but a PIL image handed in from
    Python can be one) go the way of ``LA`` and ``RGBA``; PIL cannot convert ``La`` to RGBA directly."""
    for mode, colour in (("La", (40, 255)), ("RGBa", (40, 40, 40, 255))):
        image = Image.new(mode, (8, 8), colour)
        image.paste(Image.new(mode, (4, 8), (0,) * len(colour)), (0, 0))  # the left half transparent
        got = np.asarray(read_image(image))
        assert (got[:, :4] == 255).all() and (got[:, 4:] == 40).all(), mode


def test_cmyk_is_converted_by_its_ink(tmp_path):
    Image.new("CMYK", (4, 4), (128, 0, 0, 128)).save(tmp_path / "ink.tif")
    r, g, b = np.asarray(read_image(tmp_path / "ink.tif"))[0, 0].astype(int)
    # half cyan on half black: (1 - 0.5) * (1 - 0.5) of red, half of green and blue (PIL alone gives red 0)
    assert abs(r - 64) <= 2 and abs(g - 127) <= 2 and abs(b - 127) <= 2


def test_16_bit_arrays_are_scaled():
    got = np.asarray(read_image(gradient16()))[:, :, 0].astype(int)
    assert np.abs(got - np.round(gradient16() / 257)).max() <= 1


# ---------------------------------------------------------------- 3. split layouts and hidden files


def test_a_train_val_test_layout_is_used_as_given(tmp_path):
    root = tmp_path / "pets"
    image_folder(root / "train", {"cat": 6, "dog": 6}, seed=0)
    image_folder(root / "val", {"cat": 2, "dog": 2}, seed=100)
    image_folder(root / "test", {"cat": 3, "dog": 3}, seed=200)
    bundle = prepare_dataset(root)
    assert bundle.classes == ["cat", "dog"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 6)
    for split, folder in ((bundle.train, "train"), (bundle.val, "val"), (bundle.test, "test")):
        assert all(Path(p).parent.parent.name == folder for p in split.inputs)
    assert bundle.summary()["given_splits"] == ["train", "val", "test"]


def test_copies_across_given_split_folders_stay_and_are_counted(tmp_path, caplog):
    """The README's promise for split folders: used as given, copies across them not moved but counted."""
    root = tmp_path / "pets"
    image_folder(root / "train", {"cat": 6, "dog": 6}, seed=0)
    image_folder(root / "val", {"cat": 2}, seed=0)  # the seeds of train/cat/0-1 and train/dog/0-1: their copies
    image_folder(root / "val", {"dog": 2}, seed=6)
    bundle = prepare_dataset(root, test_fraction=0)
    assert (len(bundle.train), len(bundle.val)) == (12, 4)
    assert bundle.summary()["duplicates"]["across_given_splits"] == 4
    assert bundle.summary()["duplicates"]["conflicting_labels"] == 0
    assert "4 validation or test example(s)" in caplog.text and "identical to training examples" in caplog.text


def test_a_train_test_layout_carves_validation_from_train(tmp_path):
    root = tmp_path / "pets"
    image_folder(root / "training", {"cat": 10, "dog": 10}, seed=0)
    image_folder(root / "testing", {"cat": 3, "dog": 3}, seed=100)
    bundle = prepare_dataset(root, val_fraction=0.2)
    assert len(bundle.test) == 6 and all("testing" in p for p in bundle.test.inputs)
    assert len(bundle.train) + len(bundle.val) == 20 and all("training" in p for p in bundle.val.inputs)
    every_class_everywhere(bundle)


def test_a_class_only_in_the_validation_folder_is_refused(tmp_path):
    root = tmp_path / "pets"
    image_folder(root / "train", {"cat": 4, "dog": 4})
    image_folder(root / "val", {"cat": 2, "dog": 2, "owl": 2}, seed=50)
    with pytest.raises(DataError, match=r"class 'owl' .*val.* not in .*train"):
        prepare_dataset(root)


def test_split_folders_beside_class_folders_are_refused(tmp_path):
    root = tmp_path / "pets"
    image_folder(root / "train", {"cat": 4, "dog": 4})
    image_folder(root, {"owl": 4}, seed=50)
    with pytest.raises(DataError, match=r"split folder\(s\) train .*beside class folders \(owl\)"):
        prepare_dataset(root)


def test_a_class_named_train_holding_files_stays_a_class(tmp_path):
    root = image_folder(tmp_path / "vehicles", {"train": 4, "car": 4})
    assert prepare_dataset(root, test_fraction=0).classes == ["car", "train"]


def test_the_layout_in_the_cli_no_class_named_train(tmp_path, capsys):
    root = tmp_path / "pets"
    image_folder(root / "train", {"cat": 4, "dog": 4})
    image_folder(root / "val", {"cat": 2, "dog": 2, "owl": 2}, seed=50)
    code, err = run_main(["search", "--data", root, "--output", tmp_path / "run", "--trials", "1"], capsys)
    assert "class 'owl'" in error_line(code, err) and not (tmp_path / "run").exists()


def with_hidden_files(root: Path) -> Path:
    image_folder(root, {"cat": 4, "dog": 4})
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "dog" / ".ipynb_checkpoints").mkdir()
    (root / "dog" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes((root / "dog" / "0.png").read_bytes())
    (root / ".ipynb_checkpoints").mkdir()
    write_png(root / ".ipynb_checkpoints" / "x.png", seed=99)
    return root


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path, caplog):
    root = with_hidden_files(tmp_path / "pets")
    bundle = prepare_dataset(root, test_fraction=0)
    assert bundle.classes == ["cat", "dog"] and len(bundle.train) + len(bundle.val) == 8
    assert bundle.skipped == ()  # the AppleDouble file is not a bad image: it is not an image at all
    assert bundle.summary()["hidden_skipped"] == 4
    assert "4 hidden file(s)" in caplog.text
    assert len(read_folder(root)) == 8
    assert len(prepare_unlabelled(root, "image")) == 8


# ---------------------------------------------------------------- 5. the same data under another path


def image_csv(directory: Path, per_class: int = 6) -> Path:
    rows = []
    for i in range(2 * per_class):
        write_png(directory / "imgs" / f"{i}.png", seed=i, size=16)
        rows.append({"image": f"imgs/{i}.png", "label": "cat" if i % 2 else "dog"})
    pd.DataFrame(rows).to_csv(directory / "train.csv", index=False)
    return directory / "train.csv"


def test_the_fingerprint_follows_the_files_not_their_spelling(tmp_path, monkeypatch):
    csv = image_csv(tmp_path)
    absolute = prepare_dataset(csv.resolve(), test_fraction=0)
    monkeypatch.chdir(tmp_path)
    relative = prepare_dataset("train.csv", test_fraction=0)
    assert relative.fingerprint == absolute.fingerprint
    write_png(tmp_path / "imgs" / "3.png", seed=77, size=16)  # same path, other content
    assert prepare_dataset("train.csv", test_fraction=0).fingerprint != absolute.fingerprint


def test_the_fingerprint_takes_the_split_numbers_as_numbers(tmp_path):
    """``test_fraction`` 0 (the estimator's default) and 0.0 (what the command line resolves to), or numpy's
    numbers, split alike: they must hash alike, or a study made by one face is not resumed by the other."""
    csv = image_csv(tmp_path)
    one = prepare_dataset(csv, test_fraction=0).fingerprint
    assert prepare_dataset(csv, test_fraction=0.0).fingerprint == one
    numpy_numbers = prepare_dataset(csv, test_fraction=np.float64(0), val_fraction=np.float64(0.15), seed=np.int64(0))
    assert numpy_numbers.fingerprint == one


def test_the_cli_resumes_the_same_csv_named_from_its_folder(tmp_path, capsys, monkeypatch):
    csv = image_csv(tmp_path / "data")
    run = tmp_path / "run"
    flags = ["--output", run, *TINY_SEARCH, "--no-refit"]
    code, err = run_main(["search", "--data", csv.resolve(), *flags], capsys)
    assert code == 0, err
    monkeypatch.chdir(csv.parent)
    code, err = run_main(["search", "--data", "train.csv", *flags], capsys)
    assert code == 0, err
    assert "other data" not in err
    board = pd.read_csv(run / "leaderboard.csv")
    assert len(board) == 1  # resumed: the finished trial counted, none run again


def test_the_same_data_split_another_way_is_refused_saying_so(tmp_path, capsys):
    """The command line, then docs/usage.md's lower-level API on the same CSV and run folder: under 2,000
    examples the command line holds out no test part and ``prepare_dataset`` 15 %, so the split differs. The
    refusal says so (the split sizes then and now), not merely "other data"."""
    from automl_tl import InputOptions, SearchConfig, run_search

    csv = image_csv(tmp_path / "data", per_class=10)
    run = tmp_path / "run"
    code, err = run_main(["search", "--data", csv, "--output", run, *TINY_SEARCH, "--no-refit"], capsys)
    assert code == 0, err
    before = (run / "study.journal").read_bytes()
    config = SearchConfig(
        backbones=("mobilenetv2_100",),
        n_trials=1,
        max_epochs=1,
        prerank=False,
        strategies=("linear_probe",),
        heads=("linear",),
        input_options=InputOptions(image_size=32),
    )
    with pytest.raises(ConfigError) as caught:
        run_search(prepare_dataset(csv), config, run)
    line = str(caught.value)
    assert "\n" not in line and "split another way" in line, line
    assert "then 17 train / 3 validation / 0 test, now" in line and "test_fraction" in line, line
    assert (run / "study.journal").read_bytes() == before
    again = run_search(prepare_dataset(csv, test_fraction=0), config, run)  # the command line's split: resumes
    assert len(again.study.trials) == 1


# ---------------------------------------------------------------- 7. data mistakes that were tracebacks


def test_an_image_path_then_long_texts_reads_texts_by_majority(caplog):
    texts = ["this is a long review " * 20 + str(i) for i in range(12)]
    frame = pd.DataFrame({"review": ["cat.png"] + texts, "label": ["a", "b"] * 6 + ["a"]})
    bundle = prepare_dataset(frame, test_fraction=0)
    assert bundle.modality == "text"
    assert "1 of 13" in caplog.text and "--modality image" in caplog.text


def test_a_long_text_read_as_an_image_path_is_an_unreadable_input():
    with pytest.raises(UnreadableInputError, match="image file not found|cannot read image file"):
        check_input("a very long review " * 40 + ".png", "image")
    frame = pd.DataFrame({"image": ["x.png", "too long " * 60] * 4, "label": ["a", "b"] * 4})
    with pytest.raises(DataError, match="none of the 8 labelled inputs"):
        prepare_dataset(frame, modality="image", test_fraction=0)


def test_the_label_column_named_as_the_input_column(capsys, tmp_path):
    with pytest.raises(DataError, match="the label column and the input column are both 'text'"):
        prepare_dataset(patients_frame(), label_column="text", input_column="text")
    csv = tmp_path / "notes.csv"
    patients_frame().to_csv(csv, index=False)
    code, err = run_main(
        ["search", "--data", csv, "--label", "text", "--input-column", "text", "--output", tmp_path / "run"], capsys
    )
    assert "both 'text'" in error_line(code, err)


def test_excel_and_semicolon_tables_of_image_paths(tmp_path):
    rows = []
    for i in range(12):
        write_png(tmp_path / "imgs" / f"{i}.png", seed=i)
        rows.append({"image": f"imgs/{i}.png", "label": "cat" if i % 2 else "dog"})
    pd.DataFrame(rows).to_excel(tmp_path / "data.xlsx", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False, sep=";")
    for name in ("data.xlsx", "data.csv"):
        bundle = prepare_dataset(tmp_path / name, test_fraction=0)
        assert bundle.modality == "image" and bundle.classes == ["cat", "dog"], name
        assert len(bundle.train) + len(bundle.val) == 12


def test_a_column_not_found_says_how_the_file_was_read(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("text;label\n" + "".join(f"note {i};{'ab'[i % 2]}\n" for i in range(8)))
    with pytest.raises(
        DataError,
        match=r"columns: text, label \(read as delimited text in UTF-8, fields separated "
        r"by semicolons \(;\)\)",
    ):
        prepare_dataset(csv, label_column="class")


@pytest.mark.parametrize("name", ["data.xls", "data.ods", "data.numbers"])
def test_spreadsheets_that_are_not_read_are_refused_saying_what_to_do(tmp_path, name):
    (tmp_path / name).write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200))
    with pytest.raises(DataError, match=r"save it as \.xlsx or \.csv"):
        prepare_dataset(tmp_path / name)


def test_a_tilde_in_a_path_is_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    rows = []
    for i in range(8):
        write_png(home / "pics" / f"{i}.png", seed=i)
        rows.append({"image": f"~/pics/{i}.png", "label": "cat" if i % 2 else "dog"})
    pd.DataFrame(rows).to_csv(home / "data.csv", index=False)
    bundle = prepare_dataset("~/data.csv", test_fraction=0)
    assert bundle.skipped == () and all(str(home) in p for p in bundle.train.inputs)
    assert read_image("~/pics/0.png").size == (8, 8)


def test_messages_count_the_files_lines(tmp_path, caplog):
    csv = tmp_path / "notes.csv"
    # line 1 header, 2..4 data; a quoted text spanning two lines (5-6); line 7 has no text; line 8 no label
    csv.write_text(
        'text,label\none,a\ntwo,b\nthree,a\n"four\nand more",b\n,a\neight,\n'
        + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(8))
    )
    with pytest.raises(DataError, match=rf"text input \(line 7 of {csv}\) is empty"):
        prepare_dataset(csv, on_bad_input="error", test_fraction=0)
    with caplog.at_level(logging.WARNING):
        prepare_dataset(csv, test_fraction=0)
    assert "first at line 8" in caplog.text


def test_a_carriage_return_inside_a_cell_is_read_not_a_crash(tmp_path):
    csv = tmp_path / "notes.csv"
    # a quoted cell holding a carriage return (as old Mac and Excel exports write one), then a stray one
    csv.write_bytes(
        b'text,label\n"first\rline",a\n'
        + b"".join(f"row {i},{'ab'[i % 2]}\n".encode() for i in range(8))
        + b"last\r,b\n"
    )
    bundle = prepare_dataset(csv, test_fraction=0)
    texts = list(bundle.train.inputs) + list(bundle.val.inputs)
    assert "first\rline" in texts  # the quoted cell kept whole, its carriage return too
    assert sorted(bundle.classes) == ["a", "b"]


def test_a_label_written_none_is_a_class_not_a_missing_label(tmp_path):
    csv = tmp_path / "defects.csv"
    csv.write_text(
        "text,label\n" + "".join(f"part {i},{('none', 'crack')[i % 2]}\n" for i in range(12)) + "part 12,NA\n"
    )
    bundle = prepare_dataset(csv, test_fraction=0)
    assert sorted(bundle.classes) == ["crack", "none"]
    assert [row.line for row in bundle.skipped] == [14]  # "NA" is an export's missing value: unlabelled


def test_line_numbers_in_predict_label_messages(tmp_path):
    from automl_tl.data.bundle import check_known_labels
    from automl_tl.data.readers import read_table

    csv = tmp_path / "new.csv"
    csv.write_text("text,label\nhello,a\nworld,owl\n")
    with pytest.raises(DataError, match="first 'owl' at line 3"):
        check_known_labels(read_table(csv), "label", ["a", "b"], str(csv))


# ---------------------------------------------------------------- smaller: decoding once, PIL's warnings


def test_every_image_is_decoded_once(tmp_path, monkeypatch):
    from PIL import ImageFile

    from automl_tl.modalities.image import ImagePreprocessor

    root = image_folder(tmp_path / "pets", {"cat": 4, "dog": 4})
    decoded: list = []
    original = ImageFile.ImageFile.load_prepare
    monkeypatch.setattr(
        ImageFile.ImageFile, "load_prepare", lambda self: (decoded.append(self.filename), original(self))[1]
    )
    bundle = prepare_dataset(root, test_fraction=0)
    assert decoded == []  # checked without decoding (PNG: by its chunks' checksums)
    ImagePreprocessor(32, (0.5,) * 3, (0.5,) * 3).encode(bundle.train.inputs)
    assert len(decoded) == len(bundle.train)


#: the formats whose files are checked from their structure, not decoded, and how each is written
STRUCTURE_CHECKED = {
    "t.gif": {},
    "t.webp": {"lossless": True},
    "t.bmp": {},
    "t.tif": {"compression": "tiff_lzw"},
    "u.tif": {},  # (uncompressed)
}


def write_image_as(path: Path, size: int = 48, **options) -> Path:
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path, **options)
    return path


@pytest.mark.parametrize("name", STRUCTURE_CHECKED)
def test_gif_webp_bmp_and_tiff_are_decoded_once(tmp_path, monkeypatch, name):
    from automl_tl.modalities.image import ImagePreprocessor

    path = write_image_as(tmp_path / name, **STRUCTURE_CHECKED[name])
    decoded: list = []
    original = Image.Image.load  # (every format's loading ends in it, the file's own decoder before it)
    monkeypatch.setattr(
        Image.Image, "load", lambda self: (getattr(self, "filename", "") and decoded.append(1), original(self))[1]
    )
    check_input(path, "image")
    assert decoded == []  # checked from its structure only
    ImagePreprocessor(32, (0.5,) * 3, (0.5,) * 3).encode([path])
    assert decoded


@pytest.mark.parametrize("name", ["t.png", *STRUCTURE_CHECKED])
def test_a_truncated_file_is_still_found_without_decoding(tmp_path, name):
    path = (
        write_png(tmp_path / name, size=32)
        if name == "t.png"
        else write_image_as(tmp_path / name, **STRUCTURE_CHECKED.get(name, {}))
    )
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(UnreadableInputError, match="cannot read image file"):
        check_input(path, "image")


def test_pils_warnings_name_the_file(tmp_path, monkeypatch, caplog):
    from PIL import ImageOps

    path = write_png(tmp_path / "huge.png")
    original = ImageOps.exif_transpose

    def warns(image, **kwargs):
        warnings.warn("Image size (200000000 pixels) exceeds limit", Image.DecompressionBombWarning)
        return original(image, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing raw reaches the user
        read_image(path)
    assert str(path) in caplog.text and "exceeds limit" in caplog.text
