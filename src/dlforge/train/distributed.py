"""Data-parallel training pieces: who this process is, its share of the data, and the
collective decisions ranks must take together.

A run started by ``torchrun`` (or ``dlforge train --nproc N``, which launches torchrun)
sees ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR`` in its environment;
:meth:`Distributed.from_env` reads them and, with more than one process, joins the
process group (gloo on the CPU, NCCL on GPUs). A single process is a world of one, and
every helper here is then the identity, so the loop has one code path.

Data order stays a pure function, now of (seed, epoch, rank, world size):
:func:`rank_order` gives rank ``r`` every ``world``-th index of the epoch's global
permutation, starting at ``r``. With a per-rank batch of ``B / world``, global batch ``k``
of the ranks together holds exactly the samples global batch ``k`` of one process with
batch ``B`` holds (``perm[k B : (k + 1) B]``), so averaging the ranks' gradients gives the
single-process step: the basis of the "same weights after k steps" check.

Example:
    >>> perm = torch.arange(8)
    >>> rank_order(perm, rank=1, world=2).tolist()
    [1, 3, 5, 7]
    >>> Distributed().all_mean(torch.tensor(3.0)).item()  # a world of one: the identity
    3.0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dlforge.errors import ConfigError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def rank_order(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's global ``order``: indices ``rank, rank + world, ...``.

    The tail that does not fill a whole round of ``world`` is dropped, so every rank takes the
    same number of steps (collectives would otherwise wait for a rank that has finished).
    """
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside a world of {world}", hint="check RANK and WORLD_SIZE")
    usable = len(order) - len(order) % world
    return order[rank:usable:world]


def per_rank_batch(batch_size: int, world: int) -> int:
    """The per-rank batch that keeps the global batch ``batch_size``; refuses a split that
    is not whole (the single-process equivalence needs equal shares).

    Example:
        >>> per_rank_batch(64, 2)
        32
    """
    if batch_size % world:
        raise ConfigError(f"train.batch_size {batch_size} does not split evenly over {world} processes",
                          hint=f"use a multiple of {world}, e.g. {batch_size - batch_size % world or world}")
    return batch_size // world


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world`` processes (``local_rank`` on its
    machine). ``main`` is rank 0: the one that writes history, checkpoints and artifacts."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: torch.device | None = None) -> Distributed:
        """Read torchrun's variables and join the process group (gloo on the CPU, NCCL for CUDA);
        a world of one when they are absent."""
        if not all(k in os.environ for k in TORCHRUN_ENV):
            return cls()
        rank, world, local = (int(os.environ[k]) for k in TORCHRUN_ENV)
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        return cls(rank=rank, world=world, local_rank=local)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (a new tensor; the identity in a world of one)."""
        if not self.active:
            return value
        out = value.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over the ranks (epoch losses, metrics)."""
        return self.all_sum(value) / self.world if self.active else value

    def any(self, flag: bool | torch.Tensor) -> bool:
        """True on every rank when it is true on any: stop early, skip a non-finite step."""
        if not self.active:
            return bool(flag)
        return bool(self.all_sum(torch.as_tensor(flag, dtype=torch.float32).reshape(1)).item() > 0)

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Average every gradient over the ranks in place (what DistributedDataParallel's
        hooks do, as one explicit call for a readable loop)."""
        if not self.active:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world


def torchrun_command(argv: Sequence[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     endpoint: str = "localhost:29400", run_id: str = "dlforge") -> list[str]:
    """The ``torchrun`` command line that runs ``dlforge`` ``argv`` on ``nproc`` processes per
    node, ``nnodes`` nodes meeting at ``endpoint`` (c10d rendezvous).

    Example:
        >>> torchrun_command(["train", "c.yaml"], nproc=2)[:4]
        ['torchrun', '--nnodes=1', '--nproc-per-node=2', '--rdzv-backend=c10d']
    """
    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"--nproc {nproc} and --nnodes {nnodes} must be at least 1", hint="e.g. --nproc 2")
    return ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", f"--node-rank={node_rank}",
            "-m", "dlforge.cli", *argv]


__all__ = ["Distributed", "per_rank_batch", "rank_order", "torchrun_command"]
