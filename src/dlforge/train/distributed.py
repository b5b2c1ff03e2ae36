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
single-process step: the basis of the "same weights after k steps" check. :func:`fit`
wraps the model in DistributedDataParallel (:meth:`Distributed.wrap`), which averages the
gradients during ``backward``; ``grad_sync`` turns that off on accumulation batches.

Example:
    >>> perm = torch.arange(8)
    >>> rank_order(perm, rank=1, world=2).tolist()
    [1, 3, 5, 7]
    >>> Distributed().all_mean(torch.tensor(3.0)).item()  # a world of one: the identity
    3.0
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """(world, *row.shape): every rank's ``row``, in rank order (``row[None]`` alone)."""
        if not self.active:
            return row[None]
        out = [torch.empty_like(row) for _ in range(self.world)]
        dist.all_gather(out, row.contiguous())
        return torch.stack(out)

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (the run directory rank 0 created).

        Sent as a length then UTF-8 bytes in tensors: nothing is pickled."""
        if not self.active:
            return text or ""
        data = (text or "").encode() if self.main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.main and data else torch.zeros(int(size), dtype=torch.uint8)
        if int(size):
            dist.broadcast(buf, src=0)
        return bytes(buf.tolist()).decode()

    def close(self) -> None:
        """Wait for every rank, then leave the process group (the end of a run)."""
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` inside :class:`~torch.nn.parallel.DistributedDataParallel` when the
        world is larger than one (its gradients are then averaged over the ranks during
        ``backward``); ``model`` itself otherwise. Rank 0's weights are broadcast to all."""
        if not self.active:
            return model
        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def end_worker(code: int = 0) -> None:
    """End this torchrun worker process now, its run finished: Python's exit handlers run and
    the standard streams are flushed, then ``os._exit(code)`` skips the interpreter's teardown.

    After ``destroy_process_group`` that teardown sometimes aborted a rank ("terminate called
    without an active exception", SIGABRT: a C++ thread still joinable when static objects are
    destroyed; about one run in fifteen on 2 cores, in CI and in the README's ``--nproc 2`` run),
    which torchrun reports as a failed run although every file was written. Only called in a
    worker of a world larger than one, after the run has closed its files.
    """
    import atexit
    import logging

    atexit._run_exitfuncs()  # what a normal exit would run: loggers, trackers' last flush
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to flush
            pass
    os._exit(code)


def in_torchrun_world() -> bool:
    """Whether this process is one worker of a torchrun world larger than one."""
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


@contextmanager
def grad_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Around a forward pass: with ``sync`` False, a DDP ``module`` skips the gradient
    all-reduce of the backward that follows (``no_sync``: gradient accumulation averages
    once, on the batch that steps). Any other module: nothing happens."""
    with module.no_sync() if isinstance(module, DistributedDataParallel) and not sync else nullcontext():
        yield


def torchrun_command(argv: Sequence[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     endpoint: str | None = None, run_id: str = "dlforge") -> list[str]:
    """The command line that runs ``dlforge`` ``argv`` under torchrun (through :mod:`dlforge.train.launch`)
    on ``nproc`` processes per node. One node rendezvouses on a free local port
    (``--standalone``); ``nnodes`` nodes meet at ``endpoint`` (c10d: ``host:port`` of any one
    of them, the same on every node, each with its own ``node_rank``).

    Example:
        >>> torchrun_command(["train", "c.yaml"], nproc=2)[1:5]
        ['-m', 'dlforge.train.launch', '--standalone', '--nproc-per-node=2']
    """
    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"--nproc {nproc} and --nnodes {nnodes} must be at least 1", hint="e.g. --nproc 2")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank {node_rank} is outside {nnodes} node(s)", hint=f"use 0 to {nnodes - 1}")
    launch = [sys.executable, "-m", "dlforge.train.launch"]  # torchrun, quieter (see that module)
    if nnodes == 1 and endpoint is None:
        launch += ["--standalone", f"--nproc-per-node={nproc}"]
    elif endpoint is None:
        raise ConfigError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, the same on every node",
                          hint="e.g. --rdzv-endpoint node0.example:29400 (any free port on one of the machines)")
    else:
        launch += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", f"--node-rank={node_rank}"]
    return [*launch, "-m", "dlforge.cli", *argv]


__all__ = ["Distributed", "grad_sync", "per_rank_batch", "rank_order", "torchrun_command"]

