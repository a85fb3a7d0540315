"""The on-disk feature cache: content-addressed keys, reuse across executors, concurrent writers,
damaged entries, some rows first (a partial entry the whole one completes), and measuring the cost."""

from __future__ import annotations

import logging
import multiprocessing
import os

import numpy as np
import pytest
import torch

from automl_tl import Executor, InputOptions
from automl_tl.registry import get_registry
from automl_tl.train.feature_cache import FeatureCache, compute_features, measure_inference, samples_hash

SMALL = InputOptions(image_size=32)


def features(cache: FeatureCache, bundle, name: str = "mobilenetv2_100", options: InputOptions = SMALL) -> np.ndarray:
    executor = Executor(show_progress=False, feature_cache=cache)
    return executor.features(get_registry().get_backbone(name), options, bundle, bundle.train)


def entries(root) -> list:
    return sorted(p for p in root.rglob("*.npy") if not p.name.startswith("."))


def test_features_are_computed_once_and_shared_by_later_executors(tmp_path, digits_bundle):
    first_cache = FeatureCache(tmp_path)
    first = features(first_cache, digits_bundle)
    assert first.shape == (len(digits_bundle.train), 1280) and first.dtype == np.float32
    assert (first_cache.misses, first_cache.hits) == (1, 0)
    second_cache = FeatureCache(tmp_path)  # a later run: a new process would see the same files
    np.testing.assert_array_equal(features(second_cache, digits_bundle), first)
    assert (second_cache.misses, second_cache.hits) == (0, 1)
    [entry] = entries(tmp_path)
    assert entry.with_suffix(".json").is_file()  # what the key was made of, for people


def test_key_changes_with_backbone_preprocessing_and_samples(tmp_path, digits_bundle, digits_frame):
    cache = FeatureCache(tmp_path)
    features(cache, digits_bundle)
    features(cache, digits_bundle, name="tf_efficientnet_lite0")
    features(cache, digits_bundle, options=InputOptions(image_size=48))
    assert len(entries(tmp_path)) == 3 and cache.misses == 3
    changed = [image.copy() for image in digits_bundle.train.inputs]
    changed[0][0, 0] ^= 1  # one pixel of one sample
    assert samples_hash(changed) != samples_hash(digits_bundle.train.inputs)


def test_weights_enter_the_key(tmp_path, digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    cache = FeatureCache(tmp_path)
    preprocessor = backbone.preprocessor(SMALL)
    key, description = cache.key(backbone, preprocessor, "samples")
    assert description["weights"] == backbone.weights_fingerprint() and len(description["weights"]) == 32
    other = get_registry().get_backbone("tf_efficientnet_lite0")
    assert other.weights_fingerprint() != backbone.weights_fingerprint()


def test_a_damaged_entry_is_computed_again(tmp_path, digits_bundle, caplog):
    cache = FeatureCache(tmp_path)
    good = features(cache, digits_bundle)
    [entry] = entries(tmp_path)
    entry.write_bytes(b"not a numpy file")
    again = FeatureCache(tmp_path)
    np.testing.assert_array_equal(features(again, digits_bundle), good)
    assert again.misses == 1 and "computing them again" in caplog.text
    np.save(entry, good[:5])  # a valid array of the wrong shape
    assert features(FeatureCache(tmp_path), digits_bundle).shape == good.shape


def _worker(root: str, queue, barrier) -> None:
    from automl_tl.data.bundle import prepare_dataset
    from automl_tl_datasets import load_digits

    frame = load_digits().groupby("label", group_keys=False).head(24).reset_index(drop=True)
    bundle = prepare_dataset(frame, label_column="label", input_column="image", seed=0)
    cache = FeatureCache(root)
    get_registry().get_backbone("mobilenetv2_100").weights_fingerprint()  # the slow part of making the key
    barrier.wait(timeout=120)  # both ask at the same moment
    result = features(cache, bundle)
    queue.put((cache.misses, cache.hits, float(result.sum())))


def test_two_processes_asking_at_once_compute_the_entry_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(2)
    workers = [context.Process(target=_worker, args=(str(tmp_path), queue, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted((misses, hits) for misses, hits, _ in results) == [(0, 1), (1, 0)]
    assert results[0][2] == results[1][2]
    assert len(entries(tmp_path)) == 1
    assert not [p for p in tmp_path.rglob(".*") if p.suffix in (".npy", ".tmp")]  # no temporary files left


def test_disabled_cache_writes_nothing(tmp_path, digits_bundle):
    cache = FeatureCache(tmp_path / "never", enabled=False)
    features(cache, digits_bundle)
    features(cache, digits_bundle)
    assert cache.misses == 2 and not os.path.exists(tmp_path / "never")


def test_the_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOML_TL_FEATURE_CACHE", str(tmp_path / "here"))
    assert FeatureCache().root == tmp_path / "here"
    monkeypatch.delenv("AUTOML_TL_FEATURE_CACHE")
    monkeypatch.setenv("AUTOML_TL_CACHE", str(tmp_path / "cache"))
    assert FeatureCache().root == tmp_path / "cache" / "features"


def test_a_deadline_stops_computing_features_and_stores_nothing(tmp_path, digits_bundle):
    import time

    from automl_tl import TrialConfig

    executor = Executor(show_progress=False, feature_cache=FeatureCache(tmp_path))
    backbone = get_registry().get_backbone("mobilenetv2_100")
    config = TrialConfig(
        backbone=backbone.name,
        trained_groups=0,
        backbone_lr=1e-3,
        head_lr=1e-2,
        epochs=1,
        strategy="linear_probe",
        input_options=SMALL,
    )
    result = executor.fit(config, backbone, digits_bundle, deadline=time.monotonic() - 1)
    assert result.stop_reason == "time_budget" and result.history == [] and not result.has_model
    assert entries(tmp_path) == []


def test_rows_asked_for_first_are_kept_and_the_whole_entry_computes_only_the_rest(tmp_path, digits_bundle, caplog):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    preprocessor = backbone.preprocessor(SMALL)
    split = digits_bundle.train
    items = preprocessor.encode(split.inputs)
    cache = FeatureCache(tmp_path)
    samples, rows, cpu = samples_hash(split.inputs), len(split), torch.device("cpu")

    def ask(index=None):
        return cache.features(backbone, preprocessor, lambda: items, samples, rows, cpu, index=index)

    first = ask(np.arange(0, rows, 3))
    assert first.shape == (len(range(0, rows, 3)), backbone.embedding_dim) and cache.misses == 1
    assert entries(tmp_path) == [] and len(list(tmp_path.rglob("*.part.npz"))) == 1
    np.testing.assert_array_equal(ask(np.arange(0, rows, 6)), first[::2])  # rows already there: a hit
    assert (cache.misses, cache.hits) == (1, 1)
    assert cache.cached_seconds_per_example(backbone, preprocessor, samples, rows, np.arange(0, rows, 3)) > 0
    assert cache.cached_seconds_per_example(backbone, preprocessor, samples, rows) is None  # not every row yet
    with caplog.at_level(logging.INFO, logger="automl_tl.train.feature_cache"):
        every = ask()
    assert f"features of {rows - len(first)} samples" in caplog.text  # only the rows it lacked
    assert len(entries(tmp_path)) == 1 and not list(tmp_path.rglob("*.part.npz"))
    np.testing.assert_array_equal(every[::3], first)
    fresh = compute_features(backbone, preprocessor, items, cpu)  # all at once, uncached
    np.testing.assert_allclose(every, fresh, rtol=1e-4, atol=1e-5)
    assert cache.cached_seconds_per_example(backbone, preprocessor, samples, rows) > 0


def test_a_damaged_partial_entry_is_computed_again(tmp_path, digits_bundle, caplog):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    preprocessor = backbone.preprocessor(SMALL)
    items = preprocessor.encode(digits_bundle.train.inputs)
    samples, rows = samples_hash(digits_bundle.train.inputs), len(items)
    cache = FeatureCache(tmp_path)
    good = cache.features(backbone, preprocessor, lambda: items, samples, rows, torch.device("cpu"), index=[1, 2])
    [partial] = tmp_path.rglob("*.part.npz")
    np.savez(partial, index=np.array([2, 1]), features=good, seconds_per_example=np.float64(1.0))  # not sorted
    again = cache.features(backbone, preprocessor, lambda: items, samples, rows, torch.device("cpu"), index=[1, 2])
    np.testing.assert_allclose(again, good, rtol=1e-5)
    assert cache.misses == 2 and "ignoring partial features" in caplog.text


def test_measuring_the_cost_of_inference(digits_bundle):
    registry = get_registry()
    preprocessor = registry.get_backbone("mobilenetv2_100").preprocessor(SMALL)
    items = preprocessor.encode(digits_bundle.train.inputs)
    cost = measure_inference(registry.get_backbone("mobilenetv2_100"), preprocessor, items, torch.device("cpu"))
    assert cost.examples_timed == 16 and 0 < cost.seconds_per_example < 1 and cost.load_seconds > 0
    assert cost.estimate(100) == cost.load_seconds + 100 * cost.seconds_per_example
    capped = measure_inference(
        registry.get_backbone("mobilenetv2_100"), preprocessor, items, torch.device("cpu"), max_seconds=0
    )
    assert capped.examples_timed == 0 and capped.seconds_per_example > 0  # the warm-up's figure


def test_a_frozen_body_trial_counts_its_fit_apart_from_computing_its_features(tmp_path, digits_bundle):
    """What refitting the head costs once the features are cached (an ensemble member, self-training): the
    search keeps time back by it, so a trial that paid for its features must not count them as its fit."""
    from automl_tl import TrialConfig

    executor = Executor(show_progress=False, feature_cache=FeatureCache(tmp_path))
    backbone = get_registry().get_backbone("mobilenetv2_100")
    trial = TrialConfig(
        backbone=backbone.name,
        strategy="logistic_regression",
        trained_groups=0,
        backbone_lr=1e-3,
        head_lr=1e-2,
        epochs=1,
        input_options=SMALL,
    )
    cold = executor.fit(trial, backbone, digits_bundle)
    warm = executor.fit(trial, backbone, digits_bundle)
    assert cold.fit_seconds == pytest.approx(cold.seconds - cold.extra["features_seconds"])
    assert 0 < cold.fit_seconds < cold.seconds
    # the second trial reads the features the first computed: what remains of its time is the same fit
    assert warm.extra["features_seconds"] < 0.3 * cold.extra["features_seconds"]
    assert warm.fit_seconds == pytest.approx(warm.seconds - warm.extra["features_seconds"])
