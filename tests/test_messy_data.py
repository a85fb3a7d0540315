"""Data as it comes (issue 11): the bad-row policy and the formats a hands-off user brings.

Every case is a real file on disk: AIFF, MP3 and Opus clips written with soundfile, a 20000x20000 PNG
(bilevel and written row by row, so it is 50 KB on disk and cheap to make), a truncated JPEG, an
EXIF-rotated JPEG, animated GIF and APNG files, a Latin-1 CSV, a semicolon CSV, TSV, Parquet, JSON
Lines and Excel tables, and rows without labels. One tiny search (``messy_run``) shows what a run
directory says about the rows it left out: skipped.csv, summary.json, the report and the model card.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image

from automl_tl.data.bundle import NO_LABEL, SkippedRow, prepare_dataset
from automl_tl.data.readers import AUDIO_EXTENSIONS, check_image, read_audio, read_folder, read_image, read_table
from automl_tl.errors import ConfigError, DataError, UnreadableInputError
from automl_tl.layout import SKIPPED_FILE
from automl_tl.results.report import write_skipped

MP3 = "MP3" in soundfile.available_formats()
needs_mp3 = pytest.mark.skipif(
    not MP3, reason=f"libsndfile {soundfile.__libsndfile_version__} reads no MP3 (1.1 and later do)"
)

# ---------------------------------------------------------------- files


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid black 1-bit PNG of ``width`` x ``height``, written a row at a time (never held whole)."""
    compressor, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def sine(frequency: float, rate: int = 16000, seconds: float = 0.5) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def image_csv(directory: Path, per_class: int = 5, labels: tuple = ("cat", "dog"), name: str = "data.csv") -> Path:
    rows = []
    for index in range(per_class * len(labels)):
        label = labels[index % len(labels)]
        write_png(directory / "imgs" / f"{index}.png", seed=index)
        rows.append({"image": f"imgs/{index}.png", "label": label})
    path = directory / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def all_inputs(bundle) -> list:
    return bundle.train.inputs + bundle.val.inputs + bundle.test.inputs


# ---------------------------------------------------------------- audio: every format libsndfile reads


def test_audio_extensions_come_from_libsndfile():
    assert {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".caf", ".w64", ".opus"} <= set(AUDIO_EXTENSIONS)
    assert (".mp3" in AUDIO_EXTENSIONS) == MP3
    assert not {".raw", ".mat", ".mat4"} & set(AUDIO_EXTENSIONS)  # header-less, or Matlab data: not sound files


@needs_mp3
def test_aiff_mp3_and_opus_clips_in_a_csv_are_an_audio_data_set(tmp_path):
    clips = []
    for index in range(4):
        low, high = tmp_path / f"low{index}.AIF", tmp_path / f"high{index}.mp3"  # (an extension in capitals too)
        soundfile.write(low, sine(220 + 10 * index), 16000, format="AIFF")
        soundfile.write(high, sine(880 + 10 * index), 16000, format="MP3")
        clips += [(low.name, "low"), (high.name, "high")]
    opus = tmp_path / "extra.opus"
    soundfile.write(opus, sine(880, 48000), 48000, format="OGG", subtype="OPUS")
    clips.append((opus.name, "high"))
    csv = tmp_path / "clips.csv"
    pd.DataFrame(clips, columns=["audio", "label"]).to_csv(csv, index=False)
    bundle = prepare_dataset(csv, test_fraction=0)
    assert bundle.modality == "audio" and bundle.classes == ["high", "low"] and bundle.skipped == ()
    for file, rate, frequency in (
        (tmp_path / "low0.AIF", 16000, 220),
        (tmp_path / "high0.mp3", 16000, 880),
        (opus, 48000, 880),
    ):
        samples = read_audio(file)
        assert abs(len(samples) - rate / 2) < 0.1 * rate, file  # (MP3 and Opus pad a little)
        assert abs(peak_frequency(samples, rate) - frequency) < 10, file
    assert abs(peak_frequency(read_audio(opus, 16000), 16000) - 880) < 10  # resampled


