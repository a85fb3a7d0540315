"""Small images are fine-tuned near their own size, not upscaled to the pretrained one (see
automl_tl.modalities.image.fine_tuning_side); frozen-body trials keep the pretrained size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from automl_tl import InputOptions, SearchConfig, run_search
from automl_tl.modalities.image import MIN_FINE_TUNING_SIDE, fine_tuning_side, native_side
from automl_tl.search.space import SearchSpace
from automl_tl.train.executor import Executor


@pytest.mark.parametrize(
    ("native", "pretrained", "expected"),
    [
        (8, 224, MIN_FINE_TUNING_SIDE),  # 8x8 digits: never below the floor
        (28, 224, 128),  # Fashion-MNIST: four times its side, a multiple of 32
        (20, 224, 96),
        (40, 224, 160),  # exactly three quarters of the pretrained side (168) or less still counts
        (41, 224, None),  # 192 would be more than three quarters of 224: the pretrained side
        (56, 256, None),
        (300, 224, None),  # photos larger than the input: the pretrained side
        (None, 224, None),  # nothing readable: the pretrained side
    ],
)
def test_the_side_is_four_times_the_images_own_and_used_only_well_below_the_pretrained_one(
    native, pretrained, expected
):
    assert fine_tuning_side(native, pretrained) == expected


def test_the_native_side_is_the_median_shorter_side_read_from_headers(tmp_path):
    paths = []
    for i, (width, height) in enumerate([(20, 30), (40, 16), (64, 64), (10, 90), (33, 33)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (width, height)).save(path)
        paths.append(str(path))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert native_side([*paths, str(tmp_path / "broken.png")]) == 20  # shorter sides 20 16 64 10 33; broken skipped
    assert native_side([np.zeros((8, 8), np.uint8)] * 3) == 8  # arrays by their shape
    assert native_side([]) is None


def search_config(**overrides) -> SearchConfig:
    values = dict(
        backbones=("mobilenetv2_100",),
        n_trials=2,
        seed=0,
        min_epochs=1,
        max_epochs=1,
        max_trained_groups=1,
        strategies=("linear_probe", "last_k"),
        ensemble=False,
        calibrate=False,
        refit=False,
    )
    return SearchConfig(**{**values, **overrides})


def trial_sizes(outcome) -> dict[str, set]:
    sizes: dict[str, set] = {}
    for trial in outcome.study.trials:
        config = trial.user_attrs.get("trial_config")
        if config is not None:
            sizes.setdefault(config["strategy"], set()).add(config["input_options"]["image_size"])
    return sizes


def test_a_search_on_8_pixel_digits_fine_tunes_at_64_pixels_and_probes_at_the_pretrained_size(tmp_path, digits_bundle):
    outcome = run_search(digits_bundle, search_config(), tmp_path / "run", Executor(show_progress=False))
    assert trial_sizes(outcome) == {"linear_probe": {None}, "last_k": {MIN_FINE_TUNING_SIDE}}
    stored = SearchSpace.from_dict(outcome.study.user_attrs["search_space"])
    assert stored.fine_tuning_image_sizes == {"mobilenetv2_100": MIN_FINE_TUNING_SIDE}  # a worker draws the same
    config = (tmp_path / "run" / "best_model" / "config.json").read_text()
    assert '"image_size"' in config  # the kept model predicts at the size it was trained at


def test_an_image_size_the_user_gives_holds_for_every_trial(tmp_path, digits_bundle):
    config = search_config(input_options=InputOptions(image_size=32))
    outcome = run_search(digits_bundle, config, tmp_path / "run", Executor(show_progress=False))
    assert trial_sizes(outcome) == {"linear_probe": {32}, "last_k": {32}}
    assert "fine_tuning_image_sizes" not in outcome.study.user_attrs["search_space"]


def test_the_warm_start_fine_tune_starts_from_the_usual_body_learning_rate_within_the_range():
    """The one fine-tune a short budget holds is the warm start's: at the image range's geometric middle (3.2e-4)
    MobileNetV2's LP-FT on small digits collapsed to chance; 1e-4 (AutoGluon MultiModal's default) did not."""
    from automl_tl.search.space import WARM_START_BACKBONE_LR

    def space(low: float, high: float) -> SearchSpace:
        return SearchSpace(("mobilenetv2_100",), ("lp_ft",), 1, 8, (low, high), (1e-3, 1e-1), ("linear",), 3)

    assert space(1e-5, 1e-2).default_params()["backbone_lr"] == WARM_START_BACKBONE_LR == 1e-4
    assert space(1e-6, 1e-5).default_params()["backbone_lr"] == 1e-5  # within a range the user narrowed
    assert space(3e-4, 1e-3).default_params()["backbone_lr"] == 3e-4
