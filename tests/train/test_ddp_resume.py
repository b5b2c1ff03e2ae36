"""Resume of a data-parallel run: two gloo ranks under torchrun, killed with SIGKILL and
resumed, end bit-identical to two ranks never stopped; resuming on another number of
processes is refused unless asked for (``reshard``), and then noted in the history."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("resume_script.py")


def _launch(nproc: int, *args: str) -> subprocess.Popen:
    """resume_script.py on ``nproc`` processes (torchrun for more than one), in its own session."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [*(launcher if nproc > 1 else [sys.executable]), str(SCRIPT), *args]
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, out


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_ddp_sigkill_then_resume_is_bit_identical_and_another_world_is_explicit(tmp_path):
    rc, out = _finish(_launch(2, str(tmp_path / "a"), str(tmp_path / "a.safetensors")))
    assert rc == 0, out

    run_dir = tmp_path / "b"
    victim = _launch(2, str(run_dir), str(tmp_path / "b.safetensors"), "--sleep", "0.05")
    deadline = time.time() + 120
    while time.time() < deadline:  # 42 steps in all; kill the whole group once step 12 is saved
        steps = [int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.safetensors")]
        if steps and max(steps) >= 12:
            break
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (tmp_path / "b.safetensors").exists(), "the run finished before it was killed"
    other = tmp_path / "c"
    shutil.copytree(run_dir, other)

    rc, out = _finish(_launch(1, str(other), str(tmp_path / "c.safetensors"), "--resume"))
    assert rc != 0 and "written by 2 process(es) and this run has 1" in out and "--reshard" in out

    rc, out = _finish(_launch(2, str(run_dir), str(tmp_path / "b.safetensors"), "--resume"))
    assert rc == 0, out
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["epoch"] for r in _history(run_dir) if r["type"] == "epoch"] == list(range(6))

    rc, out = _finish(_launch(1, str(other), str(tmp_path / "c.safetensors"), "--resume", "--reshard"))
    assert rc == 0, out
    history = _history(other)
    notes = [r for r in history if r["type"] == "note"]
    assert len(notes) == 1 and notes[0]["event"] == "resharded" and (notes[0]["from_world"], notes[0]["to_world"]) == (2, 1)
    assert [r["epoch"] for r in history if r["type"] == "epoch"] == list(range(6))
    assert load_file(tmp_path / "c.safetensors").keys() == a.keys()
