"""A sampler whose draws depend on the study's history and the trial's slot only, never on the process.

Optuna's samplers keep one random stream per process: a search killed and run again restarts that
stream and draws other configurations than the uninterrupted run would have. :class:`SlotSeededSampler`
makes a fresh sampler for every trial, seeded with ``seed + slot`` (:func:`automl_tl.search.liveness.trial_slot`),
so the same history gives the same next trial, whether the search ran in one go, was resumed, or is one
of several workers. TPE itself stays as it is: it reads the finished trials from the study each time.

The first trials can be fixed in advance (``fixed``: the warm starts of the pre-ranking): the trial in slot
``k`` takes ``fixed[k]``. Unlike trials enqueued in the study, a fixed trial exists only once it starts, so a
search that runs out of time leaves no waiting trials behind, and a resumed one still starts with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from automl_tl.search.liveness import SLOT_ATTR, WARM_START_ATTR, WORKER_ATTR, this_worker, trial_slot


class SlotSeededSampler(BaseSampler):
    """Delegates each trial to ``make_sampler(seed + slot)``, made when the trial starts; the trial in slot ``k``
    takes the parameters ``fixed[k]`` where given."""

    def __init__(self, make_sampler: Callable[[int], BaseSampler], seed: int, fixed: Sequence[dict[str, Any]] = ()):
        self.make_sampler = make_sampler
        self.seed = seed
        self.fixed = list(fixed)
        self._current = make_sampler(seed)
        self._fixed_now: dict[str, Any] | None = None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        slot = trial_slot(study, trial)
        # The slot is recorded so that later look-ups (and a retry of this trial) need not count again;
        # the worker as early as possible, so that a kill during sampling is recognised at once.
        study._storage.set_trial_user_attr(trial._trial_id, SLOT_ATTR, slot)
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, this_worker())
        self._fixed_now = self.fixed[slot] if slot < len(self.fixed) else None
        if self._fixed_now is not None:
            study._storage.set_trial_user_attr(trial._trial_id, WARM_START_ATTR, True)
        self._current = self.make_sampler(self.seed + slot)
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._fixed_now is not None:
            return {}
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._fixed_now is not None:
            return {}
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self._fixed_now is not None and param_name in self._fixed_now:
            return self._fixed_now[param_name]
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()
