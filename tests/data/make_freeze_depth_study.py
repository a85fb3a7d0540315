"""How ``freeze_depth_study.journal`` was made: a study written by automl_tl before ``freeze_depth`` was renamed
``trained_groups`` (commit 0bc452f), as tests/test_renamed.py resumes, reports and joins it.

It runs only against that version (``PYTHONPATH=<a checkout of 0bc452f>:<it>/plugins python
tests/data/make_freeze_depth_study.py OUT.journal``); it is kept to say how the file came about. The study: the
data of tests/conftest.py's ``digits_bundle``, one backbone, pre-ranking on (so the warm starts are stored), three
finished trials; then, as a worker killed twice would leave it, a trial failed as interrupted with its retry
waiting (the retry's fixed parameters use the old name) and a trial still running whose worker is gone.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import optuna

from automl_tl import InputOptions, SearchConfig, prepare_dataset, run_search
from automl_tl.search.liveness import WORKER_ATTR, recover_dead_trials
from automl_tl.search.space import SearchSpace, suggest_trial_config
from automl_tl.train.executor import Executor
from automl_tl_datasets import load_digits

#: the search the test resumes (with max_trained_groups for max_freeze_depth)
SETTINGS = dict(
    backbones=("mobilenetv2_100",),
    seed=0,
    max_epochs=1,
    max_freeze_depth=2,
    strategies=("linear_probe", "last_k"),
    heads=("linear",),
    pruner="none",
    input_options=InputOptions(image_size=32),
)

#: the parameters of the trials whose worker died: one trained layer group, not the range's top (2)
KILLED = {
    "backbone": "mobilenetv2_100",
    "strategy": "last_k",
    "freeze_depth": 1,
    "layer_decay": 0.8,
    "head_lr": 0.02,
    "head": "linear",
    "head_hidden": 64,
    "head_dropout": 0.1,
}


def main(target: Path) -> None:
    frame = load_digits().groupby("label", group_keys=False).head(24).reset_index(drop=True)
    data = prepare_dataset(frame, label_column="label", input_column="image", seed=0)
    run_dir = Path(tempfile.mkdtemp(prefix="freeze-depth-study-"))
    outcome = run_search(data, SearchConfig(n_trials=3, **SETTINGS), run_dir, Executor(show_progress=False))
    study = outcome.study
    space = SearchSpace.from_dict(study.user_attrs["search_space"])
    config = SearchConfig(n_trials=3, **SETTINGS)
    gone = {"host": "a-lost-machine", "pid": 1}
    for backbone_lr in (1e-4, 2e-4):  # two trials whose worker died after drawing their parameters
        study.enqueue_trial({**KILLED, "backbone_lr": backbone_lr})
        trial = study.ask()
        suggest_trial_config(trial, space, config)
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, gone)
    # the first is noticed (failed, its retry enqueued under the old names); the second is left running
    _, second = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    study._storage.set_trial_system_attr(second._trial_id, WORKER_ATTR, {"host": "a-lost-machine", "pid": 2})
    study._storage.set_trial_system_attr(second._trial_id, "automl_tl:heartbeat", 4e9)  # "alive" for now
    recover_dead_trials(study, grace=0.0)
    study._storage.set_trial_system_attr(second._trial_id, "automl_tl:heartbeat", 0.0)  # long silent
    shutil.copyfile(run_dir / "study.journal", target)
    print(f"wrote {target} from {run_dir}: {[(t.number, t.state.name, t.params) for t in study.trials]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
