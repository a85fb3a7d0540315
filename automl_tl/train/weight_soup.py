"""A greedy weight soup of one fine-tuning trial's best epochs (Wortsman et al., 2022, "Model soups").

The epoch loop keeps CPU copies of the tensors that change during training for its :data:`SOUP_CHECKPOINTS`
best epochs (:class:`Checkpoints`). Once the epochs are over, :func:`greedy_soup` starts from the best one
and averages in each next-best one uniformly, keeping it only if the averaged weights validate no worse
(the score, then the lower validation loss). Floating tensors are averaged, batch norms' running statistics
among them; integer ones (``num_batches_tracked``) keep the best checkpoint's value.

This module knows nothing of the epoch loop: it is handed the checkpoints, a function that validates a state
(or answers None when the deadline leaves no time for it), and the comparison key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn

#: epochs kept for the soup: its first ingredient and two candidates (AutoGluon MultiModal averages its best 3)
SOUP_CHECKPOINTS = 3
#: no soup above this many elements in the changing tensors: the checkpoints cost SOUP_CHECKPOINTS copies of them
#: in float32 on the CPU, 3 x 4 bytes x 30M = 360 MB at most beside the model (a ViT-B/16 fully fine-tuned, 86M,
#: is not souped; its last groups or a ResNet-50, 25M, are)
SOUP_MAX_ELEMENTS = 30_000_000

#: ``TrialResult.extra["weight_soup"]["reason"]`` when no soup was kept
NOT_ENOUGH_CHECKPOINTS = "fewer than 2 validated epochs"
TOO_LARGE = f"the trained tensors exceed {SOUP_MAX_ELEMENTS:,} elements"
NO_TIME = "the deadline left no time to validate a soup"
NOT_BETTER = "no average of the best epochs validated better than the best epoch alone"
PRUNED = "the trial was stopped by its callback (pruned)"

Record = TypeVar("Record")
State = dict[str, torch.Tensor]


def changing_state_keys(module: nn.Module) -> list[str] | None:
    """The state-dict keys that training can change: the trainable parameters and every buffer (running
    statistics; buffers are small). None when they hold more than :data:`SOUP_MAX_ELEMENTS` elements."""
    trained = {name for name, parameter in module.named_parameters() if parameter.requires_grad}
    buffers = {name for name, _ in module.named_buffers()}
    state = module.state_dict()
    keys = [key for key in state if key in trained or key in buffers]
    if sum(state[key].numel() for key in keys) > SOUP_MAX_ELEMENTS:
        return None
    return keys


@dataclass
class Checkpoints(Generic[Record]):
    """The :data:`SOUP_CHECKPOINTS` best epochs so far, best first: each one's record and a CPU copy of ``keys``."""

    keys: Sequence[str]
    rank: Callable[[Record], Any]  # higher is better
    kept: list[tuple[Record, State]] = field(default_factory=list)

    def offer(self, record: Record, module: nn.Module) -> None:
        """Keep ``module``'s current state if ``record`` ranks among the best epochs so far."""
        if len(self.kept) == SOUP_CHECKPOINTS and self.rank(record) <= self.rank(self.kept[-1][0]):
            return
        state = module.state_dict()
        copy = {key: state[key].detach().to("cpu", copy=True) for key in self.keys}
        self.kept.append((record, copy))
        self.kept.sort(key=lambda kept: self.rank(kept[0]), reverse=True)
        del self.kept[SOUP_CHECKPOINTS:]


def average_states(states: Sequence[State]) -> State:
    """The uniform average of ``states`` (same keys): floating tensors averaged, the others the first state's."""
    first = states[0]
    return {
        key: torch.stack([state[key] for state in states]).mean(dim=0) if tensor.is_floating_point() else tensor
        for key, tensor in first.items()
    }


@dataclass
class Soup(Generic[Record]):
    """What :func:`greedy_soup` found: the ingredients' records (best first), the averaged state and its record
    (None with fewer than two ingredients: the best epoch alone stays), how many averages were validated, and why
    no soup was kept or why it stopped early."""

    ingredients: list[Record]
    state: State | None
    record: Record | None
    validated: int = 0
    reason: str | None = None


def greedy_soup(
    checkpoints: Checkpoints[Record],
    validate: Callable[[State], Record | None],
) -> Soup[Record]:
    """Greedy soup over ``checkpoints``: from the best one, each next-best is averaged in and kept if
    ``validate`` (the averaged state -> its record, or None: no time left to validate it) ranks the average no
    lower than the soup without it. Stops at the first None."""
    if len(checkpoints.kept) < 2:
        return Soup([], None, None, reason=NOT_ENOUGH_CHECKPOINTS)
    best_record, best_state = checkpoints.kept[0]
    ingredients, states, soup_record = [best_record], [best_state], best_record
    reason, validated = None, 0
    for record, state in checkpoints.kept[1:]:
        candidate = validate(average_states([*states, state]))
        if candidate is None:
            reason = NO_TIME
            break
        validated += 1
        if checkpoints.rank(candidate) >= checkpoints.rank(soup_record):
            ingredients.append(record)
            states.append(state)
            soup_record = candidate
    if len(ingredients) < 2:
        return Soup(ingredients, None, None, validated, reason or NOT_BETTER)
    return Soup(ingredients, average_states(states), soup_record, validated, reason)
