"""Run folders for the run-index tests: a few real 2-epoch iris runs (trained once per
session) and fake folders written by hand where only their files matter."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

BASE = {"name": "iris", "seed": 0, "data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
        "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 2, "batch_size": 32}}


def raw_config(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-key changes: raw_config(**{"optim.lr": 0.1})."""
    cfg = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def make_run(runs_dir: Path, name: str, config: dict[str, Any] | None = None, *, metrics: dict | None = None,
             epochs: list[dict] | None = None, run_json: dict | None = None, checkpoints: bool = True,
             age_s: float = 0.0, nan_report: bool = False) -> Path:
    """A hand-written run folder: config.yaml, history.jsonl and, when given, metrics.json / run.json.
    ``age_s`` sets every file's mtime that many seconds in the past."""
    d = runs_dir / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config or BASE))
    epochs = epochs if epochs is not None else [{"type": "epoch", "epoch": 0, "train_loss": 1.0, "val_loss": 0.9},
                                                {"type": "epoch", "epoch": 1, "train_loss": 0.7, "val_loss": 0.8}]
    (d / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    if checkpoints:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.safetensors").write_bytes(b"x")
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if run_json is not None:
        (d / "run.json").write_text(json.dumps(run_json))
    if nan_report:
        (d / "nan_report.json").write_text("{}")
    if age_s:
        then = time.time() - age_s
        for p in [d, *d.rglob("*")]:
            os.utime(p, (then, then))
    return d


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Three real runs in one runs folder: two that differ in optim.lr and seed, and one that
    diverges (SGD at lr 1e5: NanGuard stops it)."""
    import torch

    from dlforge.config import validate_config
    from dlforge.pipeline import train_run

    runs = tmp_path_factory.mktemp("trained") / "runs"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"runs": runs}
        for key, changes in (("a", {}), ("b", {"optim.lr": 0.05, "seed": 1}),
                             ("diverged", {"name": "boom", "optim.name": "sgd", "optim.lr": 1e5})):
            out[key] = train_run(validate_config(raw_config(**changes)), runs_dir=runs).run_dir
    finally:
        torch.set_num_threads(before)
    return out
