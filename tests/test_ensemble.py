"""Ensembles from what the search paid for: greedy selection over the trials' validation predictions, kept
only when it beats the best single model on rows it was not chosen on; saved, loaded, refused when tampered;
the kept model's probabilities calibrated by temperature scaling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import automl_tl
from automl_tl import InputOptions, SearchConfig, prepare_dataset, run_search
from automl_tl.errors import AutomlTLError, ModelFileError
from automl_tl.layout import ENSEMBLE_DIR, ENSEMBLE_FILE, SUMMARY_FILE, TRIAL_PREDICTIONS_DIR
from automl_tl.results.calibration import expected_calibration_error, fit_temperature, log_probabilities, softmax
from automl_tl.results.ensemble import EnsemblePredictor, load_ensemble_dir
from automl_tl.results.ensemble_selection import best_single, cross_validated_scores, greedy_selection
from automl_tl.results.model_io import Predictor
from automl_tl.train.executor import Executor


def _noisy_model(rng, labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Probabilities that put most mass on the true class where ``right``, elsewhere on a random class."""
    n, k = len(labels), int(labels.max()) + 1
    probabilities = rng.dirichlet(np.ones(k), n) * 0.5
    wrong = rng.integers(0, k, n)
    probabilities[np.arange(n), np.where(right, labels, wrong)] += 1.0
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def test_greedy_selection_combines_models_that_err_on_different_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    # three models, each wrong on its own third of the rows: any two of them outvote the third
    thirds = np.arange(300) % 3
    candidates = [_noisy_model(rng, labels, thirds != part) for part in range(3)]
    selection = greedy_selection(candidates, labels, "accuracy")
    single_best = max((c.argmax(1) == labels).mean() for c in candidates)
    assert len(selection.members) >= 2
    assert selection.weights.sum() == pytest.approx(1.0)
    assert selection.score > single_best + 0.1
    checked = cross_validated_scores(candidates, labels, "accuracy", seed=0)
    assert checked is not None and checked.gain > 0.1


def test_greedy_selection_keeps_the_best_single_model_when_others_only_add_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    best = _noisy_model(rng, labels, np.ones(200, dtype=bool))  # right everywhere
    worse = [_noisy_model(rng, labels, rng.random(200) < 0.4) for _ in range(3)]
    selection = greedy_selection([*worse, best], labels, "accuracy")
    assert selection.members == [3] and best_single([*worse, best], labels, "accuracy") == 3


def test_the_gain_is_not_checked_when_a_class_has_one_validation_row():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    probabilities = [np.full((7, 3), 1 / 3), np.eye(3)[labels]]
    assert cross_validated_scores(probabilities, labels, "accuracy") is None


@pytest.fixture(scope="module")
def ensembled_run(tmp_path_factory, digits_frame):
    """A search of probes and heads on two image backbones whose ensemble is kept (checked in the tests)."""
    from automl_tl_datasets import load_digits

    frame = load_digits().groupby("label", group_keys=False).head(40).reset_index(drop=True)
    data = prepare_dataset(frame, label_column="label", input_column="image", seed=0, test_fraction=0.2)
    config = SearchConfig(
        backbones=("mobilenetv2_100", "tf_efficientnet_lite0"),
        n_trials=6,
        seed=0,
        max_epochs=2,
        strategies=("linear_probe", "logistic_regression", "nearest_centroid"),
        input_options=InputOptions(image_size=32),
    )
    run_dir = tmp_path_factory.mktemp("ensembled")
    outcome = run_search(data, config, run_dir, Executor(show_progress=False))
    return outcome, data, config


def test_the_search_keeps_an_ensemble_that_beats_its_best_single_model(ensembled_run):
    outcome, data, _ = ensembled_run
    summary = json.loads((outcome.run_dir / SUMMARY_FILE).read_text())
    ensemble = summary["ensemble"]
    assert ensemble["kept"], ensemble["reason"]
    assert ensemble["cross_validated"]["ensemble"] > ensemble["cross_validated"]["single"]
    assert len(ensemble["members"]) >= 2
    assert sum(m["weight"] for m in ensemble["members"]) == pytest.approx(1.0, abs=1e-3)
    assert summary["model"]["kept"].startswith(f"an ensemble of {len(ensemble['members'])} models")
    assert isinstance(outcome.predictor, EnsemblePredictor)
    # every finished trial left its validation probabilities, one row per validated example
    saved = sorted((outcome.run_dir / TRIAL_PREDICTIONS_DIR).glob("*.npy"))
    assert len(saved) == len(outcome.study.trials)


