"""An ensemble as one torch module, for the whole-model exports (:mod:`automl_tl.results.export`).

Every member runs on the same prepared inputs, those of the first member's first model: a member is one model,
or a concatenated-feature probe whose parts' logits (each its body and its block of the linear layer on the
normalised embeddings) are summed. Each member's probabilities are the softmax of its logits divided by its own
temperature; the module returns the logarithm of their weighted mean (clipped as
:func:`~automl_tl.results.calibration.log_probabilities` clips), so that, as for one model, the softmax of its
output divided by the ensemble's temperature is what :class:`~automl_tl.results.ensemble.EnsemblePredictor`
predicts.

Models whose images are normalised with another mean and std than the first's get theirs converted inside
the graph; any other difference in how inputs are prepared (image size, interpolation, tokenizer, sample
rate, ...) is refused, since one input tensor cannot be both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from automl_tl.errors import AutomlTLError
from automl_tl.results.calibration import PROBABILITY_FLOOR
from automl_tl.results.concatenated import CONCATENATED_FEATURES, ConcatenatedPredictor
from automl_tl.results.ensemble import MODEL_MEMBER, EnsemblePredictor
from automl_tl.results.model_io import Predictor

#: preprocessing fields that need not agree between the members: the image normalisation (converted inside the
#: graph) and a training-time augmentation
_CONVERTED_FIELDS = ("mean", "std")
_TRAINING_ONLY_FIELDS = ("hflip",)
#: what the ensemble's output is, for export.json and its README
OUTPUT_MEANING = (
    "the log of the members' weighted mean probabilities (each member's softmax of its logits divided by its "
    "own temperature)"
)
OUTPUT_DESCRIPTION = f"{OUTPUT_MEANING}, one per class in the order of 'classes'; softmax gives probabilities"


def member_models(member: Predictor) -> list[Predictor]:
    """The single models whose logits make ``member``'s: a concatenated-feature probe's parts, else itself."""
    return list(member.parts) if isinstance(member, ConcatenatedPredictor) else [member]


def first_model(ensemble: EnsemblePredictor) -> Predictor:
    """The model whose inputs the exported graph takes (the first member's first model)."""
    return member_models(ensemble.members[0])[0]


def describe_members(ensemble: EnsemblePredictor) -> list[dict[str, Any]]:
    """What export.json lists of each member: its folder, kind, backbones, weight and temperature."""
    described = []
    for listed, weight, member in zip(ensemble.config["members"], ensemble.weights, ensemble.members):
        kind = listed.get("kind", MODEL_MEMBER)
        described.append(
            {
                "folder": listed["folder"],
                "kind": kind,
                "backbones": [model.config["backbone"]["name"] for model in member_models(member)],
                "weight": float(weight),
                "temperature": member.temperature,
            }
        )
    return described


def check_shared_inputs(ensemble: EnsemblePredictor, directory: str) -> None:
    """Refuse, in one line naming the two members and what differs, an ensemble whose models cannot all read
    the first one's input tensors."""
    reference = first_model(ensemble)
    first_name = _model_name(ensemble, 0, 0, reference)
    expected = _compared(reference.config["preprocessing"])
    for index, member in enumerate(ensemble.members):
        for position, model in enumerate(member_models(member)):
            found = _compared(model.config["preprocessing"])
            differs = sorted(key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key))
            if differs:
                key = differs[0]
                raise AutomlTLError(
                    f"cannot export the ensemble {directory} as one graph: {first_name} and "
                    f"{_model_name(ensemble, index, position, model)} prepare inputs differently "
                    f"({key} {expected.get(key)} and {found.get(key)}), so no one input tensor suits both; "
                    f"export one of its single-model members on its own (automl-tl export {directory}/member_N "
                    "--format FORMAT)"
                )


def _compared(preprocessing: dict[str, Any]) -> dict[str, Any]:
    ignored = (*_CONVERTED_FIELDS, *_TRAINING_ONLY_FIELDS) if preprocessing.get("kind") == "image" else ()
    return {key: value for key, value in preprocessing.items() if key not in ignored}


def _model_name(ensemble: EnsemblePredictor, index: int, position: int, model: Predictor) -> str:
    listed = ensemble.config["members"][index]
    where = listed["folder"] + (f"/part_{position}" if listed.get("kind") == CONCATENATED_FEATURES else "")
    return f"{where} ({model.config['backbone']['name']})"


class _Renormalised(nn.Module):
    """A model that takes images normalised with another mean and std than its own: ``x * scale + shift`` per
    channel turns ``(pixels - mean_in) / std_in`` into ``(pixels - mean) / std``."""

    def __init__(self, model: nn.Module, given: dict[str, Any], own: dict[str, Any]):
        super().__init__()
        mean_in, std_in = (torch.tensor(given[key], dtype=torch.float64) for key in _CONVERTED_FIELDS)
        mean, std = (torch.tensor(own[key], dtype=torch.float64) for key in _CONVERTED_FIELDS)
        self.model = model
        self.register_buffer("scale", (std_in / std).float().view(1, -1, 1, 1))
        self.register_buffer("shift", ((mean_in - mean) / std).float().view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images * self.scale + self.shift)


class _SummedLogits(nn.Module):
    """A member's logits: the sum of its models' (one model's own, or a concatenated probe's parts')."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, inputs: Any) -> torch.Tensor:
        total = self.models[0](inputs)
        for model in self.models[1:]:
            total = total + model(inputs)
        return total


class EnsembleModule(nn.Module):
    """The ensemble's members on the same inputs: log of the weighted mean of softmax(logits / temperature)."""

    def __init__(self, members: list[nn.Module], weights: list[float], temperatures: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))

    def forward(self, inputs: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        for index, member in enumerate(self.members):
            weighted = self.weights[index] * torch.softmax(member(inputs) / self.temperatures[index], dim=1)
            total = weighted if total is None else total + weighted
        return torch.log(total.clamp(PROBABILITY_FLOOR, 1.0))


def ensemble_module(ensemble: EnsemblePredictor) -> EnsembleModule:
    """The ensemble as one module taking the first model's prepared inputs (check them first with
    :func:`check_shared_inputs`)."""
    given = first_model(ensemble).config["preprocessing"]
    members = []
    for member in ensemble.members:
        models: list[nn.Module] = []
        for model in member_models(member):
            own = model.config["preprocessing"]
            converted = own.get("kind") == "image" and any(own[k] != given[k] for k in _CONVERTED_FIELDS)
            models.append(_Renormalised(model.model, given, own) if converted else model.model)
        members.append(_SummedLogits(models))
    weights = [float(weight) for weight in ensemble.weights]
    return EnsembleModule(members, weights, [float(member.temperature) for member in ensemble.members]).eval()
