"""What earlier versions wrote under the names since changed still works: ``freeze_depth``, which counts the layer
groups that *train*, is now ``trained_groups`` (and ``max_freeze_depth`` / ``--max-freeze-depth`` is
``max_trained_groups`` / ``--max-trained-groups``).

* A stored study: ``tests/data/freeze_depth_study.journal`` was written by the version before the rename
  (``tests/data/make_freeze_depth_study.py`` says how): three finished trials, a trial failed as interrupted
  with its retry waiting, a trial whose worker is gone; its params, stored space, settings and warm starts use
  the old names. It is resumed, reported (journal and SQLite) and read as a joining worker would.
* Config files, ``TransferClassifier``, ``SearchConfig`` and ``TrialConfig`` arguments and the command line's
  flag under the old name.
* A saved model whose ``config.json`` holds the old name.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
from cli_helpers import TINY_SEARCH, error_line, image_folder, run_main

from automl_tl import InputOptions, SearchConfig, TrialConfig, run_search
from automl_tl.strategies import current_names, describe_parameters, used_parameters
from automl_tl.train.executor import FITTED_ON_TRAIN_AND_VAL, Executor

OLD_STUDY = Path(__file__).with_name("data") / "freeze_depth_study.journal"
#: the old study's settings (tests/data/make_freeze_depth_study.py), under today's names; pre-ranking off here,
#: as it is not part of the stored space (the stored warm starts stand in for the ranking's)
SETTINGS = dict(
    backbones=("mobilenetv2_100",),
    seed=0,
    max_epochs=1,
    max_trained_groups=2,
    strategies=("linear_probe", "last_k"),
    heads=("linear",),
    pruner="none",
    prerank=False,
    input_options=InputOptions(image_size=32),
)
WAITING = (optuna.trial.TrialState.WAITING,)


def old_run(folder: Path) -> Path:
    """A run directory holding a copy of the study an earlier version wrote (the copy may change)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OLD_STUDY, folder / "study.journal")
    return folder


def load_study(storage) -> optuna.Study:
    return optuna.load_study(study_name="automl_tl", storage=storage)


def journal(run_dir: Path):
    from automl_tl.storage import open_storage

    return open_storage(str(run_dir / "study.journal"), run_dir)


# ---------------------------------------------------------------- the one mapping


def test_current_names_renames_the_old_names_only():
    old = {"backbone": "b", "freeze_depth": 2, "backbone_lr": 1e-3}
    assert current_names(old) == {"backbone": "b", "trained_groups": 2, "backbone_lr": 1e-3}
    assert list(current_names(old)) == ["backbone", "trained_groups", "backbone_lr"]  # in the same place
    assert current_names({"min_freeze_depth": 1, "max_freeze_depth": 4}) == {
        "min_trained_groups": 1,
        "max_trained_groups": 4,
    }
    assert current_names({"freeze_depth": 1, "trained_groups": 3}) == {"trained_groups": 3}  # the new one wins
    new = {"trained_groups": 2, "head": "linear"}
    assert current_names(new) == new and current_names(new) is not new
    assert used_parameters({"backbone": "b", "strategy": "last_k", "freeze_depth": 2})["trained_groups"] == 2
    # an old trial's log line (a resumed study's) names it as a new trial's does
    old_trial = {"backbone": "b", "strategy": "last_k", "freeze_depth": 2, "backbone_lr": 3.2e-4}
    assert (
        describe_parameters(old_trial)
        == describe_parameters(current_names(old_trial))
        == "groups=2 backbone_lr=3.2e-04"
    )


def test_the_stored_settings_and_space_read_as_today_s(tmp_path):
    """What a worker joining the old study reads (join_study), and what a resume compares its space with."""
    from automl_tl.search.space import SearchSpace

    attrs = load_study(journal(old_run(tmp_path))).user_attrs
    assert "max_freeze_depth" in attrs["search_config"] and "min_freeze_depth" in attrs["search_space"]
    config = SearchConfig.from_dict(attrs["search_config"])
    assert config.max_trained_groups == 2
    space = SearchSpace.from_dict(attrs["search_space"])
    assert (space.min_trained_groups, space.max_trained_groups) == (1, 2)
    assert space.to_dict() == current_names(attrs["search_space"])