def test_a_folder_of_aiff_files_with_capital_extensions_is_read(tmp_path):
    for label, frequency in (("low", 220), ("high", 880)):
        (tmp_path / label).mkdir()
        for index in range(3):
            soundfile.write(tmp_path / label / f"{index}.AIFF", sine(frequency + index), 8000, format="AIFF")
    frame = read_folder(tmp_path)
    assert list(frame.columns) == ["audio", "label"] and len(frame) == 6


def test_silent_empty_and_unsupported_clips_are_skipped_with_their_reason(tmp_path):
    rows = []
    for index in range(10):
        soundfile.write(tmp_path / f"{index}.wav", sine(200 + 50 * index), 8000)
        rows.append((f"{index}.wav", "ab"[index % 2]))
    soundfile.write(tmp_path / "silent.wav", np.zeros(800, dtype=np.float32), 8000)
    (tmp_path / "notes.xyz").write_text("not audio")
    rows += [("silent.wav", "a"), ("notes.xyz", "b")]
    csv = tmp_path / "clips.csv"
    pd.DataFrame(rows, columns=["audio", "label"]).to_csv(csv, index=False)
    bundle = prepare_dataset(csv, test_fraction=0, max_bad_fraction=0.2)
    assert [(r.row, r.kind) for r in bundle.skipped] == [(10, "silent"), (11, "unsupported format")]
    assert bundle.skipped[0].file == str(tmp_path / "silent.wav")
    assert len(all_inputs(bundle)) == 10


# ---------------------------------------------------------------- images


def test_a_20000_by_20000_png_is_skipped_from_its_header_naming_its_size(tmp_path, caplog):
    started = time.perf_counter()
    csv = image_csv(tmp_path, per_class=6)
    huge = bilevel_png(tmp_path / "imgs" / "huge.png", 20000, 20000)
    assert huge.stat().st_size < 200_000
    frame = pd.read_csv(csv)
    pd.concat([frame, pd.DataFrame([{"image": "imgs/huge.png", "label": "cat"}])]).to_csv(csv, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning may not even be raised
        bundle = prepare_dataset(csv, test_fraction=0)
    assert [(r.row, r.file, r.kind) for r in bundle.skipped] == [(12, str(huge), "too large")]
    assert "20000x20000 pixels (400 MP), more than the limit of 179 MP" in bundle.skipped[0].reason
    assert "skipped 1 of 13 labelled rows" in caplog.text and str(huge) in caplog.text
    assert time.perf_counter() - started < 10, "the check must read the header only"
    # with a limit above it, the header check passes: PIL's own bomb error never fires
    check_image(huge, max_pixels=500_000_000, decode=False)
    message = str(pytest.raises(DataError, prepare_dataset, csv, on_bad_input="error").value)
    assert message.startswith(f"image file {huge} is too large: 20000x20000 pixels")


def test_an_image_above_pils_own_warning_threshold_reads_without_its_warning(tmp_path):
    wide = bilevel_png(tmp_path / "wide.png", 12000, 8000)  # 96 MP: PIL warns from 89.5 MP on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_image(wide)  # verified by checksums, not decoded
        image = read_image(wide, size=32)
    assert image.mode == "RGB" and min(image.size) >= 96 and max(image.size) < 1000  # decoded, then reduced


def test_large_images_are_decoded_reduced_towards_the_size_they_are_resized_to(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8)).save(photo)
    reduced = read_image(photo, size=32)
    assert 96 <= min(reduced.size) and max(reduced.size) <= 400, reduced.size  # JPEG draft: 1/8 scale, then reduce
    assert read_image(photo).size == (3000, 2000)  # without a size: whole
    scan = tmp_path / "scan.png"
    Image.fromarray(np.tile(np.arange(2000, dtype=np.uint8)[None, :], (1500, 1))).save(scan)
    assert min(read_image(scan, size=32).size) >= 96 and max(read_image(scan, size=32).size) < 300
    assert read_image(tmp_path / "photo.jpg", size=1000).size == (3000, 2000)  # not much larger: left whole
    with pytest.raises(UnreadableInputError) as caught:
        check_image(photo, max_pixels=1_000_000)
    assert caught.value.kind == UnreadableInputError.TOO_LARGE and "3000x2000 pixels (6.0 MP)" in str(caught.value)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[37, 10]
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]  # the left (blue) half is on top now


