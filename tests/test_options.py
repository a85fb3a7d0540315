"""The table of search options (automl_tl.options) against each face that reads it: TransferClassifier's explicit
signature, the flags of ``automl-tl search``, SearchConfig's defaults (what the table may import: pyproject.toml's
import-linter layers, and tests/test_layout.py)."""

from __future__ import annotations

import dataclasses
import inspect

from automl_tl.options import search_options


def test_the_signature_of_transfer_classifier_is_the_table():
    from automl_tl.estimator import TransferClassifier

    parameters = inspect.signature(TransferClassifier).parameters
    # (**renamed takes the names earlier versions gave some parameters: scikit-learn does not see it)
    signature = {name: p.default for name, p in parameters.items() if p.kind != inspect.Parameter.VAR_KEYWORD}
    table = {option.name: option.default for option in search_options()}
    assert sorted(signature) == sorted(table), "TransferClassifier's parameters and automl_tl.options differ"
    differ = {name: (signature[name], table[name]) for name in table if signature[name] != table[name]}
    assert not differ, f"defaults differ (signature, table): {differ}"


def test_every_row_with_a_flag_is_a_search_flag_with_its_default():
    import argparse

    from automl_tl.cli import FLAG_TYPES, build_parser, search_estimator_params
    from automl_tl.options import PARSE_KINDS

    parser = build_parser()
    search = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    assert set(FLAG_TYPES) == {*PARSE_KINDS, None}  # the CLI reads every kind of flag text the table names
    flags = {flag: action for action in search._actions for flag in action.option_strings}
    args = parser.parse_args(["search"])
    for option in search_options():
        if option.flag is None:
            continue
        assert flags[option.flag].dest == option.flag_dest, option.flag
        assert getattr(args, option.flag_dest) == option.flag_default, option.flag
        assert flags[option.flag].help == option.help, option.flag
    rows = {option.flag for option in search_options()}
    old_flags = {flag for option in search_options() for flag in option.old_flags}  # hidden, read as the new flag
    assert all(flags[flag].help == argparse.SUPPRESS for flag in old_flags)
    assert {flag for flag in flags if flag.startswith("--")} - rows - old_flags == {
        "--help",
        "--config",
        "--data",
        "--dataset",
    }
    assert set(search_estimator_params(args)) == {option.name for option in search_options() if option.flag}


def test_every_default_is_of_its_kind():
    from automl_tl.config import check_types

    check_types({o.name: o.default for o in search_options()}, {o.name: o.kind for o in search_options()})


def test_search_config_defaults_are_the_table_s():
    from automl_tl.config import SearchConfig

    table = {option.name: option.default for option in search_options()}
    # None in Python means the defaults SearchConfig spells out; backbones have no default there
    spelled_out = {"backbones", "strategies", "heads"}
    for field in dataclasses.fields(SearchConfig):
        if field.name in table and field.name not in spelled_out:
            assert field.default == table[field.name], field.name
