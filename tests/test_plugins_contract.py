"""The core knows no plugin's internals: no module under automl_tl/ imports a plugin package, and what is
backbone-specific (an export format of the backbone's own library) comes through the Backbone contract."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest
import torch

from automl_tl.backbone import Backbone, InputOptions, NativeExportFormat, Preprocessor, TransferModel
from automl_tl.hookspecs import hookimpl
from automl_tl.plugins import get_plugin_manager
from automl_tl.registry import reset_registry
from automl_tl.results.export import CORE_FORMATS, export_formats

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "automl_tl"


def plugin_packages() -> set[str]:
    """The built-in plugins' packages (plugins/*) and the top-level module of every installed plugin's entry point."""
    names = {path.name for path in (ROOT / "plugins").iterdir() if (path / "__init__.py").is_file()}
    names |= {entry.value.split(":")[0].split(".")[0] for entry in importlib.metadata.entry_points(group="automl_tl")}
    return names


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, and of every ``importlib.import_module`` / ``__import__`` of a
    constant name, in ``tree`` (function bodies and ``if TYPE_CHECKING`` blocks included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if function in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def test_the_checker_sees_every_kind_of_import():
    """Guard against a check that passes because it sees nothing."""
    source = (
        "import automl_tl_a\nfrom automl_tl_b.x import y\nimport importlib\n"
        "def f():\n    from automl_tl_c import z\n    importlib.import_module('automl_tl_d')\n"
        "    __import__('automl_tl_e')\nfrom . import automl_tl_f\n"
    )
    tops = {name.split(".")[0] for _, name in imported_modules(ast.parse(source))}
    assert {"automl_tl_a", "automl_tl_b", "automl_tl_c", "automl_tl_d", "automl_tl_e"} <= tops
    assert "automl_tl_f" not in tops  # a relative import stays inside the core


def test_no_core_module_imports_a_plugin_package():
    plugins = plugin_packages()
    assert {"automl_tl_timm", "automl_tl_text", "automl_tl_audio"} <= plugins
    files = sorted(CORE.rglob("*.py"))  # sub-packages included
    assert len(files) > 20
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in imported_modules(ast.parse(path.read_text(), str(path)))
        if name.split(".")[0] in plugins
    ]
    assert not offenders, "the core must not import plugins: " + "; ".join(offenders)


# ---------------------------------------------------------------- native export formats through the contract


class _Toy(Backbone):
    """A backbone of a third-party plugin that offers one native format of its own."""

    name = "test/toy"
    modality = "audio"
    weight_source = "random initialisation"
    embedding_dim = 4

    def build(self, num_classes: int, pretrained: bool = True) -> TransferModel:
        body = torch.nn.Linear(4, 4)
        return TransferModel(body, torch.nn.Linear(4, num_classes), [["weight", "bias"]])

    def preprocessor(self, options: InputOptions) -> Preprocessor:
        raise NotImplementedError

    def native_export_formats(self) -> tuple[NativeExportFormat, ...]:
        return (NativeExportFormat("aardvark", "audio", "toy networks", "not a toy"),)


class _ToyPlugin:
    @hookimpl
    def register_backbones(self, register):
        register(_Toy())


def test_export_formats_are_the_backbones_native_ones_then_the_cores(clean_registry):
    assert export_formats() == ("timm", "transformers", *CORE_FORMATS)  # the built-in plugins'
    get_plugin_manager().register(_ToyPlugin(), name="toy")
    reset_registry()
    try:
        assert export_formats() == ("aardvark", "timm", "transformers", "torchscript", "onnx")
    finally:
        get_plugin_manager().unregister(name="toy")


def test_a_backbone_offers_no_native_format_by_default():
    class Plain(_Toy):
        native_export_formats = Backbone.native_export_formats

    backbone = Plain()
    assert backbone.native_export_formats() == ()
    assert backbone.write_export_inputs(None) is None  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="no export format 'x'"):
        backbone.write_native_export("x", None)  # type: ignore[arg-type]
