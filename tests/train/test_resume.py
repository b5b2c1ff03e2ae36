"""Resume: a run killed with SIGKILL and resumed ends bit-identical to one never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dlforge.train import Callback, Checkpoint, HistoryWriter, fit

from .conftest import make_data, make_model

SCRIPT = Path(__file__).with_name("resume_script.py")


def _run(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, **kw)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    straight = _run(str(tmp_path / "a"), str(tmp_path / "a.safetensors"))
    assert straight.wait(timeout=120) == 0

    run_dir = tmp_path / "b"
    victim = _run(str(run_dir), str(tmp_path / "b.safetensors"), "--sleep", "0.05")
    deadline = time.time() + 120
    # 42 steps in all; kill once a mid-run checkpoint (step 12 or later) exists
    while time.time() < deadline:
        steps = [int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.safetensors")]
        if steps and max(steps) >= 12:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b.safetensors").exists(), "the run finished before it was killed"

    resumed = _run(str(run_dir), str(tmp_path / "b.safetensors"), "--resume")
    assert resumed.wait(timeout=120) == 0
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history if r["type"] == "epoch"] == list(range(6))


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise Crash


def test_resume_mid_epoch_with_accumulation_in_process(tmp_path):
    data = make_data(n=100)

    def run(callbacks, resume=None, model=None):
        model = model or make_model(dropout=0.3)
        result = fit(model, data, data, epochs=4, batch_size=8, accumulate=2, seed=2, device="cpu",
                     optim={"name": "momentum", "lr": 0.05, "schedule": {"name": "onecycle"}},
                     callbacks=callbacks, resume=resume)
        return model, result

    ref_model, ref_result = run([])
    ckpt = Checkpoint(tmp_path / "checkpoints", every_n_steps=5)
    try:
        run([HistoryWriter(tmp_path / "history.jsonl"), ckpt, CrashAt(12)])
    except Crash:
        pass
    # the newest checkpoint is at step 10, in the middle of epoch 1 (7 steps per epoch)
    model, result = run([HistoryWriter(tmp_path / "history.jsonl"), Checkpoint(tmp_path / "checkpoints", every_n_steps=5)],
                        resume=tmp_path)
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in result.epochs] == [r["train_loss"] for r in ref_result.epochs]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    try:
        fit(make_model(), make_data(), epochs=1, resume=tmp_path, device="cpu")
    except ValueError as err:
        assert "no checkpoint" in str(err)
    else:
        raise AssertionError("expected an error")
