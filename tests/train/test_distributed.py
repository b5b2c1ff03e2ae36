"""Data-parallel pieces on the CPU with gloo: two real processes.

The reference is one process: two ranks taking every other index of the epoch's global
permutation with half the batch each, averaging their gradients, must reach the weights a
single process reaches with the whole batch, to 1e-6, after several Adam steps.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from dlforge.errors import ConfigError
from dlforge.train.batches import epoch_permutation
from dlforge.train.distributed import Distributed, per_rank_batch, rank_order, torchrun_command

N, BATCH, STEPS, SEED = 96, 16, 5, 3


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 2)).double()


def _train(dist: Distributed, batch: int) -> nn.Module:
    """STEPS Adam steps on this rank's share of epoch 0's permutation, gradients averaged."""
    x, y = _data()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    order = rank_order(epoch_permutation(N, SEED, 0), dist.rank, dist.world)
    for k in range(STEPS):
        idx = order[k * batch:(k + 1) * batch]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx].double()), y[idx]).backward()
        dist.average_gradients(list(model.parameters()))
        opt.step()
    return model


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist = Distributed.from_env()
    model = _train(dist, per_rank_batch(BATCH, world))
    agreed = {"mean": dist.all_mean(torch.tensor(float(rank))).item(), "any_rank1": dist.any(rank == 1),
              "none": dist.any(False)}
    if dist.main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "ddp.safetensors"))
        with open(os.path.join(out, "agreed.json"), "w") as f:
            json.dump(agreed, f)
    torch.distributed.barrier()  # every collective is done on both ranks
    # Leave without interpreter teardown: gloo's threads can abort ("terminate called without an
    # active exception") when one rank's exit races the other's, which fails a finished test.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_reach_the_single_process_weights(tmp_path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    single = _train(Distributed(), BATCH).state_dict()
    for name, weight in single.items():
        torch.testing.assert_close(ddp[name], weight, atol=1e-6, rtol=0)
    agreed = json.loads((tmp_path / "agreed.json").read_text())
    assert agreed == {"mean": 0.5, "any_rank1": True, "none": False}


def test_the_ranks_global_batch_is_the_single_process_batch() -> None:
    perm = epoch_permutation(50, SEED, 2)
    shards = [rank_order(perm, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 25
    for k in range(25 // 4):
        together = torch.cat([s[k * 4:(k + 1) * 4] for s in shards])
        assert sorted(together.tolist()) == sorted(perm[k * 8:(k + 1) * 8].tolist())
    odd = [rank_order(torch.arange(7), r, 2) for r in range(2)]
    assert [len(o) for o in odd] == [3, 3]  # the tail that fits no round is dropped


def test_a_world_of_one_is_the_identity_and_bad_input_is_refused(monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    one = Distributed.from_env()
    assert (one.rank, one.world, one.main, one.active) == (0, 1, True, False)
    value = torch.tensor([1.0, 2.0])
    assert one.all_sum(value) is value and one.any(torch.tensor(True))
    with pytest.raises(ConfigError, match="does not split evenly"):
        per_rank_batch(33, 2)
    with pytest.raises(ConfigError, match="outside a world"):
        rank_order(torch.arange(4), 2, 2)
    cmd = torchrun_command(["train", "c.yaml"], nproc=2, nnodes=2, node_rank=1)
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and cmd[-4:] == ["-m", "dlforge.cli", "train", "c.yaml"]
