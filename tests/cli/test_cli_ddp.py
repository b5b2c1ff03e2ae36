"""``dlforge train --nproc N``: data-parallel training launched through torchrun, on one
machine and as two "machines" meeting by c10d rendezvous on localhost, against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli import assert_clean_failure, invoke, only_run, write_config

# No batch norm and no dropout: with them a rank's statistics and masks depend on its share.
MODEL = {"arch": "mlp", "hidden": [16], "batch_norm": None, "dropout": 0.0}
TRAIN = {"epochs": 6, "batch_size": 16, "log_every_n_steps": 5, "early_stopping": {"monitor": "val_loss", "patience": 2}}


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "wine.yaml", {"source": "wine", "split": {"val": 0.2, "test": 0.2}}, MODEL, train=TRAIN)


def _dlforge(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-m", "dlforge.cli", *map(str, args)], env={**env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metrics(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("{")]  # rank 0 alone prints
    return json.loads(line)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("nproc2")
    runs = tmp / "runs"
    return runs, _metrics(_dlforge("train", _config(tmp), "--runs-dir", runs, "--nproc", 2, "--json"))


def test_nproc_2_trains_like_one_process_and_writes_one_run(two_processes, tmp_path):
    runs, ddp = two_processes
    single = _metrics(_dlforge("train", _config(tmp_path), "--runs-dir", tmp_path / "runs", "--json"))
    assert ddp["test_accuracy"] == single["test_accuracy"]
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], rel=1e-4)
    run = only_run(runs)
    assert (run / "report.html").is_file() and (run / "model" / "model.safetensors").is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "epoch" for r in history) >= 2


def test_two_nodes_meet_by_c10d_on_localhost(two_processes, tmp_path):
    _, ddp = two_processes
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_dlforge("train", _config(tmp_path), "--runs-dir", tmp_path / "runs", "--nproc", 1, "--nnodes", 2,
                      "--node-rank", rank, "--rdzv-endpoint", endpoint, "--json") for rank in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in nodes]
    assert [proc.returncode for proc in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    printed = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    assert printed == [ddp]  # one node printed; two ranks of one machine or two "machines" train the same
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_launch_options_are_checked_before_any_process_starts(tmp_path):
    runs = tmp_path / "runs"
    result = invoke("train", _config(tmp_path), "--runs-dir", runs, "--nproc", 1, "--nnodes", 2)
    assert_clean_failure(result, runs, "--nnodes 2 needs --rdzv-endpoint")
    result = invoke("train", _config(tmp_path), "--runs-dir", runs, "--nproc", 0)
    assert_clean_failure(result, runs, "--nproc 0")