@pytest.mark.parametrize("name", ["anim.gif", "anim.png", "anim.webp"])
def test_an_animation_gives_its_first_frame(tmp_path, name):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / name) as opened:
        assert getattr(opened, "n_frames", 1) == 3
    pixel = np.asarray(read_image(tmp_path / name))[8, 8]
    assert pixel[0] > 200 and pixel[1] < 50 and pixel[2] < 50


def test_a_truncated_jpeg_is_skipped_and_listed(tmp_path):
    csv = image_csv(tmp_path, per_class=6)
    broken = truncated_jpeg(tmp_path / "imgs" / "cut.jpg")
    frame = pd.read_csv(csv)
    pd.concat([frame.iloc[:3], pd.DataFrame([{"image": "imgs/cut.jpg", "label": "dog"}]), frame.iloc[3:]]).to_csv(
        csv, index=False
    )
    bundle = prepare_dataset(csv, test_fraction=0)
    assert [(r.row, r.file, r.kind) for r in bundle.skipped] == [(3, str(broken), "corrupt or truncated")]
    assert "truncated" in bundle.skipped[0].reason and str(broken) not in all_inputs(bundle)
    assert len(all_inputs(bundle)) == 12


# ---------------------------------------------------------------- the bad-row policy


def test_rows_without_a_label_are_kept_apart_and_counted_once(tmp_path, caplog):
    csv = image_csv(tmp_path, per_class=5)
    frame = pd.read_csv(csv).astype(object)
    frame.loc[[1, 4], "label"] = ["", "  "]
    frame.loc[7, "label"] = "NA"
    frame.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING):
        bundle = prepare_dataset(csv, test_fraction=0)
    assert [(r.row, r.kind) for r in bundle.skipped] == [(1, NO_LABEL), (4, NO_LABEL), (7, NO_LABEL)]
    assert bundle.unlabelled == tuple(str(tmp_path / "imgs" / f"{i}.png") for i in (1, 4, 7))
    assert bundle.skipped_counts() == {"unlabelled": 3, "unreadable": 0, "by_reason": {NO_LABEL: 3}}
    warned = [r.getMessage() for r in caplog.records if "no 'label'" in r.getMessage()]
    assert len(warned) == 1 and "3 of 10 rows" in warned[0]
    # their absence is all that changes the fingerprint: the same labelled rows alone give the same one
    labelled = prepare_dataset(
        pd.read_csv(csv).drop(index=[1, 4, 7]).assign(image=lambda f: [str(tmp_path / p) for p in f["image"]]),
        test_fraction=0,
    )
    assert labelled.fingerprint == bundle.fingerprint


def test_on_bad_input_error_refuses_at_the_first_unreadable_row(tmp_path):
    csv = image_csv(tmp_path, per_class=10)
    (tmp_path / "imgs" / "13.png").write_bytes(b"not a png")
    assert len(prepare_dataset(csv).skipped) == 1  # by default: 1 of 20 skipped
    with pytest.raises(UnreadableInputError) as caught:
        prepare_dataset(csv, on_bad_input="error")
    assert str(caught.value).startswith(f"cannot read image file {tmp_path / 'imgs' / '13.png'}")


