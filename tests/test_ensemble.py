"""Ensembles from what the search paid for: greedy selection over the trials' validation predictions, kept
only when it beats the best single model on rows it was not chosen on; saved, loaded, refused when tampered;
the kept model's probabilities calibrated by temperature scaling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import automl_tl
from automl_tl import InputOptions, SearchConfig, prepare_dataset, run_search
from automl_tl.errors import ModelFileError
from automl_tl.layout import ENSEMBLE_DIR, ENSEMBLE_FILE, SUMMARY_FILE, TRIAL_PREDICTIONS_DIR
from automl_tl.results.calibration import (
    TEMPERATURE_RANGE,
    _log_loss,
    expected_calibration_error,
    fit_temperature,
    log_probabilities,
    softmax,
)
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


def test_the_members_that_share_a_body_run_it_once_between_them(ensembled_run):
    outcome, data, config = ensembled_run
    predictor = automl_tl.load(outcome.run_dir)
    models = [part for m in predictor.members for part in getattr(m, "parts", [m])]
    assert len(models) > len(config.backbones)  # more members than bodies: every one of them is a frozen body
    batches: dict[int, int] = {}

    def count(module, inputs, output):
        batches[id(module)] = batches.get(id(module), 0) + 1

    hooks = [model.model.body.register_forward_hook(count) for model in models]
    try:
        frame = pd.DataFrame({"image": data.test.inputs})
        shared = predictor.predict_proba(frame, batch_size=16).to_numpy()
        ran = sum(batches.values())
        batches.clear()
        alone = sum(
            w * m.predict_proba(frame, batch_size=16).to_numpy() for w, m in zip(predictor.weights, predictor.members)
        )
    finally:
        for hook in hooks:
            hook.remove()
    per_pass = -(-len(frame) // 16)
    assert len({model.body_key for model in models}) == len(config.backbones)
    assert ran == len(config.backbones) * per_pass  # one pass of each backbone's body, not one per member
    assert sum(batches.values()) == len(models) * per_pass
    assert np.allclose(shared, softmax(log_probabilities(alone), predictor.temperature), atol=1e-5)


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


def test_a_model_right_on_every_validation_row_keeps_its_own_temperature():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 42)
    logits = rng.normal(size=(42, 10))
    logits[np.arange(42), labels] += 6.0  # every row right, most of them by a wide margin
    # the log loss still falls as T falls, down to the range's floor: that is no calibration
    assert _log_loss(logits, labels, TEMPERATURE_RANGE[0]) < _log_loss(logits, labels, 1.0)
    assert fit_temperature(logits, labels) == 1.0
    wrong = labels.copy()
    wrong[0] = (labels[0] + 1) % 10  # one row wrong: the fit has something to weigh again
    assert fit_temperature(logits, wrong) != 1.0


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_run_exports_its_kept_ensemble_as_one_graph_not_its_best_model(ensembled_run, tmp_path):
    outcome, data, _ = ensembled_run
    export = automl_tl.export_model(outcome.run_dir, "torchscript", tmp_path / "export")
    info = json.loads((export / "export.json").read_text())
    listed = json.loads((outcome.run_dir / ENSEMBLE_DIR / ENSEMBLE_FILE).read_text())["members"]
    assert info["source_model"] == str((outcome.run_dir / ENSEMBLE_DIR).resolve())
    assert [m["folder"] for m in info["ensemble"]["members"]] == [m["folder"] for m in listed]
    assert (export / "MODEL_CARD.md").read_text() == (outcome.run_dir / "MODEL_CARD.md").read_text()
    # the graph, on the test images prepared as its first model's, predicts what the loaded ensemble does
    predictor = automl_tl.load(outcome.run_dir)
    first = predictor.members[0]
    first = first.parts[0] if hasattr(first, "parts") else first
    images = first.preprocessor.collate(first.preprocessor.encode(list(data.test.inputs)), train=False)
    with torch.no_grad():
        logits = torch.jit.load(str(export / "model.pt"))(images).double()
    exported = torch.softmax(logits / info["temperature"], dim=1).numpy()
    expected = predictor.predict_proba(pd.DataFrame({"image": data.test.inputs})).to_numpy()
    assert np.abs(exported - expected).max() < 1e-4


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


# ------------------------------------------------------------ the concatenated-feature probe


def test_a_probe_on_concatenated_blocks_is_one_linear_layer_on_the_normalised_blocks_side_by_side():
    from sklearn.linear_model import LogisticRegression

    from automl_tl.train.embedding_heads import fit_concatenated_logistic_regression, head_logits
    from automl_tl.train.head_modules import NormalisedLinearHead

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    # two bodies: the first's embeddings a thousand times larger, the second's the ones that tell the classes
    first = rng.normal(size=(90, 5)) * 1000
    second = rng.normal(size=(90, 4)) + 2 * np.eye(4)[labels]
    fitted = fit_concatenated_logistic_regression(np.hstack([first, second]), labels, 3, 0, widths=[5, 4], C=1.0)
    assert all(isinstance(head, NormalisedLinearHead) for head in fitted.module.heads)

    def unit(block):
        centred = block - block.mean(0)
        return centred / np.linalg.norm(centred, axis=1, keepdims=True)

    joined = np.hstack([unit(first), unit(second)]) / np.sqrt(2)
    reference = LogisticRegression(C=1.0, max_iter=500).fit(joined, labels)
    logits = head_logits(fitted.module, np.hstack([first, second])).numpy()
    assert np.allclose(logits, reference.decision_function(joined), atol=1e-3)
    # the summed part heads are what the saved parts compute, each on its own body's embeddings
    parts = sum(head_logits(h, b).numpy() for h, b in zip(fitted.module.heads, (first, second)))
    assert np.allclose(parts, logits, atol=1e-5)
    assert (logits.argmax(1) == labels).mean() > 0.8  # the large first block did not drown the second


@pytest.fixture(scope="module")
def concatenated_probe(ensembled_run, tmp_path_factory):
    """The fixture run's concatenated-feature probe fitted again, as the search's ensemble step fits it, and
    saved as an ensemble member (one fit for the tests below)."""
    from dataclasses import replace

    from automl_tl.results.concatenated import save_concatenated
    from automl_tl.search.ensembling import ensemble_candidates
    from automl_tl.search.study import Search

    outcome, data, config = ensembled_run
    search = Search(data, replace(config), outcome.run_dir, Executor(show_progress=False))  # (nothing is run)
    candidates, labels = ensemble_candidates(outcome.run_dir, outcome.study, data, outcome.best_trial)
    probe, record = search._concatenated_candidate(candidates, labels)
    model, listed = search._concatenated_member(probe)
    directory = tmp_path_factory.mktemp("concatenated") / "member"
    save_concatenated(model, directory)
    return search, candidates, labels, probe, record, listed, directory


def test_the_search_tries_a_probe_on_the_concatenated_features_of_its_two_backbones(ensembled_run):
    outcome, _, config = ensembled_run
    summary = json.loads((outcome.run_dir / SUMMARY_FILE).read_text())
    probe = summary["ensemble"]["concatenated_features"]
    assert probe["candidate"], probe
    assert sorted(probe["backbones"]) == sorted(config.backbones)
    assert 0 < probe["validation"]["score"] <= 1
    concatenated = [m for m in summary["ensemble"]["members"] if m.get("kind") == "concatenated_features"]
    card = (outcome.run_dir / "MODEL_CARD.md").read_text()
    report = (outcome.run_dir / "report.html").read_text()
    if concatenated:  # kept: the card and the report say so, and which backbones it joins
        assert "The ensemble includes a logistic-regression probe on the concatenated embeddings" in card
        assert "The ensemble includes a logistic-regression probe on the concatenated embeddings" in report
        assert "concatenated features of" in summary["model"]["kept"]
        assert "mobilenetv2\\_100 and tf\\_efficientnet\\_lite0" in card
    else:
        assert "was a candidate, and not chosen" in card and "was a candidate, and not chosen" in report


def test_the_concatenated_probe_saved_in_an_ensemble_predicts_what_it_predicted_in_memory(
    ensembled_run, concatenated_probe, tmp_path
):
    from automl_tl.results.concatenated import ConcatenatedPredictor, load_concatenated_dir
    from automl_tl.train.embedding_heads import head_logits

    _, data, _ = ensembled_run
    search, _, labels, probe, record, listed, directory = concatenated_probe
    assert record["candidate"] and probe is not None
    # scored on the rows the trials were: here (a small validation split) every labelled row, out of fold
    assert probe.probabilities.shape == (len(labels), len(data.classes))
    assert len(labels) == len(data.train) + len(data.val)
    assert np.allclose(probe.probabilities.sum(axis=1), 1.0)
    assert probe.fitted_on == listed["fitted_on"] == "train+validation"
    loaded = load_concatenated_dir(directory)
    assert isinstance(loaded, ConcatenatedPredictor) and loaded.backbones == list(probe.backbones)
    # the probe in memory, on the test split's (cached) features of its backbones side by side
    features = [
        search.executor.features(search.backbones[c.backbone], c.input_options, data, data.test) for c in probe.configs
    ]
    in_memory = torch.softmax(head_logits(probe.fitted.module, np.hstack(features)), dim=1).numpy()
    again = loaded.predict_proba(pd.DataFrame({"image": data.test.inputs})).to_numpy()
    assert np.allclose(again, in_memory, atol=1e-4)


def test_the_kept_ensemble_reloads_its_concatenated_probe(ensembled_run):
    from automl_tl.results.concatenated import ConcatenatedPredictor

    outcome, data, config = ensembled_run
    listed = json.loads((outcome.run_dir / ENSEMBLE_DIR / ENSEMBLE_FILE).read_text())["members"]
    kinds = [m.get("kind", "model") for m in listed]
    if "concatenated_features" not in kinds:
        pytest.skip("this run's ensemble does not include its concatenated-feature probe")
    predictor = automl_tl.load(outcome.run_dir)
    member = predictor.members[kinds.index("concatenated_features")]
    assert isinstance(member, ConcatenatedPredictor) and sorted(member.backbones) == sorted(config.backbones)
    assert listed[kinds.index("concatenated_features")]["backbones"] == member.backbones


def test_with_one_backbone_there_is_no_concatenated_probe_and_the_record_says_why(ensembled_run, concatenated_probe):
    _, _, config = ensembled_run
    search, candidates, labels, *_ = concatenated_probe
    one = [c for c in candidates if c.config.backbone == config.backbones[0]]
    probe, record = search._concatenated_candidate(one, labels)
    assert probe is None and not record["candidate"]
    assert record["reason"].startswith(f"1 backbone(s) with frozen-body trials ({config.backbones[0]})")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda c: c["parts"][0].update(folder="../../best_model"), "field 'folder' is '../../best_model'"),
        (lambda c: c.update(parts=c["parts"][:1]), "holds 1 parts; expected 2 to 8"),
        (lambda c: c["parts"][1].update(folder=c["parts"][0]["folder"]), "names a folder twice"),
        (lambda c: c.update(kind="model"), "field 'kind' is 'model'"),
        (lambda c: c.update(format_version=2), "field 'format_version' is 2"),
    ],
)
def test_a_tampered_concatenated_probe_is_refused_before_any_part_is_loaded(
    concatenated_probe, tmp_path, tamper, message
):
    from automl_tl.layout import CONCATENATED_FILE
    from automl_tl.results.concatenated import load_concatenated_dir

    directory = tmp_path / "member"
    shutil.copytree(concatenated_probe[-1], directory)
    config = json.loads((directory / CONCATENATED_FILE).read_text())
    tamper(config)
    (directory / CONCATENATED_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=message):
        load_concatenated_dir(directory)


def test_an_ensemble_member_of_an_unknown_kind_is_refused(ensembled_run, tmp_path):
    outcome, _, _ = ensembled_run
    directory = tmp_path / ENSEMBLE_DIR
    shutil.copytree(outcome.run_dir / ENSEMBLE_DIR, directory)
    config = json.loads((directory / ENSEMBLE_FILE).read_text())
    config["members"][0]["kind"] = "pickle"
    (directory / ENSEMBLE_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="field 'kind' is 'pickle'"):
        load_ensemble_dir(directory)


def test_the_concatenated_probe_is_skipped_when_the_time_left_is_less_than_its_estimated_cost(concatenated_probe):
    import time

    search, candidates, labels, *_ = concatenated_probe
    search._deadline = time.monotonic()  # (the trials' seconds say it costs more than nothing)
    try:
        probe, record = search._concatenated_candidate(candidates, labels)
    finally:
        search._deadline = None
    assert probe is None and not record["candidate"]
    assert record["reason"].startswith("skipped: it would take about")


def test_on_a_held_out_validation_split_the_probe_is_scored_there_and_kept_refitted_on_training_and_validation(
    ensembled_run, concatenated_probe
):
    from automl_tl.search.concatenation import fit_concatenated_probe, joinable
    from automl_tl.train.embedding_heads import head_logits

    _, data, _ = ensembled_run
    search, candidates, *_ = concatenated_probe
    probe = fit_concatenated_probe(search.executor, search.backbones, joinable(candidates), data, False, seed=0)
    assert probe.fitted_on == "train" and probe.probabilities.shape == (len(data.val), len(data.classes))
    features = [
        search.executor.features(search.backbones[c.backbone], c.input_options, data, data.val) for c in probe.configs
    ]
    scored = torch.softmax(head_logits(probe.fitted.module, np.hstack(features)), dim=1).numpy()
    assert np.allclose(probe.probabilities, scored, atol=1e-5)
    model, listed = search._concatenated_member(probe)  # (refit on: the member learns from the validation rows too)
    assert listed["fitted_on"] == "train+validation" and listed["C"] == probe.fitted.details["C"]
    refitted = model.parts[0][0].head.linear.weight.detach()
    assert not torch.allclose(refitted, probe.fitted.module.heads[0].linear.weight.detach())


def test_a_candidates_rebuilding_cost_is_its_trials_fit_not_the_features_it_computed(ensembled_run):
    """Rebuilding a frozen-body member refits its head on the cached features: the budget check before building
    the ensemble counts the trial's fit, not the one-time cost of computing its backbone's features."""
    from automl_tl.search.ensembling import ensemble_candidates

    outcome, data, _ = ensembled_run
    candidates, _ = ensemble_candidates(outcome.run_dir, outcome.study, data, outcome.best_trial)
    trials = {t.number: t for t in outcome.study.trials}
    for candidate in candidates:
        attrs = trials[candidate.trial].user_attrs
        assert candidate.seconds == attrs["fit_seconds"] <= attrs["seconds"]
