"""Data-parallel training on the CPU with gloo: two real processes running :func:`fit`.

The reference is one process: two ranks, each taking every other index of the epoch's
global permutation with half the batch, their gradients averaged by DDP, must reach the
weights one process reaches with the whole batch, to 1e-6 (with and without gradient
accumulation), log the same epoch metrics, stop together, and leave every file to rank 0.
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
from torch.utils.data import TensorDataset

from dlforge.errors import ConfigError
from dlforge.train import Checkpoint, EarlyStopping, HistoryWriter, NanGuard, fit
from dlforge.train.batches import epoch_permutation
from dlforge.train.distributed import Distributed, per_rank_batch, rank_order, torchrun_command

SEED = 3
OPTIM = {"name": "adam", "lr": 0.05}


def _data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 2)).double()  # no dropout: its masks depend on the split


def _diverging() -> tuple[nn.Module, TensorDataset]:
    """A regression whose sample 37 has a target that overflows the squared error."""
    data = _data(64)
    y = data.tensors[0][:, 0].clone()
    y[37] = 1e300
    torch.manual_seed(1)
    return nn.Linear(5, 1).double(), TensorDataset(data.tensors[0], y[:, None])


def _scenarios(tmp: str, rank: int) -> dict[str, dict]:
    """Train every scenario in this process; ``rank`` only names the files it is given."""
    out = {}
    for name, kw in {"plain": {"batch_size": 16, "epochs": 4}, "accumulate": {"batch_size": 8, "epochs": 2, "accumulate": 2}}.items():
        model = _model()
        train = _data(96) if name == "plain" else _data(80)  # 80 / 8 = 10 batches: groups of 2, per rank 5 of 4
        callbacks = [EarlyStopping(monitor="val_loss", patience=1), NanGuard(),
                     Checkpoint(os.path.join(tmp, f"ckpt-{name}-{rank}")), HistoryWriter(os.path.join(tmp, f"hist-{name}-{rank}.jsonl"))]
        result = fit(model, train, _data(41, seed=1), optim=OPTIM, seed=SEED, device="cpu", callbacks=callbacks,
                     log_every_n_steps=2, **kw)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, f"{name}-{rank}.safetensors"))
        out[name] = {"epochs": result.epochs, "stop_reason": result.stop_reason, "steps": result.steps}
    model, data = _diverging()
    result = fit(model, data, epochs=3, batch_size=8, optim="sgd", seed=SEED, device="cpu", callbacks=[NanGuard()])
    out["diverging"] = {"stop_reason": result.stop_reason, "step": (result.nan_report or {}).get("step"), "steps": result.steps}
    return out


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist = Distributed.from_env()
    results = _scenarios(out, rank)
    results["agreed"] = {"mean": dist.all_mean(torch.tensor(float(rank))).item(), "any_rank1": dist.any(rank == 1),
                         "none": dist.any(False), "text": dist.broadcast_text("runs/a-1" if dist.main else None)}
    with open(os.path.join(out, f"results-{rank}.json"), "w") as f:
        json.dump(results, f)
    torch.distributed.barrier()  # every collective is done on both ranks
    # Leave without interpreter teardown: gloo's threads can abort ("terminate called without an
    # active exception") when one rank's exit races the other's, which fails a finished test.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return out


def test_two_gloo_ranks_reach_the_single_process_weights(two_ranks, tmp_path, monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    single = _scenarios(str(tmp_path), 0)
    ranks = [json.loads(open(os.path.join(two_ranks, f"results-{r}.json")).read()) for r in range(2)]
    for name in ("plain", "accumulate"):
        reference = load_file(str(tmp_path / f"{name}-0.safetensors"))
        for rank in range(2):
            ddp = load_file(os.path.join(two_ranks, f"{name}-{rank}.safetensors"))
            for key, weight in reference.items():
                torch.testing.assert_close(ddp[key], weight, atol=1e-6, rtol=0, msg=f"{name} rank {rank} {key}")
        assert ranks[0][name]["steps"] == ranks[1][name]["steps"] == single[name]["steps"] > 4
        assert ranks[0][name]["stop_reason"] == ranks[1][name]["stop_reason"] == single[name]["stop_reason"]
        for ours, theirs in zip(ranks[0][name]["epochs"], single[name]["epochs"], strict=True):
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (name, key)
        assert ranks[0][name]["epochs"] == ranks[1][name]["epochs"] or all(  # the same numbers on both ranks
            a[k] == b[k] for a, b in zip(ranks[0][name]["epochs"], ranks[1][name]["epochs"]) for k in a if k != "time")


def test_rank_zero_alone_writes(two_ranks) -> None:
    for name in ("plain", "accumulate"):
        assert any(os.scandir(os.path.join(two_ranks, f"ckpt-{name}-0")))
        history = open(os.path.join(two_ranks, f"hist-{name}-0.jsonl")).read().splitlines()
        assert sum(json.loads(line)["type"] == "epoch" for line in history) >= 2
        assert not os.path.exists(os.path.join(two_ranks, f"ckpt-{name}-1"))
        assert not os.path.exists(os.path.join(two_ranks, f"hist-{name}-1.jsonl"))


def test_the_ranks_stop_together_on_a_non_finite_step(two_ranks, tmp_path, monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ranks = [json.loads(open(os.path.join(two_ranks, f"results-{r}.json")).read())["diverging"] for r in range(2)]
    model, data = _diverging()
    single = fit(model, data, epochs=3, batch_size=8, optim="sgd", seed=SEED, device="cpu", callbacks=[NanGuard()])
    assert ranks[0] == ranks[1] == {"stop_reason": "non_finite", "step": single.nan_report["step"], "steps": single.steps}


def test_collectives_agree(two_ranks) -> None:
    for rank in range(2):
        agreed = json.loads(open(os.path.join(two_ranks, f"results-{rank}.json")).read())["agreed"]
        assert agreed == {"mean": 0.5, "any_rank1": True, "none": False, "text": "runs/a-1"}


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
    cmd = torchrun_command(["train", "c.yaml"], nproc=2, nnodes=2, node_rank=1, endpoint="h:29500")
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and cmd[-4:] == ["-m", "dlforge.cli", "train", "c.yaml"]
    assert "--standalone" in torchrun_command(["train", "c.yaml"], nproc=2)
    with pytest.raises(ConfigError, match="needs --rdzv-endpoint"):
        torchrun_command(["train", "c.yaml"], nproc=1, nnodes=2)
    with pytest.raises(ConfigError, match="outside 2 node"):
        torchrun_command(["train", "c.yaml"], nproc=1, nnodes=2, node_rank=2, endpoint="h:1")


def test_end_worker_runs_the_exit_handlers_flushes_and_exits_with_its_code() -> None:
    """A finished torchrun worker leaves through end_worker: what a normal exit would run and
    print still happens, then the process ends with the code given, skipping the teardown."""
    import subprocess
    import sys

    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('exit handler ran'))\n"
              "from dlforge.train.distributed import end_worker, in_torchrun_world\n"
              "print('world', in_torchrun_world(), end='; ')\n"
              "sys.stderr.write('unflushed')\n"
              "end_worker(3)\n"
              "print('never')\n")
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3
    assert done.stdout == "world True; exit handler ran\n" and done.stderr == "unflushed"
    env["WORLD_SIZE"] = "1"  # a world of one is not a torchrun world to end early
    alone = subprocess.run([sys.executable, "-c", "from dlforge.train.distributed import in_torchrun_world as w; "
                            "print(w())"], capture_output=True, text=True, env=env, timeout=120)
    assert alone.stdout.strip() == "False"