def test_more_bad_rows_than_max_bad_fraction_refuses_in_one_line(tmp_path):
    csv = image_csv(tmp_path, per_class=10)
    for index in (2, 5, 11):
        (tmp_path / "imgs" / f"{index}.png").unlink()
    with pytest.raises(DataError) as caught:
        prepare_dataset(csv)
    message = str(caught.value)
    assert message == (
        f"3 of 20 labelled rows of {csv} (15%) cannot be used, more than the 10% that "
        f"--max-bad-fraction (max_bad_fraction) allows; the first: image file not found: "
        f"{tmp_path / 'imgs' / '2.png'}"
    )
    assert len(prepare_dataset(csv, max_bad_fraction=0.2).skipped) == 3


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"on_bad_input": "ignore"}, "on_bad_input must be one of skip, error; got 'ignore'"),
        ({"max_bad_fraction": 1.5}, "max_bad_fraction must be a share of the rows between 0 and 1; got 1.5"),
        ({"max_image_pixels": 0}, "max_image_pixels must be a whole number of pixels >= 1"),
    ],
)
def test_bad_input_options_are_refused(tmp_path, options, expected):
    from automl_tl import TransferClassifier

    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        prepare_dataset(image_csv(tmp_path), **options)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        TransferClassifier(**options).check_params()


def test_skipped_csv_keeps_a_spreadsheet_from_running_a_cell(tmp_path):
    rows = [
        SkippedRow(0, '=HYPERLINK("http://x")', NO_LABEL, NO_LABEL),
        SkippedRow(4, "+1 great film", NO_LABEL, NO_LABEL),
        SkippedRow(9, "@SUM(A1)", "empty", "-empty text"),
        SkippedRow(12, "plain.png", "corrupt or truncated", "corrupt or truncated: bad"),
    ]
    written = pd.read_csv(write_skipped(tmp_path, rows), keep_default_na=False)
    assert list(written.columns) == ["row", "line", "file", "reason"]
    assert list(written["file"]) == ['\'=HYPERLINK("http://x")', "'+1 great film", "'@SUM(A1)", "plain.png"]
    assert list(written["reason"])[2:] == ["'-empty text", "corrupt or truncated: bad"]
    assert (tmp_path / SKIPPED_FILE).read_text().splitlines()[0] == "row,line,file,reason"
    assert write_skipped(tmp_path, []).read_text() == "row,line,file,reason\n"  # written empty too


def test_a_text_folder_reads_latin1_files_and_skips_a_binary_one(tmp_path, caplog):
    for label, words in (("good", "a fine film"), ("bad", "a dull plot")):
        (tmp_path / label).mkdir()
        for index in range(6):
            (tmp_path / label / f"{index + 1}.txt").write_text(f"{words} number {index}", encoding="utf-8")
    (tmp_path / "bad" / "0.txt").write_bytes(b"\x00\x01\x02 binary \xff")  # the first file read: not text
    (tmp_path / "good" / "1.txt").write_bytes("un très bon film".encode("latin-1"))
    bundle = prepare_dataset(tmp_path, test_fraction=0)
    assert bundle.modality == "text" and "un très bon film" in all_inputs(bundle)
    assert [(r.row, r.file, r.kind) for r in bundle.skipped] == [
        (0, str(tmp_path / "bad" / "0.txt"), "unsupported format")
    ]
    assert "1 text file(s) are not UTF-8 and were read as cp1252" in caplog.text


# ---------------------------------------------------------------- tables


def texts_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [
                "un café noir, sans sucre",
                "café au lait",
                "un grand café",
                "café crème",
                "thé vert; très chaud",
                "thé à la menthe",
                "un thé noir",
                "thé glacé",
            ],
            "label": ["café"] * 4 + ["thé"] * 4,
        }
    )


def test_a_latin1_csv_is_read_with_a_warning(tmp_path, caplog):
    csv = tmp_path / "boissons.csv"
    csv.write_bytes(texts_frame().to_csv(index=False).encode("latin-1"))
    bundle = prepare_dataset(csv)
    assert bundle.classes == ["café", "thé"] and "un café noir, sans sucre" in all_inputs(bundle)
    assert "is not UTF-8: read as cp1252" in caplog.text


