"""Workers sharing one study.

Hand-started workers: two OS processes (the test process and a subprocess) join one
SQLite study: no trial is lost or duplicated, the per-trial sampler seeds keep
concurrent workers from drawing the same points, and two workers creating a new
database at the same moment both get a working storage.

``--workers N`` (dlforge.tune.workers): the spawned workers run exactly the call's
n_trials between them on PostgreSQL (the conftest server) and SQLite, the parent alone
prints the progress lines and writes the outputs once; a crashed worker is reported and
the study survives; Ctrl-C stops every worker; bad --workers values and SQLite for
workers on several machines are refused with a hint (exit 2).

Spawned workers load ``HOOK`` (a ``sitecustomize`` on their PYTHONPATH) so their trials
skip the per-run HTML report (tested in tests/evaluate; slow here), and, as a test
asks, crash in trial 1 or wait in their first trial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

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




# ----------------------------------------------------------------------------- --workers N

HOOK = r"""
import os, time
from pathlib import Path
mode = os.environ.get("DLFORGE_TEST_WORKER_HOOK")
if mode:
    import dlforge.pipeline as pipeline
    import dlforge.pipeline.run as run

    run.write_report = lambda run_dir, **_: Path(run_dir) / "report.html"
    real_train_run = pipeline.train_run

    def train_run(cfg, **kwargs):
        if mode == "crash" and cfg.name.endswith("-trial1"):
            os._exit(3)  # as if killed: no exception, no cleanup
        if mode == "wait":
            (Path(os.environ["DLFORGE_TEST_MARKS"]) / str(os.getpid())).touch()
            time.sleep(300)
        return real_train_run(cfg, **kwargs)

    pipeline.train_run = train_run
"""

TINY = {**CONFIG, "name": "tiny", "train": {**CONFIG["train"], "epochs": 1},
        "tune": {**CONFIG["tune"], "n_trials": 4}}


def tiny() -> dict:
    return json.loads(json.dumps(TINY))


@pytest.fixture
def worker_hook(tmp_path: Path, monkeypatch) -> Callable[[str], None]:
    """Put HOOK on the spawned workers' PYTHONPATH; the returned function sets its mode."""
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr("dlforge.pipeline.run.write_report", lambda run_dir, **_: Path(run_dir) / "report.html")
    return lambda mode: monkeypatch.setenv("DLFORGE_TEST_WORKER_HOOK", mode)


def _finished(trials: list) -> list:
    return [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_two_workers_on_postgresql_run_exactly_n_trials_and_the_parent_writes_once(
        tmp_path: Path, pg_registry_url: str, worker_hook, monkeypatch) -> None:
    import io

    import dlforge.tune.report as report_module

    worker_hook("fast")
    written = []
    real_write = report_module.write_tune_report
    monkeypatch.setattr(report_module, "write_tune_report", lambda *a, **k: (written.append(1), real_write(*a, **k)))
    progress = io.StringIO()
    result = run_tune(tiny(), runs_dir=tmp_path, storage=pg_registry_url, workers=2, progress=progress)

    trials = optuna.load_study(study_name="tiny", storage=pg_registry_url).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # unique, none lost, not 2 x 4
    assert len(_finished(trials)) == 4 and result.worker_failures == []
    assert result.n_complete + result.n_pruned == 4
    assert len({t.user_attrs["worker"] for t in trials}) <= 2
    assert all(t.user_attrs["worker"].split(":")[1] != str(os.getpid()) for t in trials)  # run by the workers
    lines = progress.getvalue().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [f"trial {n}" for n in range(4)]  # one line each
    assert written == [1]  # report.html, trials.json and best_config.yaml written once, by the parent
    assert len(json.loads(result.files["trials"].read_text())) == 4 and result.files["best_config"].is_file()
    last = max(t.datetime_complete for t in trials).timestamp()
    assert result.files["report"].stat().st_mtime >= last  # after the last trial ended


def test_two_local_workers_on_sqlite_through_the_cli(tmp_path: Path, worker_hook) -> None:
    worker_hook("fast")
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))
    done = subprocess.run([str(Path(sys.executable).parent / "dlforge"), "tune", str(path), "--runs-dir",
                           str(tmp_path), "--workers", "2", "--json"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["n_complete"] + result["n_pruned"] == 4 and result["storage"].startswith("sqlite:")
    trials = optuna.load_study(study_name="tiny", storage=result["storage"]).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and len(_finished(trials)) == 4
    assert sum(line.startswith("trial ") for line in done.stderr.splitlines()) == 4


def test_a_crashed_worker_is_reported_and_the_study_survives(tmp_path: Path, worker_hook) -> None:
    worker_hook("crash")  # the worker that draws trial 1 dies in it; the other runs the rest
    result = run_tune(tiny(), runs_dir=tmp_path, workers=2)
    (failure,) = result.worker_failures
    assert "failed: exit code 3" in failure
    trials = {t.number: t for t in optuna.load_study(study_name="tiny", storage=result.storage).get_trials()}
    assert sorted(trials) == [0, 1, 2, 3]
    assert trials[1].state == optuna.trial.TrialState.RUNNING  # until the heartbeat grace fails it
    assert len(_finished(list(trials.values()))) == 3 and result.files["best_config"].is_file()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_ctrl_c_stops_every_worker(tmp_path: Path, worker_hook, monkeypatch) -> None:
    worker_hook("wait")  # each worker's first trial waits, marked by a file named by its pid
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("DLFORGE_TEST_MARKS", str(marks))
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))
    parent = subprocess.Popen([str(Path(sys.executable).parent / "dlforge"), "tune", str(path), "--runs-dir",
                               str(tmp_path), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(list(marks.iterdir())) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.1)
        workers = [int(p.name) for p in marks.iterdir()]
        assert len(workers) == 2, _output(parent)
        os.kill(parent.pid, signal.SIGINT)  # the parent alone: it must pass the interrupt on
        parent.wait(timeout=60)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode != 0
    assert all(_gone(pid) for pid in workers)
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny-tune.db'}").get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in trials)  # none left running


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers is 0"),
    (["--workers", "-2"], "--workers is -2"),
    (["--workers", "2", "--multi-host"], "SQLite storage cannot be shared by workers on several machines"),
    (["--workers", "2", "--storage", "sqlite:///:memory:"], "in-memory SQLite"),
])
def test_bad_worker_settings_exit_2_with_a_hint(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from dlforge.cli import app

    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))
    done = CliRunner().invoke(app, ["tune", str(path), "--runs-dir", str(tmp_path), *args], env={"COLUMNS": "300"})
    assert done.exit_code == 2 and message in done.stderr and "hint:" in done.stderr, done.output
    assert not (tmp_path / "tiny-tune.db").exists()  # refused before touching the storage


def test_sqlite_is_refused_for_several_machines_but_a_server_is_not() -> None:
    from dlforge.errors import ConfigError
    from dlforge.tune.workers import check_workers

    with pytest.raises(ConfigError, match="several machines") as err:
        check_workers(1, "sqlite:////shared/nfs/study.db", multi_host=True)
    assert "postgresql://" in err.value.hint
    check_workers(4, "postgresql+psycopg://tuner@db/studies", multi_host=True)
    check_workers(2, "sqlite:///runs/study.db", multi_host=False)


def test_worker_doctests() -> None:
    import doctest

    import dlforge.tune.objective as objective_module
    import dlforge.tune.workers as workers_module

    for module in (objective_module, workers_module):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


optuna.logging.set_verbosity(optuna.logging.WARNING)