def test_the_kept_ensemble_predicts_the_weighted_average_of_its_members(ensembled_run):
    outcome, data, _ = ensembled_run
    predictor = automl_tl.load(outcome.run_dir)
    assert isinstance(predictor, EnsemblePredictor)
    frame = pd.DataFrame({"image": data.test.inputs})
    averaged = sum(w * m.predict_proba(frame).to_numpy() for w, m in zip(predictor.weights, predictor.members))
    probabilities = predictor.predict_proba(frame).to_numpy()
    # (calibrated: the average's logarithms divided by the temperature fitted on validation)
    assert predictor.temperature != 1.0
    assert np.allclose(probabilities, softmax(log_probabilities(averaged), predictor.temperature), atol=1e-5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # the search's test figure (members run on cached features) is what the loaded ensemble predicts
    truth = np.array(data.classes)[data.test.labels]
    assert (predictor.predict(frame) == truth).mean() == pytest.approx(outcome.test_metrics["accuracy"])
    table = predictor.predict_table(frame)
    assert list(table["prediction"]) == list(predictor.predict(frame))


def test_without_ensemble_the_same_run_keeps_its_best_model_and_removes_the_ensemble(ensembled_run, tmp_path):
    outcome, data, config = ensembled_run
    run_dir = tmp_path / "run"
    shutil.copytree(outcome.run_dir, run_dir)
    from dataclasses import replace

    again = run_search(data, replace(config, ensemble=False), run_dir, Executor(show_progress=False))
    assert len(again.study.trials) == len(outcome.study.trials)  # resumed: nothing to run again
    assert not (run_dir / ENSEMBLE_DIR).exists()
    assert type(automl_tl.load(run_dir)) is Predictor
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["ensemble"] == {"kept": False, "reason": "not asked for (--no-ensemble)"}
    # the best model is calibrated now, on its own trial's validation predictions
    assert summary["calibration"]["temperature"] == automl_tl.load(run_dir).temperature != 1.0


def test_probabilities_are_calibrated_on_validation_and_measured_on_test(ensembled_run):
    outcome, _, _ = ensembled_run
    summary = json.loads((outcome.run_dir / SUMMARY_FILE).read_text())
    calibration = summary["calibration"]
    assert calibration["validation_ece_after"] < calibration["validation_ece_before"]
    assert json.loads((outcome.run_dir / ENSEMBLE_DIR / ENSEMBLE_FILE).read_text())["temperature"] == pytest.approx(
        calibration["temperature"]
    )
    assert 0 <= outcome.test_metrics["ece"] <= 1
    assert "reliability.png" in (outcome.run_dir / "report.html").read_text()
    assert "Calibrated probabilities" in (outcome.run_dir / "MODEL_CARD.md").read_text()


def test_without_calibration_the_probabilities_are_the_models_own(ensembled_run, tmp_path):
    outcome, data, config = ensembled_run
    run_dir = tmp_path / "run"
    shutil.copytree(outcome.run_dir, run_dir)
    from dataclasses import replace

    run_search(data, replace(config, calibrate=False), run_dir, Executor(show_progress=False))
    predictor = automl_tl.load(run_dir)
    frame = pd.DataFrame({"image": data.test.inputs[:5]})
    averaged = sum(w * m.predict_proba(frame).to_numpy() for w, m in zip(predictor.weights, predictor.members))
    assert predictor.temperature == 1.0
    assert np.allclose(predictor.predict_proba(frame).to_numpy(), averaged, atol=1e-5)


def test_temperature_scaling_undoes_overconfidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    calibrated = rng.normal(size=(2000, 5))
    calibrated[np.arange(2000), labels] += 1.5
    # draw the labels from the calibrated model itself, so that temperature 1 is right for it
    drawn = np.array([rng.choice(5, p=row) for row in softmax(calibrated)])
    temperature = fit_temperature(calibrated * 4, drawn)  # the same model, four times too sure
    assert temperature == pytest.approx(4, rel=0.15)
    before = expected_calibration_error(softmax(calibrated * 4), drawn)
    assert expected_calibration_error(softmax(calibrated * 4, temperature), drawn) < before / 3


def test_an_ensemble_is_not_exported_in_place_of_its_best_model(ensembled_run, tmp_path):
    outcome, _, _ = ensembled_run
    with pytest.raises(AutomlTLError, match="is an ensemble .* export its best single model"):
        automl_tl.export_model(outcome.run_dir, "torchscript", tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda c: c["members"][0].update(folder="../best_model"), "field 'folder' is '../best_model'"),
        (lambda c: c["members"][0].update(weight=-1), "field 'weight' is -1"),
        (lambda c: c["members"][0].update(weight=True), "field 'weight' is True"),
        (lambda c: c.update(members=c["members"] * 40), "expected 1 to 64"),
        (lambda c: c.update(format_version=2), "field 'format_version' is 2"),
        (lambda c: c["members"][1].update(weight=c["members"][1]["weight"] + 0.5), "weights sum to"),
        (lambda c: c.update(temperature=-1), "field 'temperature' is -1"),
        (lambda c: c.update(temperature="2"), "field 'temperature' is '2'"),
        (lambda c: c.update(temperature=1e9), "field 'temperature' is 1000000000.0"),
    ],
)
def test_a_tampered_ensemble_file_is_refused_before_any_member_is_loaded(ensembled_run, tmp_path, tamper, message):
    outcome, _, _ = ensembled_run
    directory = tmp_path / ENSEMBLE_DIR
    shutil.copytree(outcome.run_dir / ENSEMBLE_DIR, directory)
    config = json.loads((directory / ENSEMBLE_FILE).read_text())
    tamper(config)
    (directory / ENSEMBLE_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=message):
        load_ensemble_dir(directory)