@pytest.mark.parametrize(
    "name, sep, encoding",
    [
        ("semicolon.csv", ";", "utf-8"),
        ("tabs.tsv", "\t", "utf-8"),
        ("tabs.csv", "\t", "utf-8"),
        ("bom.csv", ",", "utf-8-sig"),
        ("pipes.csv", "|", "utf-8"),
        ("excel.txt", "\t", "utf-16"),
    ],
)
def test_delimiters_and_byte_order_marks(tmp_path, name, sep, encoding):
    path = tmp_path / name
    path.write_bytes(texts_frame().to_csv(index=False, sep=sep).encode(encoding))
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"] and list(frame["text"]) == list(texts_frame()["text"])


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".xlsx"])
def test_parquet_jsonl_and_excel_tables_keep_numeric_labels_as_ints(tmp_path, suffix):
    frame = texts_frame().assign(label=[0, 0, 0, 0, 1, 1, 1, 1]).astype({"label": float})
    frame.loc[len(frame)] = ["une boisson sans étiquette", np.nan]  # an unlabelled row: the column is float
    path = tmp_path / f"drinks{suffix}"
    {
        ".parquet": lambda: frame.to_parquet(path),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".xlsx": lambda: frame.to_excel(path, index=False),
    }[suffix]()
    bundle = prepare_dataset(path)
    assert bundle.classes == [0, 1] and all(type(c) is int for c in bundle.classes)
    assert bundle.unlabelled == ("une boisson sans étiquette",)


