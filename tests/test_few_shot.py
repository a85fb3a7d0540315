"""Few labels: K-shot sampling, the nearest-centroid and logistic-regression strategies, and a K-shot search,
on real digits and real MobileNetV2 embeddings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from test_cli import run_cli, write_image_folder

from automl_tl import InputOptions
from automl_tl.config import SearchConfig, TrialConfig
from automl_tl.data.bundle import VALIDATION_CROSS, VALIDATION_HOLDOUT, VALIDATION_NONE, prepare_dataset
from automl_tl.errors import ConfigError, DataError
from automl_tl.registry import get_backbone
from automl_tl.results.model_io import load_model_dir, save_model
from automl_tl.search.space import SearchSpace
from automl_tl.strategies import DEFAULT_STRATEGIES
from automl_tl.train.embedding_heads import LOGISTIC_C_GRID
from automl_tl.train.executor import Executor

BACKBONE = "mobilenetv2_100"
OPTIONS = InputOptions(image_size=32)


def per_class(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=10).tolist()


# ---------------------------------------------------------------- sampling


def test_shots_draw_k_per_class_seeded_and_test_on_every_other_example(digits_frame):
    bundle = prepare_dataset(digits_frame, shots=5, seed=3)
    assert per_class(bundle.train.labels) == [5] * 10
    # below 10 shots nothing is held out: the validation split is the training split, cross-validated
    assert bundle.validation == VALIDATION_CROSS and bundle.val.inputs == bundle.train.inputs
    assert len(bundle.test) == len(digits_frame) - 50 and per_class(bundle.test.labels) == [19] * 10
    drawn = {image.tobytes() for image in bundle.train.inputs}
    tested = {image.tobytes() for image in bundle.test.inputs}
    assert not drawn & tested and len(drawn | tested) == len({i.tobytes() for i in digits_frame["image"]})
    assert bundle.summary()["shots"] == 5

    again = prepare_dataset(digits_frame, shots=5, seed=3)
    assert [i.tobytes() for i in again.train.inputs] == [i.tobytes() for i in bundle.train.inputs]
    assert again.fingerprint == bundle.fingerprint
    other = prepare_dataset(digits_frame, shots=5, seed=4)
    assert {i.tobytes() for i in other.train.inputs} != drawn and other.fingerprint != bundle.fingerprint
    assert prepare_dataset(digits_frame, seed=3).fingerprint not in (bundle.fingerprint, other.fingerprint)


def test_many_shots_hold_a_quarter_out_and_one_shot_validates_nothing(digits_frame):
    bundle = prepare_dataset(digits_frame, shots=12, seed=0)
    assert bundle.validation == VALIDATION_HOLDOUT
    assert per_class(bundle.train.labels) == [9] * 10 and per_class(bundle.val.labels) == [3] * 10
    assert not {i.tobytes() for i in bundle.train.inputs} & {i.tobytes() for i in bundle.val.inputs}
    assert len(bundle.test) == len(digits_frame) - 120

    one = prepare_dataset(digits_frame, shots=1, seed=0)
    assert one.validation == VALIDATION_NONE and per_class(one.train.labels) == [1] * 10
    assert len(one.test) == len(digits_frame) - 10


def test_bad_shots_are_refused_naming_the_class_and_its_count(digits_frame):
    small = pd.concat([digits_frame[digits_frame.label != 7], digits_frame[digits_frame.label == 7].head(4)])
    with pytest.raises(
        DataError,
        match=r"^class 7 in the DataFrame has 4 example\(s\); 4 shots per class need at "
        r"least 5 of every class",
    ):
        prepare_dataset(small, shots=4)
    prepare_dataset(small, shots=3)  # 3 to learn from, 1 to test on
    for bad in (0, -2, 2.5, True):
        with pytest.raises(DataError, match=f"shots must be a whole number .* got {bad!r}"):
            prepare_dataset(digits_frame, shots=bad)


def test_cli_refuses_bad_shots_in_one_line(tmp_path, digits_frame):
    data_dir = tmp_path / "digits"
    write_image_folder(data_dir, digits_frame, per_class=6)
    too_many = run_cli("search", "--data", str(data_dir), "--shots", "6", "--output", str(tmp_path / "run"))
    assert too_many.returncode == 2
    assert too_many.stderr.strip().splitlines() == [
        f"automl-tl: error: class 'digit0' in {data_dir} has 6 example(s); 6 shots per class need at least 7 of "
        "every class (6 to learn from, 1 or more to test on)"
    ]
    zero = run_cli("search", "--data", str(data_dir), "--shots", "0")
    assert zero.returncode == 2 and "argument --shots: expected a number >= 1, got 0" in zero.stderr
    assert "Traceback" not in too_many.stderr + zero.stderr


def test_space_with_few_labels():
    config = SearchConfig(backbones=(BACKBONE,))
    assert config.strategies == DEFAULT_STRATEGIES
    assert {"nearest_centroid", "logistic_regression"} <= set(DEFAULT_STRATEGIES)  # for every data set
    plain = SearchSpace.from_config(config, [BACKBONE], 7, "image")
    assert plain.strategies == DEFAULT_STRATEGIES
    few = SearchSpace.from_config(config, [BACKBONE], 7, "image", validation=VALIDATION_CROSS)
    assert few.strategies == ("nearest_centroid", "logistic_regression")
    one = SearchSpace.from_config(config, [BACKBONE], 7, "image", validation=VALIDATION_NONE)
    assert one.strategies == ("nearest_centroid",)
    chosen = SearchConfig(backbones=(BACKBONE,), strategies=("linear_probe", "last_k"))
    assert SearchSpace.from_config(chosen, [BACKBONE], 7, "image").strategies == ("linear_probe", "last_k")
    with pytest.raises(ConfigError, match="fewer than 10 shots per class nothing is held out.*linear_probe, last_k"):
        SearchSpace.from_config(chosen, [BACKBONE], 7, "image", validation=VALIDATION_CROSS)


# ---------------------------------------------------------------- the strategies on real embeddings


@pytest.fixture(scope="module")
def ten_shots(digits_frame):
    return prepare_dataset(digits_frame, shots=10, seed=1)


def fit(executor, bundle, strategy):
    backbone = get_backbone(BACKBONE)
    config = TrialConfig(
        backbone=BACKBONE,
        trained_groups=0,
        backbone_lr=1e-3,
        head_lr=1e-2,
        epochs=3,
        strategy=strategy,
        input_options=OPTIONS,
    )
    return backbone, executor.fit(config, backbone, bundle)


@pytest.mark.parametrize("strategy", ["nearest_centroid", "logistic_regression"])
def test_strategy_beats_chance_and_the_saved_model_predicts_what_it_fitted(tmp_path, ten_shots, strategy):
    executor = Executor(device="cpu", show_progress=False)
    backbone, result = fit(executor, ten_shots, strategy)
    assert len(result.history) == 1 and result.history[0].val_accuracy > 0.4  # 20 held-out digits; chance 0.1
    assert result.config.head.kind == "normalised_linear"

    # The classifier, computed here from the cached embeddings without the executor's head: both strategies
    # see the embeddings centred on the training mean and scaled to unit length. Once validated on the
    # 2 validation shots per class (too few to rank trials by), the head is cross-validated on all 10 shots and
    # fitted on all of them (training and validation).
    assert result.extra["fitted_on"] == "train+validation" and result.extra["validation"] == "cross_validation"
    train_x = np.concatenate(
        [
            executor.features(backbone, OPTIONS, ten_shots, part).astype(np.float64)
            for part in (ten_shots.train, ten_shots.val)
        ]
    )
    test_x = executor.features(backbone, OPTIONS, ten_shots, ten_shots.test).astype(np.float64)
    train_y = np.concatenate([ten_shots.train.labels, ten_shots.val.labels])
    center = train_x.mean(0)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    if strategy == "nearest_centroid":
        means = np.stack([unit(train_x - center)[train_y == c].mean(0) for c in range(10)])
        expected = (unit(test_x - center) @ unit(means).T).argmax(1)
    else:
        assert result.extra["C"] in LOGISTIC_C_GRID
        model = LogisticRegression(C=result.extra["C"], max_iter=500, random_state=1)
        expected = model.fit(unit(train_x - center), train_y).predict(unit(test_x - center))
    assert (expected == ten_shots.test.labels).mean() > 0.5  # 140 unseen digits; chance 0.1

    # Saved as safetensors + JSON and loaded back, the model predicts the same classes.
    model_dir = tmp_path / "model"
    save_model(
        result.final_model(),
        model_dir,
        {
            "backbone": backbone.describe(),
            "head": result.config.head.to_dict(),
            "classes": ten_shots.classes,
            "input_column": "image",
            "input_options": result.config.to_dict()["input_options"],
            "preprocessing": backbone.preprocessor(OPTIONS).describe(),
        },
    )
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    predictor = load_model_dir(model_dir, "cpu")  # a device given as a string, as in load()
    predicted = predictor.predict(ten_shots.test.inputs)
    assert (predicted == np.array(ten_shots.classes, dtype=object)[expected]).all()


def test_cross_validated_when_nothing_is_held_out(digits_frame):
    executor = Executor(device="cpu", show_progress=False)
    bundle = prepare_dataset(digits_frame, shots=4, seed=0)
    for strategy in ("nearest_centroid", "logistic_regression"):
        _, result = fit(executor, bundle, strategy)
        record = result.history[0]
        assert result.extra["validation"] == VALIDATION_CROSS
        # out-of-fold accuracy: below what the head scores on the examples it was fitted on, above chance
        assert 0.2 < record.val_accuracy < 1.0 and record.val_loss > record.train_loss


# ---------------------------------------------------------------- a K-shot search


def test_search_with_shots_picks_among_the_strategies_and_reports_on_the_rest(tmp_path, digits_frame):
    data_dir = tmp_path / "digits"
    write_image_folder(data_dir, digits_frame, per_class=24)
    run_dir = tmp_path / "run"
    searched = run_cli(
        "search",
        "--data",
        str(data_dir),
        "--shots",
        "5",
        "--backbones",
        BACKBONE,
        "tf_efficientnet_lite0",
        "--trials",
        "5",
        "--image-size",
        "32",
        "--output",
        str(run_dir),
    )
    assert searched.returncode == 0, searched.stderr
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(board) == 5 and set(board["state"]) == {"COMPLETE"}
    assert set(board["strategy"]) == {"nearest_centroid", "logistic_regression"}
    assert set(board["backbone"]) == {BACKBONE, "tf_efficientnet_lite0"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["shots"] == 5 and summary["data"]["validation"] == VALIDATION_CROSS
    assert summary["test"]["examples"] == 240 - 50 and summary["test"]["accuracy"] > 0.3
    assert summary["best_params"]["strategy"] in ("nearest_centroid", "logistic_regression")
    assert summary["val_accuracy"] == board["val_accuracy"].max()

    predictions = tmp_path / "predictions.csv"
    predicted = run_cli("predict", str(run_dir), "--data", str(data_dir / "digit3"), "--output", str(predictions))
    assert predicted.returncode == 0, predicted.stderr
    assert (pd.read_csv(predictions)["prediction"] == "digit3").mean() > 0.5
