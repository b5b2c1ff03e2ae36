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
from dataclasses import dataclass

import torch
from torch import nn

from dlforge.errors import ConfigError
from dlforge.models._config import check_choice, check_positive, check_sizes, check_types

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

    def __init__(self, config: EnsembleConfig, members: Sequence[nn.Module]) -> None:
        """``members`` are built by :func:`dlforge.models.build` from ``config.members`` (the
        complete specs), so ``spec_of(ensemble)`` rebuilds exactly these members."""
        super().__init__()
        if len(members) != len(config.members):
            raise ConfigError(f"the ensemble has {len(config.members)} member specs but {len(members)} models",
                              hint="build ensembles with dlforge.models.build or build_ensemble")
        self.members = nn.ModuleList(members)
        self.config = config

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
            >>> from dlforge.models import build_ensemble
            >>> ens = build_ensemble((4,), 3, [{"arch": "mlp", "hidden": [8]}] * 2)
            >>> ens.member_outputs(torch.zeros(5, 4)).shape
            torch.Size([2, 5, 3])
        """
        return torch.stack([member(x) for member in self.members])


__all__ = ["MODES", "Ensemble", "EnsembleConfig"]
