"""Two worker processes share one study through SQLite: no trial is lost or duplicated,
the per-trial sampler seeds keep concurrent workers from drawing the same points, and
two workers creating a new database at the same moment both get a working storage.

The workers are two OS processes, the test process and a subprocess. The study is
created first (``n_trials=0``, as ``dlforge tune --n-trials 0`` would), then both join
it with ``resume=True``, as workers on other machines would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch

from dlforge.tune import run_tune
from dlforge.tune.study import TrialSeededSampler, open_storage

N_EACH = 3
CONFIG = {
    "name": "shared", "seed": 0,
    "data": {"source": "circles", "n_samples": 200, "noise": 0.1, "split": {"val": 0.3, "test": 0}},
    "model": {"arch": "mlp", "hidden": [8]},
    "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
    "tune": {"metric": "val_loss", "n_trials": 50, "sampler": "tpe",
             "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
                       "model.hidden": {"type": "categorical", "choices": [[8], [16], [8, 8]]}}},
}

# Both workers replace the per-trial HTML report (tested in tests/evaluate; slow here) by
# a meeting point: a worker's first trial does not finish until the other worker is in
# a trial too, so the two workers' trials overlap however their start-up times differ.
MEET = r"""
def meet_in_trial(run_dir, **_):
    marks = RUNS / "in-trial"
    marks.mkdir(exist_ok=True)
    (marks / str(os.getpid())).touch()
    deadline = time.time() + 120
    while len(list(marks.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.02)
    return Path(run_dir) / "report.html"
"""

WORKER = r"""
import json, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import dlforge.pipeline.run
from dlforge.tune import run_tune
raw, RUNS, n = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
exec(sys.argv[4])
dlforge.pipeline.run.write_report = meet_in_trial
result = run_tune(raw, runs_dir=RUNS, resume=True, n_trials=n)
print(json.dumps({"pid": os.getpid(), "complete": result.n_complete, "pruned": result.n_pruned}))
"""


def test_two_workers_share_one_study_without_lost_or_duplicate_trials(tmp_path: Path, monkeypatch) -> None:
    # This process creates the study; then it and a subprocess both join it and run trials.
    created = run_tune(json.loads(json.dumps(CONFIG)), runs_dir=tmp_path, n_trials=0)  # the study, no trial
    assert created.n_complete == 0 and created.best_value is None and created.files["report"].is_file()
    meeting: dict = {"RUNS": tmp_path, "os": os, "time": time, "Path": Path}
    exec(MEET, meeting)
    monkeypatch.setattr("dlforge.pipeline.run.write_report", meeting["meet_in_trial"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    joiner = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(CONFIG), str(tmp_path), str(N_EACH), MEET],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_tune(json.loads(json.dumps(CONFIG)), runs_dir=tmp_path, resume=True, n_trials=N_EACH)
        joiner.wait(timeout=300)
    finally:
        torch.set_num_threads(threads)
        if joiner.poll() is None:
            joiner.kill()
    assert joiner.returncode == 0, _output(joiner)

    storage = f"sqlite:///{tmp_path.resolve() / 'shared-tune.db'}"
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == list(range(2 * N_EACH))  # none lost, none numbered twice
    assert len({t._trial_id for t in trials}) == 2 * N_EACH
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    assert sorted(len(ts) for ts in by_worker.values()) == [N_EACH, N_EACH]
    # They ran at the same time (the meeting point makes sure of it)
    a, b = by_worker.values()
    assert min(t.datetime_start for t in a) < max(t.datetime_complete for t in b)
    assert min(t.datetime_start for t in b) < max(t.datetime_complete for t in a)
    # Distinct per-trial seeds: the random start-up points of the two workers all differ
    points = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(points) == 2 * N_EACH
    rows = json.loads((tmp_path / "shared-tune" / "trials.json").read_text())
    assert len(rows) == 2 * N_EACH  # written by whichever worker finished last, after the other


def _output(worker: subprocess.Popen) -> str:
    if worker.poll() is None:
        return "worker still running"
    out, err = worker.communicate()
    return f"exit {worker.returncode}\n{out}\n{err[-3000:]}"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # catch_warnings is per process, not thread
def test_workers_opening_a_new_database_at_once_both_succeed(tmp_path: Path) -> None:
    # Plain RDBStorage fails here most of the time ("table studies already exists").
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        barrier, opened, errors = threading.Barrier(2), [], []

        def open_now() -> None:
            barrier.wait()
            try:
                opened.append(open_storage(url))
            except Exception as err:  # noqa: BLE001 - collected for the assertion below
                errors.append(err)

        threads = [threading.Thread(target=open_now) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(opened) == 2
        optuna.create_study(storage=opened[0], study_name="s")
        assert optuna.get_all_study_names(opened[1]) == ["s"]


def test_trial_seeded_sampler_draws_depend_on_seed_and_trial_number() -> None:
    def run(seed: int) -> list[float]:
        study = optuna.create_study(sampler=TrialSeededSampler(
            lambda s: optuna.samplers.RandomSampler(seed=s), seed))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=4)
        return [t.params["x"] for t in study.trials]

    first = run(seed=7)
    assert first == run(seed=7)  # reproducible
    assert len(set(first)) == 4
    # Trial n draws exactly what a fresh RandomSampler(seed + n) draws first
    for n, x in enumerate(first):
        reference = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7 + n))
        reference.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)
        assert x == pytest.approx(reference.trials[0].params["x"])


optuna.logging.set_verbosity(optuna.logging.WARNING)