# ---------------------------------------------------------------- an earlier version's study


def in_sqlite(run_dir: Path, tmp_path: Path) -> str:
    """The old study moved from ``run_dir``'s journal into an SQLite database; its URL."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.copy_study(
        from_study_name="automl_tl", from_storage=journal(run_dir), to_storage=url, to_study_name="automl_tl"
    )
    (run_dir / "study.journal").unlink()
    return url


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_an_old_study_reopens_with_its_warm_starts_and_retry_under_the_new_name(tmp_path, digits_bundle, kind):
    from automl_tl.search.study import Search

    run_dir = old_run(tmp_path / "run")
    storage = in_sqlite(run_dir, tmp_path) if kind == "sqlite" else None
    config = SearchConfig(n_trials=6, storage=storage, **SETTINGS)
    study = Search(digits_bundle, config, run_dir, Executor(show_progress=False)).open_study()
    # (the stored space, with min/max_freeze_depth, is the same space: no refusal)
    fixed = study.sampler.fixed  # the stored warm starts, which the sampler gives to the first slots
    assert [params["trained_groups"] for params in fixed] == [2, 2]
    assert not any("freeze_depth" in params for params in fixed)
    (retry,) = study.get_trials(deepcopy=False, states=WAITING)
    fixed_params = retry.system_attrs["fixed_params"]  # enqueued by the earlier version, renamed in the storage
    assert fixed_params["trained_groups"] == 1 and "freeze_depth" not in fixed_params


def test_an_old_study_resumes(tmp_path, digits_bundle):
    run_dir = old_run(tmp_path / "run")
    outcome = run_search(digits_bundle, SearchConfig(n_trials=6, **SETTINGS), run_dir, Executor(show_progress=False))
    trials = outcome.study.trials
    states = [t.state.name for t in trials]
    # 0-2 the old trials; 3 and 4 interrupted (4 recovered now); 5 the old retry of 3, 6 the retry of 4; 7 new
    assert states == ["COMPLETE"] * 3 + ["FAIL", "FAIL"] + ["COMPLETE"] * 3, states
    assert all("freeze_depth" in t.params for t in trials[:5])
    for retry, of in ((trials[5], trials[3]), (trials[6], trials[4])):
        assert retry.user_attrs["retry_of"] == of.number
        assert retry.params == current_names(of.params)  # the same trial again, today's name included
        assert retry.params["trained_groups"] == 1
        fixed = retry.system_attrs["fixed_params"]  # what it was enqueued with (5: by the earlier version)
        assert fixed["trained_groups"] == 1 and "freeze_depth" not in fixed
    new = trials[7]  # drawn by TPE from old and new trials: "freeze_depth" is no parameter of it
    assert "freeze_depth" not in new.params and 1 <= new.params["trained_groups"] <= 2
    board = outcome.leaderboard
    assert "freeze_depth" not in board.columns
    by_trial = board.set_index("trial")
    assert by_trial.loc[1, "trained_groups"] == 2 and by_trial.loc[5, "trained_groups"] == 1  # old and new alike
    assert pd.isna(by_trial.loc[0, "trained_groups"])  # a linear probe uses none
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "freeze_depth" not in summary["best_params"]
    assert outcome.best_params == used_parameters(trials[outcome.best_trial].params)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_automl_tl_report_rebuilds_an_old_study(tmp_path, capsys, kind):
    from automl_tl.cli import main

    run_dir = old_run(tmp_path / "run")
    args = ["report", str(run_dir)]
    if kind == "sqlite":  # the same study in a database
        args += ["--storage", in_sqlite(run_dir, tmp_path)]
    stale = run_dir / "plots" / "freeze_depth.png"  # the figure's name in the earlier version's report
    stale.parent.mkdir()
    stale.write_bytes(b"\x89PNG")
    assert main(args) == 0, capsys.readouterr().err
    page = (run_dir / "report.html").read_text()
    assert "freeze_depth" not in page and "trained_groups" in page
    # the leaderboard's row of trial 1 (last-k, "freeze_depth": 2): its trained groups after the strategy
    assert '<td class="num">1</td><td>COMPLETE</td>' in page
    row = page.split('<td class="num">1</td><td>COMPLETE</td>')[1].split("</tr>")[0]
    assert '<td>last_k</td><td class="num">2</td>' in row, row
    assert (run_dir / "plots" / "trained_groups.png").is_file() and not stale.exists()


def test_parameter_importances_of_an_old_study_use_the_new_name(tmp_path):
    from automl_tl.results.html_report import parameter_importances

    study = load_study(journal(old_run(tmp_path)))
    importances, why_not = parameter_importances(study)
    assert why_not is None and "trained_groups" in importances and "freeze_depth" not in importances


# ---------------------------------------------------------------- options under their old names


def test_transfer_classifier_takes_max_freeze_depth_with_a_warning(caplog):
    from sklearn.base import clone

    from automl_tl import TransferClassifier

    with caplog.at_level(logging.WARNING):
        clf = TransferClassifier(max_freeze_depth=1)
    assert "max_freeze_depth was renamed to max_trained_groups" in caplog.text
    assert clf.max_trained_groups == 1 and not hasattr(clf, "max_freeze_depth")
    assert clf.get_params()["max_trained_groups"] == 1 and "max_freeze_depth" not in clf.get_params()
    assert clone(clf).max_trained_groups == 1
    assert clf.set_params(max_freeze_depth=3).max_trained_groups == 3
    with pytest.raises(TypeError, match="both 'max_freeze_depth' and 'max_trained_groups'"):
        TransferClassifier(max_freeze_depth=1, max_trained_groups=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_frozen_depth'"):
        TransferClassifier(max_frozen_depth=1)


def test_the_configs_take_their_fields_old_names_with_a_warning(caplog):
    """A script written for an earlier version: ``SearchConfig(max_freeze_depth=)``, ``TrialConfig(freeze_depth=)``."""
    with caplog.at_level(logging.WARNING):
        search = SearchConfig(backbones=("b",), max_freeze_depth=2)
        trial = TrialConfig(backbone="b", strategy="last_k", freeze_depth=1, backbone_lr=1e-4, head_lr=1e-2, epochs=1)
    assert "SearchConfig's max_freeze_depth was renamed to max_trained_groups" in caplog.text
    assert "TrialConfig's freeze_depth was renamed to trained_groups" in caplog.text
    assert search == SearchConfig(backbones=("b",), max_trained_groups=2)
    assert trial.trained_groups == 1 and "freeze_depth" not in trial.to_dict()
    with pytest.raises(TypeError, match="SearchConfig got both 'max_freeze_depth' and 'max_trained_groups'"):
        SearchConfig(backbones=("b",), max_freeze_depth=1, max_trained_groups=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_frozen_depth'"):
        SearchConfig(backbones=("b",), max_frozen_depth=1)
    assert replace(search, max_trained_groups=1).max_trained_groups == 1  # (today's names go through as before)


@pytest.mark.parametrize(
    "name, text",
    [
        ("job.yaml", "max-freeze-depth: 1\n"),
        ("job.yml", "max_freeze_depth: 1\n"),
        ("job.toml", "max_freeze_depth = 1\n"),
        ("job.yaml", '{"max_freeze_depth": 1}\n'),  # JSON is YAML
    ],
)
def test_a_config_file_takes_max_freeze_depth_with_a_warning(tmp_path, caplog, name, text):
    from automl_tl.cli import build_parser
    from automl_tl.config_file import options_from_file

    search = next(a for a in build_parser()._actions if a.dest == "command").choices["search"]
    job = tmp_path / name
    job.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert options_from_file(job, search) == {"max_trained_groups": 1}
    assert f"config file {job}:" in caplog.text and "freeze" in caplog.text
    assert "was renamed to 'max-trained-groups'" in caplog.text or "renamed to 'max_trained_groups'" in caplog.text


def test_a_config_file_with_both_names_is_refused(tmp_path):
    from automl_tl.cli import build_parser
    from automl_tl.config_file import options_from_file
    from automl_tl.errors import ConfigError

    search = next(a for a in build_parser()._actions if a.dest == "command").choices["search"]
    job = tmp_path / "job.yaml"
    job.write_text("max-trained-groups: 1\nmax-freeze-depth: 2\n")
    with pytest.raises(ConfigError, match="given twice"):
        options_from_file(job, search)


def test_the_old_flag_is_read_as_the_new_one_and_hidden(capsys, caplog):
    from automl_tl.cli import build_parser, search_estimator_params

    args = build_parser().parse_args(["search", "--max-freeze-depth", "1"])
    assert search_estimator_params(args)["max_trained_groups"] == 1
    assert build_parser().parse_args(["search"]).max_trained_groups is None  # no default of its own
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--help"])
    help_text = capsys.readouterr().out
    assert "--max-trained-groups" in help_text and "freeze" not in help_text


def test_the_old_flag_warns_and_is_checked_as_the_new_one(tmp_path, capsys, caplog):
    folder = image_folder(tmp_path / "images")
    with caplog.at_level(logging.WARNING):
        code, err = run_main(["search", "--data", folder, *TINY_SEARCH, "--max-freeze-depth", "-1"], capsys)
    assert "max trained groups must be >= 0, got -1" in error_line(code, err)
    assert "--max-freeze-depth was renamed to --max-trained-groups" in caplog.text


def test_a_config_file_s_old_key_goes_through_the_new_one_s_checks(tmp_path, capsys, caplog):
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {image_folder(tmp_path / 'images')}\nmax-freeze-depth: -1\n")
    with caplog.at_level(logging.WARNING):
        code, err = run_main(["search", "--config", job, *TINY_SEARCH], capsys)
    assert f"config file {job}: max trained groups must be >= 0, got -1" in error_line(code, err)
    assert "'max-freeze-depth' was renamed to 'max-trained-groups'" in caplog.text


# ---------------------------------------------------------------- a saved model of an earlier version


@pytest.fixture(scope="module")
def old_model_run(tmp_path_factory, digits_bundle):
    """A run directory whose best model (last-k, one trained group, not refitted yet) has a ``config.json`` as
    an earlier version wrote it: ``trial_config`` holds ``freeze_depth``."""
    run_dir = tmp_path_factory.mktemp("old-model")
    config = SearchConfig(n_trials=1, refit=False, **{**SETTINGS, "strategies": ("last_k",), "max_trained_groups": 1})
    run_search(digits_bundle, config, run_dir, Executor(show_progress=False))
    path = run_dir / "best_model" / "config.json"
    saved = json.loads(path.read_text())
    saved["trial_config"] = {
        ("freeze_depth" if k == "trained_groups" else k): v for k, v in saved["trial_config"].items()
    }
    path.write_text(json.dumps(saved, indent=2))
    return run_dir, config


def test_an_old_saved_model_loads_and_predicts(old_model_run, digits_bundle):
    import automl_tl
    from automl_tl.results.model_card import render_model_card

    run_dir, _ = old_model_run
    saved = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert saved["trial_config"]["freeze_depth"] == 1
    assert TrialConfig.from_dict(saved["trial_config"]).trained_groups == 1
    predictor = automl_tl.load(run_dir)
    assert len(predictor.predict(digits_bundle.test.inputs[:5])) == 5
    assert "| trained_groups | 1 |" in render_model_card(run_dir)


def test_an_old_saved_model_is_refitted_on_resume(old_model_run, tmp_path, digits_bundle):
    source, config = old_model_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    outcome = run_search(digits_bundle, replace(config, refit=True), run_dir, Executor(show_progress=False))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"]["fitted_on"] == FITTED_ON_TRAIN_AND_VAL, summary["model"]  # (the refit read the old name)
    saved = json.loads((run_dir / "best_model" / "config.json").read_text())
    assert saved["trial_config"]["trained_groups"] == 1 and "freeze_depth" not in saved["trial_config"]
    assert outcome.predictor is not None


def test_set_freeze_depth_is_set_trained_groups_with_a_deprecation_warning():
    from torch import nn

    from automl_tl import TransferModel

    model = TransferModel(
        nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)),
        nn.Linear(2, 2),
        [["0.weight", "0.bias"], ["1.weight", "1.bias"]],
    )
    with pytest.warns(DeprecationWarning, match="renamed to set_trained_groups"):
        model.set_freeze_depth(1)
    assert [p.requires_grad for p in model.body.parameters()] == [False, False, True, True]
