"""Training-batch augmentation (automl_tl.augmentation): on training batches only, soft targets for mixup, drawn
by the search only for strategies that train the body and only among what the modality offers."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from automl_tl import Executor, InputOptions, TrialConfig
from automl_tl.augmentation import AUGMENTATIONS, MIXUP, NO_AUGMENTATION, RAND_AUGMENT, SPEC_AUGMENT, TRIVIAL_AUGMENT
from automl_tl.config import SearchConfig
from automl_tl.errors import ConfigError
from automl_tl.modalities.audio import AudioPreprocessor, log_mel_spectrogram
from automl_tl.registry import get_registry
from automl_tl.search.space import SearchSpace, suggest_trial_config
from automl_tl.strategies import FROZEN_BODY_STRATEGIES, STRATEGY_NAMES, used_parameters
from automl_tl.train.executor import STOP_COMPLETED, mixup

SMALL = InputOptions(image_size=32)


@pytest.mark.parametrize("augmentation", [TRIVIAL_AUGMENT, RAND_AUGMENT])
def test_image_policies_change_training_batches_only(digits_bundle, augmentation):
    plain = get_registry().get_backbone("mobilenetv2_100").preprocessor(SMALL)
    items = Executor(show_progress=False).encoded(plain, digits_bundle, digits_bundle.train)[:16]
    kept = [item.clone() for item in items]
    augmented = plain.augmented(augmentation)
    assert plain.augmentation == NO_AUGMENTATION  # a copy: the plain preprocessor stays as it was
    assert augmented.cache_key() == plain.cache_key()  # the same encodings serve both
    torch.manual_seed(0)
    assert torch.equal(augmented.collate(items, train=False), plain.collate(items, train=False))
    training = augmented.collate(items, train=True)
    assert training.shape == plain.collate(items, train=True).shape
    assert not torch.equal(training, plain.collate(items, train=True))
    assert all(torch.equal(item, before) for item, before in zip(items, kept))  # the cached encodings untouched


def test_a_preprocessor_refuses_an_augmentation_it_does_not_offer():
    with pytest.raises(ValueError, match="no augmentation 'specaugment'"):
        get_registry().get_backbone("mobilenetv2_100").preprocessor(SMALL).augmented(SPEC_AUGMENT)
    with pytest.raises(ValueError, match="no augmentation 'trivial'"):
        AudioPreprocessor(16000, 1.0).augmented(TRIVIAL_AUGMENT)


def test_a_trial_is_refused_an_augmentation_its_backbone_does_not_offer(digits_bundle):
    trial = TrialConfig("mobilenetv2_100", 1, 1e-3, 1e-2, 1, input_options=SMALL, augmentation=SPEC_AUGMENT)
    with pytest.raises(ConfigError, match="mobilenetv2_100 offers no augmentation 'specaugment'"):
        Executor(show_progress=False).fit(trial, get_registry().get_backbone("mobilenetv2_100"), digits_bundle)


def test_mixup_mixes_inputs_and_gives_soft_targets():
    torch.manual_seed(0)
    inputs, targets = torch.randn(7, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5, 6])
    mixed, soft = mixup(10)(inputs, targets)
    assert soft.shape == (7, 10) and torch.allclose(soft.sum(1), torch.ones(7))
    assert (soft[:6].max(1).values < 1).all()  # every pair mixed: no target left one-hot
    assert not torch.equal(mixed[:6], inputs[:6])
    # timm needs an even batch: the odd one out stays as it was, one-hot
    assert torch.equal(mixed[6], inputs[6]) and soft[6, 6] == 1


def test_fine_tuning_trains_on_augmented_batches(digits_bundle):
    backbone = get_registry().get_backbone("mobilenetv2_100")
    executor = Executor(show_progress=False)

    def fit(augmentation: str) -> torch.Tensor:
        trial = TrialConfig(
            backbone="mobilenetv2_100",
            trained_groups=1,
            backbone_lr=1e-3,
            head_lr=1e-2,
            epochs=1,
            input_options=SMALL,
            augmentation=augmentation,
            class_weighted=True,  # soft targets and class weights together
            batch_size=25,  # odd last batches: mixup leaves their last example unmixed
        )
        result = executor.fit(trial, backbone, digits_bundle)
        assert result.stop_reason == STOP_COMPLETED and result.config.augmentation == augmentation
        assert math.isfinite(result.history[0].train_loss) and result.best_val_accuracy > 0.1
        return result.model.head.weight.detach().clone()

    # (the first fine-tuning of a process trains a little otherwise than the identical ones after it, on main
    # too: mixup goes first, and the fits compared come after it)
    fit(MIXUP)
    plain = fit(NO_AUGMENTATION)
    assert torch.equal(fit(NO_AUGMENTATION), plain)  # a fit is repeatable: what differs below is the augmentation
    assert not torch.allclose(fit(TRIVIAL_AUGMENT), plain, atol=1e-4)


def test_frozen_body_strategies_never_augment():
    for strategy in STRATEGY_NAMES:
        config = TrialConfig("b", 1, 1e-3, 1e-2, 1, strategy=strategy, augmentation=TRIVIAL_AUGMENT)
        assert config.augmentation == (NO_AUGMENTATION if strategy in FROZEN_BODY_STRATEGIES else TRIVIAL_AUGMENT)


def _drawn(space: SearchSpace, trials: int = 60) -> list[tuple[optuna.trial.FrozenTrial, TrialConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    search = SearchConfig(backbones=space.backbones)
    drawn = []
    for _ in range(trials):
        trial = study.ask()
        config = suggest_trial_config(trial, space, search)
        study.tell(trial, 0.5)
        drawn.append((study.trials[-1], config))
    return drawn


def _space(augmentations: tuple[str, ...]) -> SearchSpace:
    return SearchSpace(("b",), STRATEGY_NAMES, 1, 2, (1e-4, 1e-2), (1e-3, 1e-1), ("linear",), 1, "accuracy", False,
                       augmentations)  # fmt: skip


def test_the_search_draws_augmentation_only_for_strategies_that_train_the_body():
    drawn = _drawn(_space(AUGMENTATIONS["image"]))
    for trial, config in drawn:
        frozen = config.strategy in FROZEN_BODY_STRATEGIES
        assert ("augmentation" in trial.params) == (not frozen), config.strategy
        assert config.augmentation == trial.params.get("augmentation", NO_AUGMENTATION)
        assert ("augmentation" in used_parameters(trial.params)) == (not frozen)
    assert {config.augmentation for _, config in drawn} == set(AUGMENTATIONS["image"])
    # text: "none" is all there is, so nothing is drawn
    assert all("augmentation" not in trial.params for trial, _ in _drawn(_space(AUGMENTATIONS["text"]), 20))


def test_the_space_offers_what_the_modality_does_and_the_user_asks_for():
    text = next(b for b in get_registry().list_backbones(modality="text"))
    assert text.augmentations == (NO_AUGMENTATION,)
    assert get_registry().get_backbone("mobilenetv2_100").augmentations == AUGMENTATIONS["image"]

    def space(asked: tuple[str, ...] | None, modality: str) -> SearchSpace:
        config = SearchConfig(backbones=("b",), augmentation=asked)
        return SearchSpace.from_config(config, ["b"], 3, modality, augmentations=AUGMENTATIONS[modality])

    assert space(None, "audio").augmentations == (NO_AUGMENTATION, SPEC_AUGMENT)
    assert space((NO_AUGMENTATION, MIXUP, SPEC_AUGMENT), "audio").augmentations == (NO_AUGMENTATION, SPEC_AUGMENT)
    assert not space((NO_AUGMENTATION,), "image").draws_augmentation
    with pytest.raises(ConfigError, match="audio backbones offer no augmentation mixup"):
        space((MIXUP,), "audio")
    with pytest.raises(ConfigError, match="unknown augmentation 'flip'"):
        SearchConfig(backbones=("b",), augmentation=("flip",))


def test_configs_and_spaces_saved_before_augmentation_still_load():
    saved = TrialConfig("mobilenetv2_100", 1, 1e-3, 1e-2, 2).to_dict()
    del saved["augmentation"]
    assert TrialConfig.from_dict(saved).augmentation == NO_AUGMENTATION
    # a space stored by an earlier version (no augmentations) reads back as drawing none, and compares equal to
    # today's space with augmentation off, so that its study resumes with --augmentation none
    old = {k: v for k, v in _space(AUGMENTATIONS["image"]).to_dict().items() if k != "augmentations"}
    assert SearchSpace.from_dict(old).augmentations == (NO_AUGMENTATION,)
    assert _space((NO_AUGMENTATION,)).to_dict() == old
    assert SearchSpace.from_dict(_space(AUGMENTATIONS["image"]).to_dict()) == _space(AUGMENTATIONS["image"])


def test_specaugment_masks_a_frequency_band_and_a_time_span_of_training_clips_only():
    plain = AudioPreprocessor(16000, 1.0)
    augmented = plain.augmented(SPEC_AUGMENT)
    torch.manual_seed(0)
    noise = [torch.randn(16000)]  # white noise: every band and instant holds energy
    assert torch.equal(augmented.collate(noise, train=False), plain.collate(noise, train=False))
    clip = augmented.collate(noise, train=True)
    before, after = log_mel_spectrogram(plain.collate(noise, train=True))[0], log_mel_spectrogram(clip)[0]
    band_drop = (before - after).mean(1)  # per mel band, over every frame: natural log of the energy lost
    band_drop -= band_drop.median()  # (the random gain)
    assert (band_drop > 5).any(), "no band masked"  # a masked band loses over 99% of its energy
    assert (band_drop.abs() < 1).sum() > 32  # most bands are kept
    silent = (clip[0] == 0).nonzero().flatten()  # noise is never exactly 0: a time mask's silence
    assert len(silent) > 0, "no time span masked"
    assert len(silent) <= 2 * 0.1 * 16000  # two spans of at most a tenth of the clip each


def test_augmentation_is_pinned_from_the_command_line_and_python():
    from automl_tl.cli import build_parser, search_estimator_params
    from automl_tl.estimator import TransferClassifier

    parser = build_parser()
    assert search_estimator_params(parser.parse_args(["search"]))["augmentation"] is None  # the search chooses
    pinned = search_estimator_params(parser.parse_args(["search", "--augmentation", "none"]))["augmentation"]
    assert pinned == ["none"]
    assert TransferClassifier(augmentation=pinned)._search_config(("*",)).augmentation == ("none",)
    assert TransferClassifier(augmentation="mixup")._search_config(("*",)).augmentation == ("mixup",)
    with pytest.raises(ConfigError, match="unknown augmentation 'flip'"):
        TransferClassifier(augmentation="flip").check_params()


def test_the_model_card_shows_augmentation_where_the_modality_offers_it():
    from automl_tl.results.model_card import _relevant_parameters

    fine_tuned = TrialConfig("b", 1, 1e-3, 1e-2, 2, strategy="full", augmentation=MIXUP).to_dict()
    assert "augmentation" in _relevant_parameters(fine_tuned, "image")
    assert "augmentation" not in _relevant_parameters({**fine_tuned, "augmentation": "none"}, "text")
    assert "augmentation" not in _relevant_parameters(
        TrialConfig("b", 1, 1e-3, 1e-2, 2, "linear_probe").to_dict(), "image"
    )


def test_every_backbone_s_preprocessor_applies_what_the_backbone_offers():
    from automl_tl.augmentation import BATCH_AUGMENTATIONS

    for backbone in get_registry().list_backbones():
        if backbone.modality == "text" or not backbone.weights_available():
            assert backbone.modality != "text" or backbone.augmentations == (NO_AUGMENTATION,)
            continue
        preprocessor = backbone.preprocessor(InputOptions())
        for augmentation in set(backbone.augmentations) - set(BATCH_AUGMENTATIONS):
            assert preprocessor.augmented(augmentation).augmentation == augmentation, backbone.name
