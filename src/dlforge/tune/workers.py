"""``dlforge tune CONFIG --workers N``: N local worker processes on one Optuna study.

The parent (:func:`~dlforge.tune.study.run_tune`) creates or joins the study, then
:func:`run_workers` starts N processes (``spawn``: each imports torch afresh, nothing is
forked from a process with live thread pools). Each worker loads the study from the
storage URL and runs one trial at a time, claiming it first from a counter shared by
all N, so together they run exactly the call's ``n_trials`` (not N x ``n_trials``).
Each worker trains with ``cpu_count // N`` torch threads so the N share the cores.

Only the parent writes: the workers send each finished trial's progress line through a
queue and the parent prints it; ``trials.json``, ``report.html`` and
``best_config.yaml`` are written once, by the parent, after the last worker ended.

- A worker that fails (an exception in a trial, or killed) does not lose the study:
  its trial is stored as failed (a killed worker's running trial is failed and queued
  again by the storage heartbeat after ``GRACE_S``), the other workers go on, and the
  parent lists the failure in :attr:`TuneResult.worker_failures` (the CLI exits 1).
- Ctrl-C reaches every worker (one process group); the parent also sends each worker
  SIGINT, waits ``STOP_WAIT_S`` for them to mark their running trials failed, kills
  the rest, and raises ``KeyboardInterrupt``.

Workers on other machines join the same study with the same storage URL, a database
server all machines reach (PostgreSQL, MySQL), never SQLite: SQLite's file locks are
not safe on a shared network file system, and Optuna advises against it for
distributed optimisation. Say so with ``multi_host=True`` (``--multi-host``) and a
``sqlite://`` URL is refused. Each command adds its own ``n_trials``::

    # machine A: creates the study, runs 4 local workers
    dlforge tune cfg.yaml --storage postgresql://tuner@db/studies --workers 4 --multi-host
    # machine B (and C, ...): joins it
    dlforge tune cfg.yaml --storage postgresql://tuner@db/studies --workers 4 --multi-host --resume

Example:
    >>> check_workers(2, "sqlite:///runs/s.db", multi_host=False)  # one machine: fine
    >>> check_workers(2, "sqlite:///runs/s.db", multi_host=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dlforge.errors.ConfigError: SQLite storage cannot be shared by workers on several machines ...
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from dlforge.errors import ConfigError, DlforgeError
from dlforge.tune.space import TuneConfig
from dlforge.tune.storage import display_url

STOP_WAIT_S = 15  # after Ctrl-C, how long workers get to record their running trial as failed
POLL_S = 0.2  # how often the parent looks at the progress queue and the workers


@dataclass
class WorkerSpec:
    """What every worker needs to join the study and run its trials (picklable)."""

    url: str
    study_name: str
    tune: TuneConfig
    base: dict[str, Any]
    seed: int
    epochs: int
    trials_dir: Path
    budget: int  # trials all workers of this call run together
    deadline: float | None  # time.time() after which no trial starts
    threads: int  # torch threads per worker


def check_workers(workers: int, url: str, *, multi_host: bool) -> None:
    """Refuse worker counts below 1, SQLite for workers on several machines, and an
    in-memory SQLite database for more than one process (each would get its own).

    Example:
        >>> check_workers(0, "sqlite:///s.db", multi_host=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        dlforge.errors.ConfigError: --workers is 0: ...
    """
    if workers < 1:
        raise ConfigError(f"--workers is {workers}: there must be at least one worker",
                          hint=f"pass --workers 1 (one process) up to the CPU cores ({os.cpu_count()} here)")
    backend = url.split(":", 1)[0].split("+", 1)[0].lower()
    if backend == "sqlite" and multi_host:
        raise ConfigError(f"SQLite storage cannot be shared by workers on several machines ({display_url(url)})",
                          hint="use a database server every machine reaches, e.g. --storage "
                               "postgresql://user@host/db (Optuna advises against SQLite for distributed "
                               "optimisation); drop --multi-host if all workers run on this machine")
    if backend == "sqlite" and workers > 1 and ":memory:" in url:
        raise ConfigError("an in-memory SQLite storage lives in one process: workers cannot share it",
                          hint="use a file, e.g. --storage sqlite:///runs/study.db (or leave the default)")


def _claim(spec: WorkerSpec, claimed: Any) -> bool:
    """Take the next of the call's ``budget`` trials (False: none left, or past the deadline)."""
    if spec.deadline is not None and time.time() >= spec.deadline:
        return False
    with claimed.get_lock():
        if claimed.value >= spec.budget:
            return False
        claimed.value += 1
        return True


def _worker(index: int, spec: WorkerSpec, claimed: Any, lines: Any) -> None:
    """One worker process: join the study, run claimed trials one at a time, report through ``lines``."""
    import optuna
    import torch

    from dlforge.tune.objective import make_objective, make_pruner, make_sampler, progress_callback
    from dlforge.tune.storage import open_storage

    torch.set_num_threads(spec.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec.url),
                                  sampler=make_sampler(spec.tune, spec.seed), pruner=make_pruner(spec.tune, spec.epochs))
        objective = make_objective(spec.tune, spec.base, spec.trials_dir)
        callbacks = [progress_callback(lambda line: lines.put(("line", line)), spec.tune)]
        while _claim(spec, claimed):
            study.optimize(objective, n_trials=1, callbacks=callbacks)
    except KeyboardInterrupt:  # Ctrl-C: Optuna has stored the running trial as failed
        sys.exit(130)
    except BaseException as err:  # noqa: BLE001 - sent to the parent, which reports it
        hint = f" (hint: {err.hint})" if isinstance(err, DlforgeError) and err.hint else ""
        lines.put(("error", index, f"{type(err).__name__}: {err}{hint}"))
        sys.exit(1)


def _drain(lines: Any, progress: TextIO | None, errors: dict[int, str], wait: float) -> None:
    """Move everything queued so far to ``progress`` / ``errors`` (blocking up to ``wait`` for the first item)."""
    while True:
        try:
            item = lines.get(timeout=wait) if wait else lines.get_nowait()
        except queue.Empty:
            return
        wait = 0
        if item[0] == "line" and progress is not None:
            progress.write(item[1])
            progress.flush()
        elif item[0] == "error":
            errors[item[1]] = item[2]


def _stop(procs: list[Any]) -> None:
    """Ctrl-C: interrupt every live worker, give them STOP_WAIT_S to finish up, kill the rest."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGINT)
    deadline = time.time() + STOP_WAIT_S
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def run_workers(n: int, spec: WorkerSpec, progress: TextIO | None = None) -> list[str]:
    """Run ``spec.budget`` trials of an existing study in ``n`` worker processes.

    Returns one message per worker that failed (empty when all ended well); progress
    lines go to ``progress`` as trials finish, in the order they finish.

    Example:
        >>> failures = run_workers(2, spec, progress=sys.stderr)  # doctest: +SKIP
        >>> failures  # doctest: +SKIP
        []
    """
    ctx = mp.get_context("spawn")
    claimed, lines = ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, spec, claimed, lines), name=f"dlforge-tune-worker-{i}")
             for i in range(n)]
    errors: dict[int, str] = {}
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            _drain(lines, progress, errors, POLL_S)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    for p in procs:
        p.join()
    _drain(lines, progress, errors, 0)
    failures = []
    for i, p in enumerate(procs):
        if p.exitcode == 0:
            continue
        how = errors.get(i) or (f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}")
        failures.append(f"worker {i} (pid {p.pid}) failed: {how}")
    return failures
