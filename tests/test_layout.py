"""The package's shape: the public names resolve, and reading the command line's help or listing what the plugins
registered costs no torch, Optuna, timm or transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import HEAVY_MODULES, heavy_imports

import automl_tl


def test_every_public_name_resolves_to_where_it_is_defined():
    for name in automl_tl.__all__:
        value = getattr(automl_tl, name)
        assert getattr(value, "__name__", name) == name, name
    assert set(automl_tl.__all__) == set(automl_tl._PUBLIC)


def test_the_model_still_imports_from_the_backbone_contract_it_left():
    # plugins written before TransferModel moved to automl_tl.transfer_model import it from automl_tl.backbone
    from automl_tl import backbone, transfer_model

    assert backbone.TransferModel is transfer_model.TransferModel is automl_tl.TransferModel
    assert backbone.Batch is transfer_model.Batch


def test_the_command_line_and_the_package_import_without_torch_or_optuna():
    # what `automl-tl --help` pays for: the parser and every module it reads its choices from
    probe = (
        "import sys, automl_tl, automl_tl.cli; automl_tl.cli.build_parser(); "
        "print(' '.join(m for m in ('torch', 'optuna', 'timm', 'transformers') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == []


@pytest.mark.parametrize("command", ["backbones", "datasets"])
def test_listing_what_the_plugins_registered_imports_no_model_library(command):
    # every plugin's registering module is imported, and every backbone says where its weights are and
    # whether they are installed: none of it builds a model
    listed, heavy = heavy_imports(command)
    assert listed.returncode == 0, listed.stderr[-2000:]
    expected = {"backbones": ("tf_efficientnet_lite0", "all-MiniLM-L6-v2", "crepe-tiny"), "datasets": ("digits",)}
    assert all(name in listed.stdout for name in expected[command]), listed.stdout
    assert heavy == [], f"automl-tl {command} imported {heavy}"


def test_the_registry_lists_and_finds_backbones_without_a_model_library_until_one_is_built():
    probe = (
        "import sys\n"
        "from automl_tl.registry import get_backbone, get_registry, list_backbones\n"
        "def heavy(): return [m for m in " + repr(HEAVY_MODULES) + " if m in sys.modules]\n"
        "audio = [b.name for b in list_backbones(modality='audio')]\n"
        "lite = [b.name for b in list_backbones(pattern='tf_efficientnet_lite*')]\n"
        "chosen = [b.name for b in get_registry().resolve_backbones(['mobilenetv2_100', 'crepe-*'])]\n"
        "found = [(b.name, b.modality, b.weight_source, b.weights_available())\n"
        "         for b in map(get_backbone, ['mobilenetv2_100', 'all-MiniLM-L6-v2', 'ge2e-speaker', 'aisfx'])]\n"
        "print([audio, lite, chosen, [f[:2] for f in found], heavy()])\n"
        "get_backbone('crepe-tiny').build(num_classes=2, pretrained=False)\n"
        "print(heavy())\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    listed, built = run.stdout.splitlines()
    assert listed == str(
        [
            ["aisfx", "crepe-full", "crepe-tiny", "ge2e-speaker"],
            ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"],
            ["mobilenetv2_100", "crepe-full", "crepe-tiny"],
            [
                ("mobilenetv2_100", "image"),
                ("all-MiniLM-L6-v2", "text"),
                ("ge2e-speaker", "audio"),
                ("aisfx", "audio"),
            ],
            [],
        ]
    )
    assert "torch" in built  # building a model imports what it needs
