"""The run index: rebuilt from the folders, re-read only where files changed, statuses from
what a run left behind, run.json written by train_run, links to registry versions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from dlforge.pipeline.run_meta import code_version, data_fingerprint
from dlforge.runs.index import INDEX_FILE, STALE_AFTER_S, RunIndex, attach_registry, config_hash
from tests.runs.conftest import BASE, make_run, raw_config


def fake_runs(runs, n=5):
    return [make_run(runs, f"r{i}", raw_config(seed=i), metrics={"val_loss": 0.5 + i / 10}) for i in range(n)]


def test_rebuilt_from_folders_when_the_cache_is_deleted_or_broken(tmp_path):
    fake_runs(tmp_path)
    index = RunIndex(tmp_path)
    first = [r.to_dict() for r in index.records()]
    assert index.reads == 5 and (tmp_path / INDEX_FILE).is_file()
    (tmp_path / INDEX_FILE).unlink()
    assert [r.to_dict() for r in index.records()] == first and index.reads == 5
    (tmp_path / INDEX_FILE).write_text("{not json")
    assert [r.to_dict() for r in index.records()] == first and index.reads == 5


def test_only_changed_runs_are_read_again_and_deleted_ones_disappear(tmp_path):
    import shutil

    dirs = fake_runs(tmp_path)
    index = RunIndex(tmp_path)
    index.records()
    assert index.reads == 5
    assert len(index.records()) == 5 and index.reads == 0  # all from the cache
    (dirs[2] / "metrics.json").write_text(json.dumps({"val_loss": 0.123456}))
    records = {r.name: r for r in index.records()}
    assert index.reads == 1 and records["r2"].metrics["val_loss"] == 0.123456
    shutil.rmtree(dirs[0])
    assert [r.name for r in index.records()] == ["r1", "r2", "r3", "r4"] and index.reads == 0
    assert set(json.loads((tmp_path / INDEX_FILE).read_text())["runs"]) == {"r1", "r2", "r3", "r4"}


def test_record_fields_from_a_real_run(trained):
    rec = RunIndex(trained["runs"]).get(trained["a"].name)
    assert rec.status == "finished" and rec.epochs_run == 2 and rec.stop_reason is None
    assert rec.config["optim.lr"] == 0.01 and rec.config["model.arch"] == "mlp"
    import yaml

    assert rec.config_hash == hashlib.sha256(json.dumps(yaml.safe_load((trained["a"] / "config.yaml").read_text()),
                                                        sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert rec.data_fingerprint == "builtin:iris rows=150 columns=4"
    assert set(rec.metrics) >= {"val_loss", "val_accuracy", "test_accuracy"}
    history = [json.loads(line) for line in (trained["a"] / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in history if h["type"] == "epoch"]
    assert rec.final["val_loss"] == epochs[-1]["val_loss"]
    assert rec.best["val_loss"] == min(e["val_loss"] for e in epochs)
    assert rec.best["val_accuracy"] == max(e["val_accuracy"] for e in epochs)
    assert rec.started and rec.finished and rec.started <= rec.finished


def test_run_json_code_version_is_the_git_commit(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.getcwd())
    if head.returncode != 0:
        pytest.skip("the tests do not run in a git checkout")
    assert code_version().split("-")[0] == head.stdout.strip()
    assert code_version(tmp_path) == "dlforge 0.1.0"  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all: still no error
    assert code_version().startswith("dlforge ")


def test_data_fingerprint_is_the_file_hash(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    assert data_fingerprint(str(csv)) == "sha256:" + hashlib.sha256(csv.read_bytes()).hexdigest()
    assert data_fingerprint("iris", rows=150, columns=(4,)) == "builtin:iris rows=150 columns=4"


def test_status_finished_and_diverged_from_real_runs(trained):
    by_dir = {r.path: r for r in RunIndex(trained["runs"]).records()}
    assert by_dir[str(trained["a"].resolve())].status == "finished"
    diverged = by_dir[str(trained["diverged"].resolve())]
    assert diverged.status == "diverged" and diverged.stop_reason == "non_finite"


def test_status_inferred_without_run_json(tmp_path):
    """Runs written before run.json existed: metrics.json, nan_report.json and the clock decide."""
    make_run(tmp_path, "old-finished", metrics={"val_loss": 0.4}, age_s=86400)
    make_run(tmp_path, "old-diverged", metrics={"val_loss": 0.4}, nan_report=True, age_s=86400)
    make_run(tmp_path, "killed", age_s=STALE_AFTER_S + 60)  # checkpoints and history, no metrics, untouched
    make_run(tmp_path, "training-now")  # history written just now
    status = {r.name: r.status for r in RunIndex(tmp_path).records()}
    assert status == {"old-finished": "finished", "old-diverged": "diverged", "killed": "stopped",
                      "training-now": "running"}
    rec = RunIndex(tmp_path).get("old-finished")
    assert rec.code_version is None and rec.data_fingerprint is None and rec.started  # from the folder's time


def test_status_running_until_its_process_is_gone(tmp_path):
    import socket

    alive = {"status": "running", "started": "2026-01-01T00:00:00+00:00", "host": socket.gethostname(),
             "pid": os.getpid()}
    make_run(tmp_path, "alive", run_json=alive)
    gone = subprocess.Popen(["true"])
    gone.wait()
    make_run(tmp_path, "gone", run_json={**alive, "pid": gone.pid})
    status = {r.name: r.status for r in RunIndex(tmp_path).records()}
    assert status == {"alive": "running", "gone": "stopped"}


def test_trial_runs_belong_to_their_study(tmp_path):
    make_run(tmp_path / "circles-trials", "circles-20260101-000000", metrics={"val_accuracy": 0.9})
    (tmp_path / "circles-tune").mkdir()
    (tmp_path / "circles-tune" / "trials.json").write_text("[]")
    (rec,) = RunIndex(tmp_path).records()
    assert rec.name == "circles-trials/circles-20260101-000000" and rec.study == "circles"


def test_registry_versions_made_from_a_run(trained, tmp_path, monkeypatch):
    from dlforge.registry.store import Registry

    url = f"sqlite:///{tmp_path}/reg.db"
    with Registry(url, artifacts=tmp_path / "art") as reg:  # registration records metadata["run"] from model.json
        reg.register(trained["a"] / "model", "iris")
        reg.register(trained["a"] / "model", "iris")
        reg.register(trained["b"] / "model", "other")
        assert reg.get("iris", 1).metadata["run"] == trained["a"].name
    records = RunIndex(trained["runs"]).records()
    linked = {r.name: [(v["name"], v["version"]) for v in r.registry] for r in attach_registry(records, url)}
    assert linked == {trained["a"].name: [("iris", 1), ("iris", 2)], trained["b"].name: [("other", 1)],
                      trained["diverged"].name: []}
    monkeypatch.setenv("DLFORGE_REGISTRY", url)  # configured through the environment, as the CLI is
    linked = {r.name: len(r.registry) for r in attach_registry(RunIndex(trained["runs"]).records())}
    assert linked[trained["a"].name] == 2
    # no registry configured (no $DLFORGE_REGISTRY, no registry/registry.db here): empty, no error
    monkeypatch.delenv("DLFORGE_REGISTRY")
    monkeypatch.chdir(tmp_path)
    assert all(r.registry == [] for r in attach_registry(RunIndex(trained["runs"]).records()))
    # a registry that cannot be read: empty, no error
    (tmp_path / "broken.db").write_text("not a database")
    assert all(r.registry == [] for r in attach_registry(records, str(tmp_path / "broken.db")))


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash(BASE) != config_hash(raw_config(seed=1))


def test_refresh_of_200_runs_reads_none_when_cached(tmp_path):
    for i in range(200):
        make_run(tmp_path, f"r{i:03d}", raw_config(seed=i), metrics={"val_loss": 0.5}, checkpoints=False)
    index = RunIndex(tmp_path)
    t0 = time.perf_counter()
    assert len(index.records()) == 200 and index.reads == 200
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert len(index.records()) == 200 and index.reads == 0
    cached = time.perf_counter() - t0
    assert cached < first


def test_an_interrupted_run_is_marked_stopped(tmp_path):
    import torch

    from dlforge.config import validate_config
    from dlforge.pipeline import train_run
    from dlforge.train import Callback

    class Crash(Callback):
        def on_epoch_end(self, state):
            raise RuntimeError("power cut")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(RuntimeError, match="power cut"):
            train_run(validate_config(raw_config()), runs_dir=tmp_path, callbacks=[Crash()])
    finally:
        torch.set_num_threads(before)
    (rec,) = RunIndex(tmp_path).records()
    assert rec.status == "stopped" and rec.started and rec.finished and not rec.metrics and rec.epochs_run == 1
    run_json = json.loads((Path(rec.path) / "run.json").read_text())
    assert run_json["status"] == "stopped" and run_json["data_fingerprint"] == "builtin:iris rows=150 columns=4"