def test_csv_labels_are_classes_as_written(tmp_path):
    csv = tmp_path / "numbers.csv"
    csv.write_text("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(8)) + "no label here,\n")
    bundle = prepare_dataset(csv)
    assert bundle.classes == [0, 1] and all(type(c) is int for c in bundle.classes)  # not 0.0 and 1.0
    zeros = tmp_path / "codes.csv"
    zeros.write_text("text,label\n" + "".join(f"item {i},{'007' if i % 2 else '010'}\n" for i in range(8)))
    assert prepare_dataset(zeros).classes == ["007", "010"]  # not 7 and 10


def test_a_broken_parquet_file_is_one_line(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 not really")
    message = str(pytest.raises(DataError, prepare_dataset, path).value)
    assert message.startswith(f"cannot read Parquet file {path}:") and "\n" not in message


# ---------------------------------------------------------------- options travel: config files and workers


def test_the_policy_travels_in_config_files_and_worker_data_sources(tmp_path):
    from automl_tl import TransferClassifier
    from automl_tl.cli import _with_config_file, build_parser, search_estimator_params
    from automl_tl.data.source import load_data_source

    csv = image_csv(tmp_path, per_class=6)
    bilevel_png(tmp_path / "imgs" / "big.png", 1200, 1000)
    frame = pd.read_csv(csv)
    pd.concat([frame, pd.DataFrame([{"image": "imgs/big.png", "label": "cat"}])]).to_csv(csv, index=False)
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {csv.name}\non-bad-input: skip\nmax-bad-fraction: 0.2\nmax-image-pixels: 1000000\n")
    parser = build_parser()
    argv = ["search", "--config", str(job)]
    params = search_estimator_params(_with_config_file(parser, argv, parser.parse_args(argv)))
    assert (params["on_bad_input"], params["max_bad_fraction"], params["max_image_pixels"]) == ("skip", 0.2, 1_000_000)

    estimator = TransferClassifier(**{**params, "output_dir": None})
    _, _, _, source = estimator._training_data(str(csv), None)
    assert (source["on_bad_input"], source["max_bad_fraction"], source["max_image_pixels"]) == ("skip", 0.2, 1_000_000)
    rebuilt = load_data_source(source)
    assert [r.kind for r in rebuilt.skipped] == ["too large"]  # 1.2 MP > 1 MP: what the maker skipped
    assert (
        rebuilt.fingerprint
        == prepare_dataset(
            csv,
            seed=source["seed"],
            val_fraction=source["val_fraction"],
            test_fraction=source["test_fraction"],
            max_image_pixels=1_000_000,
        ).fingerprint
    )
    old = {k: v for k, v in source.items() if k not in ("on_bad_input", "max_bad_fraction", "max_image_pixels")}
    assert load_data_source(old).skipped == ()  # stored before the policy: the defaults

    job.write_text(f"data: {csv.name}\nmax-bad-fraction: 2\n")
    with pytest.raises(ConfigError, match=r"config file .*job.yaml: option 'max-bad-fraction'"):
        _with_config_file(parser, argv, parser.parse_args(argv))


# ---------------------------------------------------------------- one messy search, end to end


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    """A search on a CSV with numeric labels, 2 unlabelled rows, a truncated JPEG and a 400-megapixel PNG."""
    from automl_tl.cli import main

    tmp = tmp_path_factory.mktemp("messy")
    rows = []
    for index in range(30):
        write_png(tmp / "imgs" / f"{index}.png", seed=index)
        rows.append({"image": f"imgs/{index}.png", "label": str(index % 2)})
    truncated_jpeg(tmp / "imgs" / "cut.jpg")
    bilevel_png(tmp / "imgs" / "huge.png", 20000, 20000)
    write_png(tmp / "imgs" / "new.png", seed=99)
    rows[3:3] = [{"image": "imgs/cut.jpg", "label": "1"}, {"image": "imgs/new.png", "label": ""}]
    rows += [{"image": "imgs/huge.png", "label": "0"}, {"image": "imgs/0.png", "label": ""}]
    csv = tmp / "messy.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    run = tmp / "run"
    code = main(
        [
            str(a)
            for a in [
                "search",
                "--data",
                csv,
                "--output",
                run,
                "--backbones",
                "mobilenetv2_100",
                "--image-size",
                "32",
                "--trials",
                "2",
                "--max-epochs",
                "1",
                "--no-prerank",
                "--strategies",
                "linear_probe",
                "--heads",
                "linear",
            ]
        ]
    )
    assert code == 0
    return tmp, csv, run


def test_skipped_csv_lists_every_row_left_out(messy_run):
    tmp, _, run = messy_run
    skipped = pd.read_csv(run / SKIPPED_FILE)
    assert list(skipped["row"]) == [3, 4, 32, 33]
    assert list(skipped["line"]) == [5, 6, 34, 35]  # as the log's messages name them: the header is line 1
    assert list(skipped["file"]) == [str(tmp / "imgs" / name) for name in ("cut.jpg", "new.png", "huge.png", "0.png")]
    assert skipped["reason"][0].startswith("corrupt or truncated: ") and skipped["reason"][1] == NO_LABEL
    assert skipped["reason"][2].startswith("too large: 20000x20000 pixels") and skipped["reason"][3] == NO_LABEL


def test_summary_report_and_card_count_the_rows_left_out(messy_run):
    _, _, run = messy_run
    counts = json.loads((run / "summary.json").read_text())["data"]["skipped"]
    assert counts == {
        "unlabelled": 2,
        "unreadable": 2,
        "by_reason": {NO_LABEL: 2, "corrupt or truncated": 1, "too large": 1},
    }
    shown = (
        "2 without a label (kept as unlabelled, not trained on), 2 unreadable (corrupt or truncated: 1, "
        "too large: 1); listed in skipped.csv"
    )
    assert shown in (run / "report.html").read_text()
    assert f"| rows left out | {shown} |" in (run / "MODEL_CARD.md").read_text()


def test_numeric_labels_are_written_back_as_the_user_wrote_them(messy_run, capsys):
    from automl_tl.cli import main

    tmp, csv, run = messy_run
    assert json.loads((run / "best_model" / "config.json").read_text())["classes"] == [0, 1]
    assert main(["predict", str(run), "--data", str(csv), "--output", str(tmp / "p.csv")]) == 0
    assert "2 row(s) could not be read" in capsys.readouterr().out
    predictions = pd.read_csv(tmp / "p.csv", dtype=str, keep_default_na=False)
    assert list(predictions.columns[-4:]) == ["prediction", "proba:0", "proba:1", "error"]
    failed = predictions[predictions["error"] != ""]
    assert list(failed.index) == [3, 32] and (failed["prediction"] == "").all() and (failed["proba:0"] == "").all()
    assert set(predictions.drop(index=[3, 32])["prediction"]) <= {"0", "1"}
