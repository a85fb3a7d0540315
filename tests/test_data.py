"""automl_tl.data.bundle: reading image folders, CSV files and DataFrames; validation; seeded stratified splits.

Every user mistake must raise DataError with a one-line message that names the file, column,
row, class or value at fault and says what was expected. All inputs are real files in tmp_path.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from automl_tl.data.bundle import NO_LABEL, check_known_labels, prepare_dataset, prepare_unlabelled, stratified_split
from automl_tl.errors import DataError

# ---------------------------------------------------------------- helpers


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    """A small random RGB PNG (random pixels so that every file differs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def make_image_folder(root: Path, counts: dict[str, int]) -> Path:
    """root/<class>/<i>.png with counts[class] images per class."""
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            write_png(root / name / f"{i}.png", seed=seed)
            seed += 1
    return root


def make_csv(directory: Path, counts: dict[str, int], image_dir: str = "imgs", **columns) -> Path:
    """directory/labels.csv with relative paths ``imgs/<class>_<i>.png`` (written) and a label column."""
    rows = []
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            relative = f"{image_dir}/{name}_{i}.png"
            write_png(directory / relative, seed=seed)
            seed += 1
            rows.append({"image": relative, "label": name})
    frame = pd.DataFrame(rows)
    for column, values in columns.items():
        frame[column] = values
    path = directory / "labels.csv"
    frame.to_csv(path, index=False)
    return path


def array_frame(counts: dict, dtype=np.uint8) -> pd.DataFrame:
    """A DataFrame of 8x8 image arrays and labels; uint8 in 0..255 or float in [0, 1]."""
    rng = np.random.default_rng(0)
    rows = []
    for label, count in counts.items():
        for _ in range(count):
            if dtype == np.uint8:
                image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            else:
                image = rng.random((8, 8)).astype(dtype)
            rows.append({"image": image, "label": label})
    return pd.DataFrame(rows)


def data_error(*args, **kwargs) -> str:
    """The message of the DataError that prepare_dataset raises; it must be one line."""
    with pytest.raises(DataError) as info:
        prepare_dataset(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    assert message.strip(), "empty error message"
    return message


def split_labels(bundle, name: str) -> list:
    split = getattr(bundle, name)
    return [bundle.classes[i] for i in split.labels]


# ---------------------------------------------------------------- image folders


def test_image_folder_classes_sizes_and_every_class_in_every_split(tmp_path):
    folder = make_image_folder(tmp_path / "pets", {"cat": 10, "dog": 10, "owl": 10})
    bundle = prepare_dataset(folder, seed=0)

    assert bundle.modality == "image"
    assert bundle.classes == ["cat", "dog", "owl"]
    assert (bundle.input_column, bundle.label_column) == ("image", "label")
    # 15% of 30 rounds to 4 for validation and test; the rest trains
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (22, 4, 4)
    for name in ("train", "val", "test"):
        assert set(split_labels(bundle, name)) == {"cat", "dog", "owl"}, name

    # the three parts are disjoint and together hold every file exactly once
    parts = [set(bundle.train.inputs), set(bundle.val.inputs), set(bundle.test.inputs)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == {str(p) for p in folder.rglob("*.png")}
    # each input keeps its own label: the class is the name of the file's folder
    for split in (bundle.train, bundle.val, bundle.test):
        for path, label in zip(split.inputs, split.labels):
            assert Path(path).parent.name == bundle.classes[label]


def test_image_folder_split_is_stratified(tmp_path):
    folder = make_image_folder(tmp_path / "data", {"a": 20, "b": 40})
    bundle = prepare_dataset(folder, seed=3)
    for name, size in (("val", 9), ("test", 9)):
        labels = split_labels(bundle, name)
        assert len(labels) == size
        # one third of the data is 'a': 3 of 9 in a stratified split
        assert labels.count("a") == 3 and labels.count("b") == 6, (name, labels)
    train = split_labels(bundle, "train")
    assert (train.count("a"), train.count("b")) == (14, 28)


def test_same_seed_same_split_and_fingerprint_other_seed_changes_them(tmp_path):
    folder = make_image_folder(tmp_path / "data", {"a": 12, "b": 12})
    first, again, other = (prepare_dataset(folder, seed=s) for s in (7, 7, 8))

    for name in ("train", "val", "test"):
        assert getattr(first, name).inputs == getattr(again, name).inputs
        np.testing.assert_array_equal(getattr(first, name).labels, getattr(again, name).labels)
    assert first.fingerprint == again.fingerprint

    assert first.fingerprint != other.fingerprint
    assert set(first.test.inputs) != set(other.test.inputs) or set(first.val.inputs) != set(other.val.inputs)


def test_fingerprint_changes_with_the_data(tmp_path):
    folder = make_image_folder(tmp_path / "data", {"a": 5, "b": 5})
    before = prepare_dataset(folder).fingerprint
    write_png(folder / "b" / "extra.png", seed=99)
    assert prepare_dataset(folder).fingerprint != before


def test_every_class_in_every_split_even_when_a_class_is_rare():
    # 3 of 103 examples: stratified rounding alone gives the rare class no test example
    frame = array_frame({"rare": 3, "common": 100})
    for seed in range(5):
        bundle = prepare_dataset(frame, seed=seed)
        for name in ("train", "val", "test"):
            assert "rare" in split_labels(bundle, name), (seed, name)
        assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 103


@pytest.mark.parametrize("counts", [[3, 100], [3, 4, 60, 9], [8, 9, 3, 4, 8, 9], [3, 3, 3], [5, 200, 3, 3]])
def test_stratified_split_gives_every_part_every_class_and_uses_each_index_once(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    for seed in range(10):
        parts = stratified_split(labels, seed, 0.15, 0.15)
        for part in parts:
            assert set(labels[part]) == set(range(len(counts))), (seed, counts)
        joined = np.concatenate(parts)
        assert sorted(joined.tolist()) == list(range(len(labels)))
        again = stratified_split(labels, seed, 0.15, 0.15)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_image_folder_without_class_subfolders(tmp_path):
    folder = tmp_path / "flat"
    write_png(folder / "a.png")
    message = data_error(folder)
    assert str(folder) in message and "no class subfolders" in message


def test_image_folder_with_a_corrupt_image_names_the_file(tmp_path):
    folder = make_image_folder(tmp_path / "data", {"a": 4, "b": 4})
    bad = folder / "b" / "broken.png"
    bad.write_bytes(b"this is not a png")
    message = data_error(folder)
    assert str(bad) in message and "cannot read image file" in message


# ---------------------------------------------------------------- CSV files and DataFrames


def test_csv_relative_paths_resolve_against_the_csv_folder(tmp_path, monkeypatch):
    csv = make_csv(tmp_path / "project", {"x": 4, "y": 4})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the CSV, not to the working directory

    bundle = prepare_dataset(csv, seed=0)
    assert bundle.classes == ["x", "y"]
    inputs = bundle.train.inputs + bundle.val.inputs + bundle.test.inputs
    assert len(inputs) == 8
    for value in inputs:
        path = Path(value)
        assert path.is_absolute() and path.is_file()
        assert path.parent == tmp_path / "project" / "imgs"


def test_csv_absolute_paths_are_kept(tmp_path):
    images = make_image_folder(tmp_path / "imgs", {"x": 3, "y": 3})
    rows = [{"file": str(p), "label": p.parent.name} for p in sorted(images.rglob("*.png"))]
    csv = tmp_path / "other" / "data.csv"
    csv.parent.mkdir()
    pd.DataFrame(rows).to_csv(csv, index=False)
    bundle = prepare_dataset(csv)
    assert bundle.input_column == "file"  # the only column besides the label
    assert set(bundle.train.inputs + bundle.val.inputs + bundle.test.inputs) == {r["file"] for r in rows}


def test_dataframe_of_uint8_arrays_with_integer_labels():
    frame = array_frame({0: 6, 1: 6})
    bundle = prepare_dataset(frame, label_column="label", input_column="image")
    assert bundle.modality == "image"
    assert bundle.classes == [0, 1] and all(type(c) is int for c in bundle.classes)  # JSON-safe, as given
    assert all(isinstance(v, np.ndarray) and v.dtype == np.uint8 for v in bundle.train.inputs)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 12


def test_dataframe_of_float_arrays_in_unit_range_is_accepted():
    frame = array_frame({"a": 4, "b": 4}, dtype=np.float32)
    frame.at[0, "image"] = np.zeros((8, 8), np.float32)  # both ends of [0, 1] are allowed
    frame.at[1, "image"] = np.ones((8, 8, 3), np.float32)
    bundle = prepare_dataset(frame)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 8


@pytest.mark.parametrize(
    "bad",
    [
        np.full((8, 8), 1.5, np.float32),  # 0..255-scaled floats are a classic mistake
        np.full((8, 8), -0.1, np.float64),
        np.full((8, 8), np.nan, np.float32),
    ],
)
def test_float_arrays_outside_unit_range_are_rejected_naming_the_row(bad):
    frame = array_frame({"a": 4, "b": 4}, dtype=np.float32)
    frame.at[5, "image"] = bad
    message = data_error(frame)
    assert "row 5" in message and "the DataFrame" in message
    assert "float in [0, 1]" in message and str(bad.dtype) in message


def test_array_of_wrong_shape_is_rejected_naming_the_row():
    frame = array_frame({"a": 4, "b": 4})
    frame.at[2, "image"] = np.zeros((8, 8, 2), np.uint8)
    message = data_error(frame)
    assert "row 2" in message and "(8, 8, 2)" in message and "HxW" in message


# ---------------------------------------------------------------- user mistakes


def test_missing_label_column_names_it_and_lists_the_columns(tmp_path):
    csv = make_csv(tmp_path, {"x": 3, "y": 3})
    frame = pd.read_csv(csv).rename(columns={"label": "species"})
    frame.to_csv(csv, index=False)
    message = data_error(csv)  # label_column defaults to "label"
    assert "label column 'label' not found" in message
    assert str(csv) in message and "columns: image, species" in message


def test_missing_input_column_names_it_and_lists_the_columns(tmp_path):
    csv = make_csv(tmp_path, {"x": 3, "y": 3})
    message = data_error(csv, input_column="filepath")
    assert "input column 'filepath' not found" in message
    assert str(csv) in message and "columns: image, label" in message


def test_ambiguous_input_column_asks_for_it(tmp_path):
    csv = make_csv(tmp_path, {"x": 3, "y": 3}, notes=["n"] * 6, extra=[1] * 6)
    frame = pd.read_csv(csv).rename(columns={"image": "picture"})
    frame.to_csv(csv, index=False)
    message = data_error(csv)
    assert "--input-column" in message and "picture" in message and str(csv) in message


def test_empty_csv_file(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_bytes(b"")
    message = data_error(csv)
    assert "cannot read CSV file" in message and str(csv) in message


def test_csv_with_header_but_zero_rows(tmp_path):
    csv = tmp_path / "header_only.csv"
    csv.write_text("image,label\n")
    message = data_error(csv)
    assert str(csv) in message and "no rows" in message


def test_empty_dataframe():
    message = data_error(pd.DataFrame({"image": [], "label": []}))
    assert "the DataFrame" in message and "no rows" in message


def test_one_class_only(tmp_path):
    csv = make_csv(tmp_path, {"cat": 5})
    message = data_error(csv)
    assert "1 class" in message and "'cat'" in message and "at least 2" in message and str(csv) in message


def test_class_with_fewer_than_three_examples_names_class_and_count(tmp_path):
    csv = make_csv(tmp_path, {"cat": 5, "dog": 2})
    message = data_error(csv)
    assert "class 'dog'" in message and "2 example(s)" in message and "at least 3" in message
    assert str(csv) in message


def test_small_numeric_class_is_named_as_the_user_wrote_it():
    message = data_error(array_frame({7: 2, 8: 5}))
    assert "class 7 " in message and "np." not in message and "1 example" not in message
    message = data_error(array_frame({7: 4}))
    assert "(7)" in message and "np." not in message


def test_missing_image_file_names_the_path(tmp_path):
    csv = make_csv(tmp_path, {"x": 3, "y": 3})
    missing = tmp_path / "imgs" / "y_1.png"
    missing.unlink()
    message = data_error(csv)
    assert "image file not found" in message and str(missing) in message


def test_garbage_bytes_in_a_png_file_names_the_file(tmp_path):
    csv = make_csv(tmp_path, {"x": 3, "y": 3})
    bad = tmp_path / "imgs" / "x_2.png"
    bad.write_bytes(b"\x00garbage, not an image\xff" * 10)
    message = data_error(csv)
    assert "cannot read image file" in message and str(bad) in message


def test_truncated_png_names_the_file(tmp_path):
    csv = make_csv(tmp_path, {"x": 3, "y": 3})
    bad = tmp_path / "imgs" / "y_0.png"
    buffer = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    bad.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # header intact, pixel data cut
    message = data_error(csv)
    assert "cannot read image file" in message and str(bad) in message


def test_image_header_claiming_a_huge_size_names_the_file(tmp_path):
    # a corrupt BMP header that claims 30000x30000 pixels: PIL refuses it as a decompression bomb
    csv = make_csv(tmp_path, {"x": 3, "y": 3})
    frame = pd.read_csv(csv)
    frame.loc[0, "image"] = "imgs/huge.bmp"
    frame.to_csv(csv, index=False)
    bad = tmp_path / "imgs" / "huge.bmp"
    bad.write_bytes(
        b"BM"
        + struct.pack("<IHHI", 54, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    )
    message = data_error(csv, on_bad_input="error")
    assert "is too large: 30000x30000 pixels (900 MP)" in message and str(bad) in message


def test_empty_label_cells_are_unlabelled_rows_not_an_error(tmp_path, caplog):
    csv = make_csv(tmp_path, {"x": 4, "y": 4})
    frame = pd.read_csv(csv)
    frame.loc[[3, 6], "label"] = None
    frame.to_csv(csv, index=False)
    bundle = prepare_dataset(csv, on_bad_input="error", test_fraction=0)  # not bad inputs: no policy refuses them
    assert len(bundle.train) + len(bundle.val) == 6
    assert [(r.row, r.kind) for r in bundle.skipped] == [(3, NO_LABEL), (6, NO_LABEL)]
    assert bundle.unlabelled == (str(tmp_path / "imgs" / "x_3.png"), str(tmp_path / "imgs" / "y_2.png"))
    assert "2 of 8 rows" in caplog.text and "no 'label'" in caplog.text
    assert "first at line 5" in caplog.text  # row 3 of the data: the header is line 1


def test_empty_input_cells_are_reported(tmp_path):
    csv = make_csv(tmp_path, {"x": 4, "y": 4})
    frame = pd.read_csv(csv)
    frame.loc[5, "image"] = None
    frame.to_csv(csv, index=False)
    message = data_error(csv, on_bad_input="error")
    assert message == f"image input (line 7 of {csv}) is empty"


def test_input_column_that_holds_no_images(tmp_path):
    csv = tmp_path / "numbers.csv"
    pd.DataFrame({"value": list(range(8)), "label": ["a", "b"] * 4}).to_csv(csv, index=False)
    message = data_error(csv)
    assert "column 'value'" in message and "image paths" in message


@pytest.mark.parametrize(
    "name, expected", [("no_such_folder", "data path not found"), ("no_such_file.csv", "data file not found")]
)
def test_data_path_that_does_not_exist(tmp_path, name, expected):
    path = tmp_path / name
    message = data_error(path)
    assert expected in message and str(path) in message


# ---------------------------------------------------------------- text and audio inputs


def test_folder_of_text_files_becomes_a_text_dataset(tmp_path):
    for label in ("sport", "tech"):
        (tmp_path / "news" / label).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "news" / label / f"{i}.txt").write_text(f"{label} story number {i}\n", encoding="utf-8")
    bundle = prepare_dataset(tmp_path / "news")
    assert bundle.modality == "text" and bundle.input_column == "text"
    assert bundle.classes == ["sport", "tech"]
    everything = bundle.train.inputs + bundle.val.inputs + bundle.test.inputs
    assert sorted(everything) == sorted(f"{label} story number {i}\n" for label in ("sport", "tech") for i in range(4))


def test_text_column_in_a_csv_is_not_taken_for_paths(tmp_path):
    csv = tmp_path / "reviews.csv"
    pd.DataFrame(
        {
            "review": ["good", "great film", "loved it", "bad", "awful", "boring plot"],
            "label": ["pos"] * 3 + ["neg"] * 3,
        }
    ).to_csv(csv, index=False)
    bundle = prepare_dataset(csv)
    assert bundle.modality == "text"
    assert set(bundle.train.inputs + bundle.val.inputs + bundle.test.inputs) == {
        "good",
        "great film",
        "loved it",
        "bad",
        "awful",
        "boring plot",
    }


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\xff\xfe\x00 not utf-8 \xff", "is not UTF-8"),
        (b"   \n\n", "is empty"),
    ],
)
def test_bad_text_file_is_named(tmp_path, content, expected):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.txt").write_text("fine text", encoding="utf-8")
    bad = tmp_path / "b" / "1.txt"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=expected) as info:
        prepare_dataset(tmp_path)
    assert str(bad) in str(info.value)


def test_empty_text_in_a_dataframe_names_the_row():
    frame = pd.DataFrame({"text": ["one", "two", "three", "four", "  ", "six"], "label": [0, 0, 0, 1, 1, 1]})
    with pytest.raises(DataError, match=r"row 4"):
        prepare_dataset(frame)


def test_folder_mixing_kinds_of_files_is_refused(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.txt").write_text("text", encoding="utf-8")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    with pytest.raises(DataError, match="mixes image and text files"):
        prepare_dataset(tmp_path)


def test_modality_is_inferred_from_the_first_value():
    from automl_tl.data.readers import infer_modality

    assert infer_modality(["x/a.wav"], "audio") == "audio"
    assert infer_modality(["x/a.PNG"], "image") == "image"
    assert infer_modality(["a sentence"], "text") == "text"


def test_dangling_link_in_a_class_folder_is_named_not_skipped(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.txt").write_text("fine text", encoding="utf-8")
    link = tmp_path / "a" / "gone.txt"
    link.symlink_to(tmp_path / "nowhere.txt")
    message = data_error(tmp_path)
    assert "cannot read text file" in message and str(link) in message


@pytest.mark.parametrize("labels", [[1, 2, None], [1.0, 2.0, np.nan], ["1", "2", None]])
def test_known_labels_match_as_text_and_empty_cells_pass(labels):
    check_known_labels(pd.DataFrame({"label": labels}), "label", [1, 2], "x.csv")  # no error


def test_unknown_label_in_predict_data_is_refused_naming_it(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "neg", "neutral"]})
    with pytest.raises(DataError) as info:
        prepare_unlabelled(frame, "text", "text", label_column="label", classes=["neg", "pos"])
    message = str(info.value)
    assert "label column 'label' of the DataFrame" in message and "first 'neutral' at row 2" in message
    assert "its classes: 'neg', 'pos'" in message and "\n" not in message
    # without the model's classes, or with another label column, labels are not looked at
    assert prepare_unlabelled(frame, "text", "text") == ["a", "b", "c"]
    assert prepare_unlabelled(frame, "text", "text", label_column="y", classes=["neg", "pos"]) == ["a", "b", "c"]
