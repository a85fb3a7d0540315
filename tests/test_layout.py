"""The package's shape: the public names resolve, and reading the command line's help costs no torch."""

from __future__ import annotations

import subprocess
import sys

import automl_tl


def test_every_public_name_resolves_to_where_it_is_defined():
    for name in automl_tl.__all__:
        value = getattr(automl_tl, name)
        assert getattr(value, "__name__", name) == name, name
    assert set(automl_tl.__all__) == set(automl_tl._PUBLIC)


def test_the_command_line_and_the_package_import_without_torch_or_optuna():
    # what `automl-tl --help` pays for: the parser and every module it reads its choices from
    probe = (
        "import sys, automl_tl, automl_tl.cli; automl_tl.cli.build_parser(); "
        "print(' '.join(m for m in ('torch', 'optuna', 'timm', 'transformers') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == []
