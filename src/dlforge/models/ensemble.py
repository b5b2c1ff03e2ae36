"""An ensemble: k member models whose predictions are combined into one.

Classification members are combined by averaging their softmax probabilities
(``mode="average"``) or by majority vote (``mode="vote"``); either way the ensemble
returns LOG-probabilities (B, C), so argmax and softmax downstream behave as for any
classifier, and cross-entropy on the output is the negative log-likelihood of the
combined probabilities. Regression members are averaged. The members are dlforge models
described by their specs, so an ensemble saves and loads as one artifact.

Example:
    >>> import torch
    >>> from dlforge.models import build
    >>> ens = build({"arch": "ensemble", "members": [{"arch": "mlp", "hidden": [8]},
    ...                                              {"arch": "mlp", "hidden": [16]}]},
    ...             input_shape=(4,), num_outputs=3)
    >>> probs = ens(torch.zeros(2, 4)).exp()  # (2, 3): log-probabilities back to probabilities
    >>> torch.allclose(probs.sum(dim=1), torch.ones(2))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from dlforge.errors import ConfigError
from dlforge.models._config import check_choice, check_positive, check_sizes, check_types, make_config

MODES = ("average", "vote")
TASKS = ("classification", "regression")
VOTE_EPS = 1e-6  # keeps log(vote share) finite for classes no member voted for
TIE_BREAK = 1e-3  # average probability's share in a vote score: breaks ties, never outvotes


@dataclass
class EnsembleConfig:
    input_shape: tuple[int, ...]
    num_outputs: int
    members: tuple[dict, ...]  # member specs, e.g. ({"arch": "mlp", "hidden": [32]}, ...)
    mode: str = "average"  # average (mean probability) | vote (majority of argmaxes)
    task: str = "classification"  # regression members are averaged as raw outputs

    def __post_init__(self) -> None:
        check_types(self)
        check_sizes("input_shape", self.input_shape)
        check_positive("num_outputs", self.num_outputs)
        if not self.members:
            raise ConfigError("model.members is empty", hint="list at least one member spec, e.g. [{arch: mlp}]")
        check_choice("mode", self.mode, MODES)
        check_choice("task", self.task, TASKS)
        if self.task == "regression" and self.mode == "vote":
            raise ConfigError("model.mode vote needs classification members", hint="use mode: average for regression")


class Ensemble(nn.Module):
    """Run every member on the same input and combine their outputs.

    ``self.members`` is an ``nn.ModuleList``; member ``i`` is ``model.members[i]``.
    """

    ARCH = "ensemble"

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        from dlforge.models import build, spec_of  # the package imports this module: build lazily

        self.members = nn.ModuleList(
            build(spec, input_shape=config.input_shape, num_outputs=config.num_outputs) for spec in config.members
        )
        # Store complete member specs, so spec_of(ensemble) rebuilds exactly these members.
        self.config = replace(config, members=tuple(spec_of(m) for m in self.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([member(x) for member in self.members])  # (K, B, C)
        if self.config.task == "regression":
            return outs.mean(dim=0)  # (B, C)
        log_probs = outs.float().log_softmax(dim=-1)  # (K, B, C)
        # log of the mean probability, without leaving log space
        mean_log_prob = log_probs.logsumexp(dim=0) - math.log(len(self.members))  # (B, C)
        if self.config.mode == "average":
            return mean_log_prob
        votes = nn.functional.one_hot(log_probs.argmax(dim=-1), outs.shape[-1]).sum(dim=0)  # (B, C)
        scores = votes + TIE_BREAK * mean_log_prob.exp()  # vote counts differ by >= 1, so ties break only
        shares = scores / scores.sum(dim=1, keepdim=True)  # (B, C)
        return (shares + VOTE_EPS).log()

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's own output, stacked: (K, B, C). Useful to score the members.

        Example:
            >>> ens = build_ensemble((4,), 3, [{"arch": "mlp", "hidden": [8]}] * 2)
            >>> ens.member_outputs(torch.zeros(5, 4)).shape
            torch.Size([2, 5, 3])
        """
        return torch.stack([member(x) for member in self.members])


def build_ensemble(input_shape: Sequence[int], num_outputs: int, members: Sequence[dict], **options: Any) -> Ensemble:
    """Build an Ensemble from explicit arguments; ``options`` are ``mode`` and ``task``.

    Example:
        >>> ens = build_ensemble((4,), 2, [{"arch": "mlp", "hidden": [8]}] * 3, mode="vote")
        >>> len(ens.members), ens.config.mode
        (3, 'vote')
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, "members": tuple(members), **options}
    return Ensemble(make_config(EnsembleConfig, Ensemble.ARCH, values))


def from_models(models: Sequence[nn.Module], mode: str = "average", task: str = "classification") -> Ensemble:
    """An Ensemble holding copies of trained dlforge ``models`` (weights included).

    The members must be dlforge models (built with :func:`dlforge.models.build`) with the
    same input shape and outputs; the ensemble sits on the first model's device.

    Example:
        >>> from dlforge.models import build
        >>> models = [build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=2)
        ...           for _ in range(3)]
        >>> ens = from_models(models)
        >>> torch.equal(ens.members[2].head.weight, models[2].head.weight)
        True
    """
    from dlforge.models import spec_of

    models = list(models)
    if not models:
        raise ConfigError("an ensemble needs at least one model", hint="pass a non-empty list of trained models")
    specs = [spec_of(m) for m in models]  # a ConfigError for anything that is not a dlforge model
    first = specs[0]
    for i, spec in enumerate(specs[1:], start=1):
        if (spec["input_shape"], spec["num_outputs"]) != (first["input_shape"], first["num_outputs"]):
            raise ConfigError(f"model {i} takes {spec['input_shape']} -> {spec['num_outputs']} outputs, model 0 "
                              f"{first['input_shape']} -> {first['num_outputs']}",
                              hint="ensemble models trained on the same data and task")
    ensemble = build_ensemble(first["input_shape"], first["num_outputs"], specs, mode=mode, task=task)
    for member, model in zip(ensemble.members, models):
        member.load_state_dict(model.state_dict())
    device = next(models[0].parameters(), torch.empty(0)).device
    return ensemble.to(device).train(models[0].training)


__all__ = ["Ensemble", "EnsembleConfig", "build_ensemble", "from_models"]
