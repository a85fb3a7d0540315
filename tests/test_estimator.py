"""TransferClassifier, the scikit-learn face of the search, on real digits with a real pretrained backbone.

Every fit is a real search of two linear-probe trials on mobilenetv2_100 at 32 pixels (a few seconds).
"""

from __future__ import annotations

import gc
import inspect
import pickle
import tempfile

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score, train_test_split

from automl_tl import TransferClassifier
from automl_tl.data.bundle import prepare_dataset
from automl_tl.errors import ConfigError, DataError

TINY = dict(backbones="mobilenetv2_100", image_size=32, n_trials=2, strategies=["linear_probe"], max_epochs=1)


@pytest.fixture(scope="module")
def digits_arrays(digits_frame):
    """The 240 digits as one (240, 8, 8) uint8 array and their integer labels."""
    return np.stack(digits_frame["image"]), digits_frame["label"].to_numpy()


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch):
    """Temporary run directories go below this test's folder, so that the test can see them come and go."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_fit_predict_proba_and_score_on_image_arrays(digits_arrays, own_tempdir):
    X, y = digits_arrays
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    clf = TransferClassifier(**TINY)
    assert clf.fit(X_train, y_train) is clf

    assert list(clf.classes_) == list(range(10))
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    predicted = clf.predict(X_test)
    assert np.array_equal(predicted, clf.classes_[proba.argmax(axis=1)])
    assert predicted.dtype.kind == "i"  # labels as given: integers, not strings or objects
    accuracy = float((predicted == y_test).mean())
    assert clf.score(X_test, y_test) == pytest.approx(accuracy)
    assert accuracy > 0.3, accuracy  # 10 classes: chance is 0.1

    board = clf.leaderboard_
    assert isinstance(board, pd.DataFrame) and len(board) == 2
    assert set(board["strategy"]) == {"linear_probe"}
    assert clf.best_score_ == pytest.approx(board["val_accuracy"].max())
    assert clf.best_params_["strategy"] == "linear_probe" and clf.best_trial_ in set(board["trial"])
    assert clf.test_metrics_ is None  # no test part held out by default: the caller tests
    assert clf.transferability_["ranking"] == ["mobilenetv2_100"]
    assert clf.modality_ == "image"

    # The run lives in a temporary directory as long as the classifier does.
    run_dir = clf.run_dir_
    assert run_dir.parent == own_tempdir and (run_dir / "best_model" / "model.safetensors").is_file()

    # A pickled classifier predicts the same without its run directory.
    again = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(again.predict(X_test[:20]), predicted[:20])
    assert again.search_outcome_.study is None and clf.search_outcome_.study is not None

    del clf, again
    gc.collect()
    assert not run_dir.exists()


def test_fit_on_a_dataframe_with_string_labels_and_an_output_dir(digits_frame, tmp_path):
    frame = digits_frame.assign(label=[f"digit{d}" for d in digits_frame["label"]])
    clf = TransferClassifier(**TINY, test_size=0.15, output_dir=tmp_path / "run").fit(frame)

    assert list(clf.classes_) == [f"digit{d}" for d in range(10)]
    assert clf.run_dir_ == tmp_path / "run" and (tmp_path / "run" / "leaderboard.csv").is_file()
    assert clf.test_metrics_["examples"] == 36  # 15% of 240 held out
    assert 0 <= clf.test_metrics_["accuracy"] <= 1
    # predict on a DataFrame with the input column (and the label column, which it checks, not uses)
    predicted = clf.predict(frame.head(30))
    assert set(predicted) <= set(clf.classes_)
    assert clf.score(frame.drop(columns="label"), frame["label"]) > 0.3

    # A second fit on the same output directory resumes the finished study: nothing runs again.
    resumed = TransferClassifier(**TINY, test_size=0.15, output_dir=tmp_path / "run").fit(frame)
    assert len(resumed.leaderboard_) == 2 and resumed.best_score_ == clf.best_score_
    del clf, resumed
    gc.collect()
    assert (tmp_path / "run" / "best_model").is_dir()  # an output_dir of the user's is never deleted


def test_cross_val_score_fits_every_fold_on_its_own(digits_arrays, own_tempdir):
    X, y = digits_arrays
    scores = cross_val_score(TransferClassifier(**TINY), X, y, cv=2)
    assert scores.shape == (2,)
    assert (scores > 0.3).all(), scores
    gc.collect()
    assert list(own_tempdir.iterdir()) == []  # each fold's temporary run directory is gone with its clone


def test_get_params_set_params_and_clone_round_trip():
    clf = TransferClassifier(
        backbones=["mobilenetv2_100"],
        n_trials=3,
        timeout=60.0,
        heads=("mlp",),
        output_dir="somewhere",
        show_progress=False,
    )
    params = clf.get_params()
    parameters = inspect.signature(TransferClassifier).parameters.values()
    # (**renamed takes the names earlier versions gave some parameters: they are stored under today's)
    names = [p.name for p in parameters if p.kind != inspect.Parameter.VAR_KEYWORD]
    assert sorted(params) == sorted(names)
    assert params["n_trials"] == 3 and params["heads"] == ("mlp",) and params["output_dir"] == "somewhere"

    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert copy.set_params(max_epochs=5, seed=7) is copy
    assert copy.get_params()["max_epochs"] == 5 and clf.get_params()["max_epochs"] == 10


def test_every_search_option_of_the_command_line_is_a_parameter():
    from automl_tl.cli import build_parser, search_estimator_params

    args = build_parser().parse_args(["search"])
    assert set(search_estimator_params(args)) <= set(TransferClassifier().get_params())


def test_predicting_before_fitting_raises_not_fitted(digits_arrays):
    X, _ = digits_arrays
    for method in (TransferClassifier().predict, TransferClassifier().predict_proba):
        with pytest.raises(NotFittedError):
            method(X[:3])


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"image_size": 8}, "image size must be at least 16 pixels, got 8"),
        ({"strategies": ["freeze_all"]}, "unknown strategy 'freeze_all'"),
        ({"val_size": 0.0}, "val_size and test_size must satisfy"),
        ({"val_size": 0.6, "test_size": 0.4}, "val_size + test_size < 1"),
        ({"workers": 0}, "workers must be a whole number >= 1, got 0"),
        ({"min_epochs": 11}, "1 <= min (11) <= max (10)"),
        ({"storage": "nowhere"}, "malformed storage URL 'nowhere'"),
    ],
)
def test_bad_parameters_are_refused_before_any_data_is_read(tmp_path, params, expected):
    missing = tmp_path / "no_such.csv"
    with pytest.raises(ConfigError) as error:
        TransferClassifier(**params).fit(missing)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    "X, y, expected",
    [
        ("some.csv", [1, 2], "y is given with some.csv, which brings its own labels"),
        ([f"text {i}" for i in range(6)], None, "y is missing"),
        ([f"text {i}" for i in range(6)], [0, 1, 0], "X has 6 examples but y has 3 labels"),
        (np.zeros((6, 4), dtype=np.uint8), [0, 1] * 3, "X has shape (6, 4)"),
        (pd.DataFrame({"text": ["a"] * 6, "label": [0, 1] * 3}), [0, 1] * 3, "already has a column 'label'"),
        ({"a": 1}, [0], "X is a dict"),
    ],
)
def test_data_mistakes_are_one_line_errors(X, y, expected):
    with pytest.raises(DataError) as error:
        TransferClassifier().fit(X, y)
    assert expected in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- no test part (test_size=0)


def test_a_split_without_a_test_part_trains_and_validates_on_every_class(digits_frame):
    bundle = prepare_dataset(digits_frame, seed=0, val_fraction=0.2, test_fraction=0.0)
    assert len(bundle.test) == 0
    assert len(bundle.train) + len(bundle.val) == len(digits_frame) and len(bundle.val) == 48
    assert set(bundle.train.labels) == set(bundle.val.labels) == set(range(10))


def test_two_examples_of_a_class_are_enough_without_a_test_part():
    frame = pd.DataFrame({"text": [f"review {i}" for i in range(8)], "label": ["good"] * 6 + ["bad"] * 2})
    bundle = prepare_dataset(frame, val_fraction=0.25, test_fraction=0.0)
    assert {"bad", "good"} == {bundle.classes[i] for i in bundle.val.labels}
    with pytest.raises(DataError, match="class 'bad' in the DataFrame has 2 example"):
        prepare_dataset(frame, val_fraction=0.25, test_fraction=0.25)


def test_split_fractions_out_of_range_are_refused(digits_frame):
    with pytest.raises(DataError, match="validation \\+ test < 1, got 0.5 and 0.5"):
        prepare_dataset(digits_frame, val_fraction=0.5, test_fraction=0.5)


def test_workers_reload_a_csv_with_the_same_split_without_a_test_part(digits_frame, tmp_path):
    """Worker processes load the data again from its source: they must split it as the fit did (no test part)."""
    from PIL import Image

    rows = []
    for i, (image, label) in enumerate(zip(digits_frame["image"], digits_frame["label"])):
        if sum(1 for row in rows if row["digit"] == label) < 8:
            Image.fromarray(image).save(tmp_path / f"{i}.png")
            rows.append({"file": f"{i}.png", "digit": label})
    csv = tmp_path / "digits.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)

    clf = TransferClassifier(**TINY, label_column="digit", workers=2, output_dir=tmp_path / "run").fit(csv)
    assert len(clf.leaderboard_) == 2 and set(clf.leaderboard_["state"]) == {"COMPLETE"}
    assert clf.test_metrics_ is None and list(clf.classes_) == list(range(10))
    assert clf.predict([str(tmp_path / rows[0]["file"])])[0] in clf.classes_


def test_shots_learn_from_k_per_class_and_test_on_the_rest(digits_arrays):
    X, y = digits_arrays
    model = TransferClassifier(backbones="mobilenetv2_100", image_size=32, n_trials=2, shots=5, prerank=False)
    model.fit(X, y)
    assert set(model.leaderboard_["strategy"]) <= {"nearest_centroid", "logistic_regression"}
    assert model.test_metrics_["examples"] == len(y) - 5 * 10  # every example not drawn
    assert model.test_metrics_["accuracy"] > 0.3  # chance is 0.1
    assert clone(model).get_params()["shots"] == 5
