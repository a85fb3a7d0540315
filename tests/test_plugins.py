"""Plugin discovery through entry points, registration hooks, and the errors plugins can cause."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import heavy_imports

from automl_tl import hookspecs
from automl_tl.errors import PluginError, UnknownBackboneError
from automl_tl.hookspecs import hookimpl
from automl_tl.plugins import get_plugin_manager, new_plugin_manager
from automl_tl.registry import NamedDataset, build_registry, get_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "examples" / "automl_tl_example_plugin"


def with_path(folder: Path) -> dict[str, str]:
    """This environment with ``folder`` first on ``PYTHONPATH`` (the rest kept: it may name the code under test)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "automl_tl.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_builtin_plugins_are_registered_through_entry_points():
    names = {ep.name for ep in importlib.metadata.entry_points(group="automl_tl")}
    assert {"timm", "datasets"} <= names
    registry = get_registry()
    assert registry.owner("backbone", "tf_efficientnet_lite0") == "timm"
    assert registry.owner("dataset", "digits") == "datasets"


def test_every_hook_has_a_test():
    """Like datasette's: each hook specification needs a test named test_hook_<name> somewhere in tests/."""
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "automl_tl_spec")]
    assert hooks, "no hook specifications found"
    sources = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    untested = [name for name in hooks if f"def test_hook_{name}(" not in sources]
    assert not untested, f"hooks without a test: {untested}"


class _ExtraBackbonePlugin:
    @hookimpl
    def register_backbones(self, register):
        from automl_tl_timm import TimmBackbone

        register(TimmBackbone("tf_efficientnet_lite0", weights="offline", name="custom/lite0_flip", hflip=True))


def test_hook_register_backbones(clean_registry):
    manager = get_plugin_manager()
    manager.register(_ExtraBackbonePlugin(), name="extra")
    try:
        registry = build_registry(manager)
        backbone = registry.get_backbone("custom/lite0_flip")
        assert registry.owner("backbone", "custom/lite0_flip") == "extra"
        assert backbone.preprocessor(__import__("automl_tl").InputOptions(image_size=32)).hflip
        assert [b.name for b in registry.list_backbones(pattern="custom/*")] == ["custom/lite0_flip"]
    finally:
        manager.unregister(name="extra")
    assert "custom/lite0_flip" not in [b.name for b in build_registry(manager).list_backbones()]


class _DatasetPlugin:
    @hookimpl
    def register_datasets(self, register):
        import pandas as pd

        register(
            NamedDataset(
                "tiny",
                "three rows",
                "image",
                "image",
                "label",
                lambda: pd.DataFrame({"image": ["a.png"] * 3, "label": [0, 1, 1]}),
            )
        )


def test_hook_register_datasets(clean_registry):
    manager = get_plugin_manager()
    manager.register(_DatasetPlugin(), name="tiny-data")
    try:
        registry = build_registry(manager)
        assert registry.get_dataset("tiny").load().shape == (3, 2)
        assert registry.owner("dataset", "tiny") == "tiny-data"
    finally:
        manager.unregister(name="tiny-data")


class _DuplicatePlugin:
    @hookimpl
    def register_backbones(self, register):
        from automl_tl_timm import TimmBackbone

        register(TimmBackbone("mobilenetv2_100", weights="none"))


def test_duplicate_name_is_refused_naming_both_plugins(clean_registry):
    manager = get_plugin_manager()
    manager.register(_DuplicatePlugin(), name="copycat")
    try:
        with pytest.raises(
            PluginError, match=r"'mobilenetv2_100'.*'copycat'.*'timm'|'mobilenetv2_100'.*'timm'.*'copycat'"
        ):
            build_registry(manager)
    finally:
        manager.unregister(name="copycat")


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError, match="tf_efficientnet_lite0") as info:
        get_registry().get_backbone("tf_efficientnet_lit0")
    assert "tf_efficientnet_lite0" in info.value.close_matches


def test_wildcards_expand_in_order_without_repeats():
    chosen = get_registry().resolve_backbones(["mobilenetv2_100", "tf_efficientnet_lite*", "tf_efficientnet_lite0"])
    assert [b.name for b in chosen] == [
        "mobilenetv2_100",
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
    ]
    with pytest.raises(UnknownBackboneError):
        get_registry().resolve_backbones(["resnet*"], modality="image")


def test_blocked_plugin_is_not_loaded(monkeypatch):
    monkeypatch.setenv("AUTOML_TL_BLOCK_PLUGINS", "datasets")
    registry = build_registry(new_plugin_manager())
    assert [d.name for d in registry.list_datasets()] == []
    assert registry.list_backbones(pattern="tf_efficientnet_lite0")


def _write_broken_distribution(site: Path) -> None:
    """A real (hand-made) installed distribution whose plugin module raises at import."""
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[automl_tl]\nbroken = broken_plugin_module\n")
    (site / "broken_plugin_module.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")


def test_plugin_that_fails_to_import_is_named(tmp_path):
    _write_broken_distribution(tmp_path)
    result = run_cli("backbones", env=with_path(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1
    assert "plugin 'broken'" in message[0] and "broken-plugin" in message[0]
    assert "this plugin is broken on purpose" in message[0] and "AUTOML_TL_BLOCK_PLUGINS=broken" in message[0]

    blocked = run_cli("backbones", env={**with_path(tmp_path), "AUTOML_TL_BLOCK_PLUGINS": "broken"})
    assert blocked.returncode == 0, blocked.stderr
    assert "tf_efficientnet_lite0" in blocked.stdout


@pytest.fixture(scope="module")
def example_plugin_site(tmp_path_factory) -> Path:
    """The example third-party plugin, really installed by pip into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(EXAMPLE_PLUGIN),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def test_example_plugin_is_discovered_after_install(example_plugin_site):
    backbones, heavy = heavy_imports("backbones", env=with_path(example_plugin_site))
    assert backbones.returncode == 0, backbones.stderr[-2000:]
    line = next(row for row in backbones.stdout.splitlines() if "example/torchvision_mobilenet_v2" in row)
    assert line.split()[-1] == "example" and " yes " in line
    assert heavy == []  # its registering module builds nothing, as the example it is should show
    datasets = run_cli("datasets", env=with_path(example_plugin_site))
    assert "example-digits-small" in datasets.stdout
    # Not installed here: the plain environment does not see it.
    assert "example/torchvision_mobilenet_v2" not in run_cli("backbones").stdout


def test_example_plugin_backbone_meets_the_contract(example_plugin_site, monkeypatch, digits_bundle):
    monkeypatch.syspath_prepend(str(example_plugin_site))
    registry = build_registry(new_plugin_manager())
    backbone = registry.get_backbone("example/torchvision_mobilenet_v2")
    model = backbone.build(num_classes=10)
    assert model.num_groups == 8
    model.set_trained_groups(1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"body.{n}" for n in model.layer_groups[-1]} | {"head.weight", "head.bias"}

    from automl_tl import Executor, InputOptions, TrialConfig

    config = TrialConfig(
        backbone=backbone.name,
        trained_groups=0,
        backbone_lr=1e-3,
        head_lr=3e-2,
        epochs=2,
        input_options=InputOptions(image_size=32),
    )
    result = Executor(show_progress=False).fit(config, backbone, digits_bundle)
    assert len(result.history) == 2 and result.model is not None
    assert result.best_val_accuracy > 0.3  # real ImageNet features: far above the 0.1 of chance
