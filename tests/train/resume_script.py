"""Train a small dropout MLP with frequent checkpoints; used by test_resume.py.

usage: python resume_script.py RUN_DIR OUT_FILE [--resume [--reshard]] [--sleep SECONDS]

Started by torchrun (``python -m torch.distributed.run --nproc-per-node 2 resume_script.py ...``)
it trains data-parallel; rank 0 writes OUT_FILE.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.train import Callback, Checkpoint, EarlyStopping, HistoryWriter, fit
from dlforge.train.distributed import Distributed, end_worker


class Sleep(Callback):
    """Slow each step down so the parent can kill the process mid-training."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, state):
        time.sleep(self.seconds)


def main() -> None:
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    resume = "--resume" in sys.argv
    sleep = float(sys.argv[sys.argv.index("--sleep") + 1]) if "--sleep" in sys.argv else 0.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=g)
    y = (x[:, :3].sum(dim=1) > 0).long()
    train, val = TensorDataset(x[:100], y[:100]), TensorDataset(x[100:], y[100:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    callbacks = [
        Sleep(sleep),
        EarlyStopping(monitor="val_loss", patience=100),
        HistoryWriter(run_dir / "history.jsonl"),
        Checkpoint(run_dir / "checkpoints", every_n_steps=3, keep_last=2),
    ]
    fit(model, train, val, epochs=6, batch_size=16, seed=5, device="cpu",
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.01, "schedule": {"name": "cosine", "warmup_epochs": 1}},
        callbacks=callbacks, log_every_n_steps=5, resume=run_dir if resume else None,
        reshard="--reshard" in sys.argv)
    dist = Distributed.from_env()
    if dist.main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    dist.close()
    end_worker(0)  # as `dlforge train --nproc` ends its workers: no teardown that could abort a finished rank


if __name__ == "__main__":
    main()
