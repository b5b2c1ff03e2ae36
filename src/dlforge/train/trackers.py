"""Send the training history to TensorBoard and MLflow without slowing a step.

:class:`TrackerLogger` is a callback that copies every history record (epoch records,
logged steps with their ``grad_norm/<layer>``) into a bounded queue; one background thread
hands them in batches to the writers (:class:`TensorBoardWriter`, :class:`MlflowWriter`).
The step never waits: when the queue is full a record is dropped and counted
(``history.jsonl`` still has it, and ``dlforge runs export`` can replay the run). A writer
that fails (no server, a full disk, a bug) is reported once and left out; the other
writers and the training carry on. Closing waits a bounded time for the queue to drain.

Both writers lay a record out the same way (:func:`record_scalars`): an epoch record's
metrics under their own names (``train_loss``, ``val_accuracy``, ``lr``) at x = its epoch
(0-based, as in the history); a step record's at x = its step, namespaced keys as they are
(``grad_norm/<layer>``, ``update_ratio/<layer>``) and the others under ``step/`` (``step/loss``).

Example:
    >>> logger = TrackerLogger([TensorBoardWriter("runs/iris/tensorboard")], params={"optim.lr": 0.01})
    >>> # fit(model, train, callbacks=[logger])
    >>> record_scalars({"type": "step", "step": 20, "epoch": 0, "loss": 0.5, "grad_norm/fc.weight": 1.5})
    (20, {'step/loss': 0.5, 'grad_norm/fc.weight': 1.5})
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO
from urllib.parse import urlparse

from dlforge.errors import ConfigError
from dlforge.train.callbacks import Callback

if TYPE_CHECKING:
    from dlforge.train.state import TrainState

TRACKERS = ("tensorboard", "mlflow")
RUN_ARTIFACTS = ("report.html", "metrics.json", "model")  # what a finished run hands MLflow
_NOT_METRICS = ("type", "step", "epoch")


def check_trackers(names: Sequence[str], key: str = "train.log_to") -> None:
    """Refuse tracker names that are unknown or whose package is missing (``key`` names
    the setting in the message).

    Example:
        >>> check_trackers(["tensorboard"])
        >>> check_trackers(["wandb"])
        Traceback (most recent call last):
        ...
        dlforge.errors.ConfigError: train.log_to names 'wandb' (allowed: tensorboard, mlflow)
    """
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"{key} names {name!r} (allowed: {', '.join(TRACKERS)})")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"{key} names {name}, but the {name} package is not installed",
                              hint=f"pip install dlforge[{name}], or remove {name} from {key}")


def record_scalars(record: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
    """``(x, {tag: value})`` for an epoch or step record; None for other records (notes)."""
    kind = record.get("type")
    if kind not in ("epoch", "step"):
        return None
    values = {k: float(v) for k, v in record.items()
              if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind == "epoch":
        return int(record["epoch"]), values
    return int(record["step"]), {(k if "/" in k else f"step/{k}"): v for k, v in values.items()}


def tracker_params(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config (``dlforge.config.flat_config``) as tracker params: numbers, booleans
    and strings stay, anything else (lists, null, an empty mapping) becomes its JSON text.

    Example:
        >>> tracker_params({"optim.lr": 0.1, "optim.betas": [0.9, 0.99], "seed": 0, "tune": None})
        {'optim.lr': 0.1, 'optim.betas': '[0.9, 0.99]', 'seed': 0, 'tune': 'null'}
    """
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flat.items()}


class Writer(Protocol):
    """What a tracker does with a run: open it, take record batches, close it with a status
    (``FINISHED``, ``FAILED``, ``KILLED``; None leaves an MLflow run open for its artifacts)."""

    name: str

    def open(self, run_name: str, params: dict[str, Any]) -> None: ...

    def write(self, records: list[dict[str, Any]]) -> None: ...

    def close(self, status: str | None) -> None: ...


class TensorBoardWriter:
    """Scalars into ``log_dir`` (an events file, :class:`~dlforge.train.tb_events.EventFile`:
    one event per record), and at close the config as hyperparameters (the HParams dashboard)
    with the epoch metrics as its metric columns."""

    name = "tensorboard"

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._events: Any = None
        self._params: dict[str, Any] = {}
        self._epoch_tags: set[str] = set()

    def open(self, run_name: str, params: dict[str, Any]) -> None:
        from dlforge.train.tb_events import EventFile

        self._events, self._params = EventFile(self.log_dir), params

    def write(self, records: list[dict[str, Any]]) -> None:
        points = []
        for record in records:
            if (found := record_scalars(record)) is not None:
                points.append(found)
                if record["type"] == "epoch":
                    self._epoch_tags.update(found[1])
        self._events.write(points)

    def close(self, status: str | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        try:
            self._events.write_summaries(hparams(self._params, dict.fromkeys(sorted(self._epoch_tags), 0.0)))
        finally:
            self._events.close()


def _check_reachable(uri: str | None) -> None:
    """Fail in a moment, not after MLflow's minutes of retries, when no server listens."""
    parsed = urlparse(uri or "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"no MLflow server answers at {uri} ({err})") from None


def _artifacts_beside(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite database, in ``mlartifacts/``
    (MLflow's own default is ``./mlruns`` under whatever folder the process runs in); None
    (the store's choice) for anything else.

    Example:
        >>> _artifacts_beside("sqlite:////data/mlflow.db"), _artifacts_beside("http://mlflow:5000")
        ('file:///data/mlartifacts', None)
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


class MlflowWriter:
    """One MLflow run named after the run directory: the config as params, metrics through
    ``MlflowClient.log_batch``, artifacts (:meth:`log_artifacts`), a final status.

    ``uri`` None takes MLflow's own default (``MLFLOW_TRACKING_URI``, else ``./mlflow.db``);
    the experiment is ``MLFLOW_EXPERIMENT_NAME`` when set, else ``experiment``. With
    ``record_to`` the run's id is written there as JSON, so it can be found again
    (:meth:`attach`) to add the report once it exists.
    """

    name = "mlflow"

    def __init__(self, uri: str | None = None, experiment: str = "dlforge", record_to: str | Path | None = None) -> None:
        self.uri, self.experiment = uri, os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        self.record_to = Path(record_to) if record_to else None
        self.run_id: str | None = None
        self.tracking_uri: str | None = uri  # resolved by MLflow once open
        self._client: Any = None

    @classmethod
    def attach(cls, uri: str | None, run_id: str) -> MlflowWriter:
        """A writer for an MLflow run that already exists."""
        from mlflow import MlflowClient

        writer = cls(uri)
        writer._client, writer.run_id = MlflowClient(tracking_uri=uri), run_id
        return writer

    def open(self, run_name: str, params: dict[str, Any]) -> None:
        _check_reachable(self.uri)
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self._client = client = MlflowClient(tracking_uri=self.uri)
        self.tracking_uri = client.tracking_uri
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            self.experiment, artifact_location=_artifacts_beside(client.tracking_uri))
        self.run_id = client.create_run(experiment_id, run_name=run_name, tags={"dlforge.run": run_name}).info.run_id
        if self.record_to is not None:
            entry = {"mlflow": {"uri": client.tracking_uri, "run_id": self.run_id, "experiment": self.experiment}}
            self.record_to.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def write(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, x) for record in records if (found := record_scalars(record))
                   for x, scalars in [found] for tag, value in scalars.items()]
        for i in range(0, len(metrics), 1000):  # and at most 1000 metrics
            self._client.log_batch(self.run_id, metrics=metrics[i : i + 1000], synchronous=True)

    def log_artifacts(self, run_dir: str | Path) -> None:
        """``report.html``, ``metrics.json`` and ``model/`` of ``run_dir``, those that exist."""
        for name in RUN_ARTIFACTS:
            path = Path(run_dir) / name
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path=name)
            elif path.is_file():
                self._client.log_artifact(self.run_id, str(path))

    def close(self, status: str | None) -> None:
        if status is not None and self.run_id is not None:
            self._client.set_terminated(self.run_id, status)

    def mark_failed(self, reason: str) -> None:
        """Note in ``record_to`` that the run's logging failed (already reported): nothing
        should try to finish it later."""
        if self.record_to is not None and self.record_to.exists():
            entry = json.loads(self.record_to.read_text(encoding="utf-8"))
            entry["mlflow"]["failed"] = reason
            self.record_to.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def report_note(message: str, stream: TextIO | None) -> None:
    """A ``note:`` line on ``stream`` (the progress stream), else a RuntimeWarning."""
    if stream is not None:
        print(f"note: {message}", file=stream, flush=True)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=2)


class TrackerLogger(Callback):
    """Hand every history record to ``writers`` on a background thread (rank 0 only).

    ``queue_size`` bounds the records waiting (a full queue drops and counts, never blocks);
    ``close_timeout_s`` bounds the wait for the queue to drain at the end; records are
    written in batches, every ``batch_s`` seconds (MLflow's store pays a fixed cost per batch;
    TensorBoard's own writer flushes every 120 s). ``end_run``
    False leaves an MLflow run open after a successful fit (the pipeline adds the report,
    then closes it); a failing fit always closes it as FAILED. Problems are reported once
    each on ``stream`` (else as warnings) and kept in ``notes``.

    Example:
        >>> TrackerLogger([MlflowWriter("sqlite:///mlflow.db")], run_name="iris-1", queue_size=1000)  # doctest: +ELLIPSIS
        <...TrackerLogger...>
    """

    main_only = True

    def __init__(self, writers: Sequence[Writer], *, run_name: str = "run", params: dict[str, Any] | None = None,
                 queue_size: int = 10_000, close_timeout_s: float = 60.0, stream: TextIO | None = None,
                 end_run: bool = True, batch_s: float = 2.0) -> None:
        self.writers, self.run_name, self.params = list(writers), run_name, params or {}
        self.queue_size, self.close_timeout_s, self.stream, self.end_run = queue_size, close_timeout_s, stream, end_run
        self.batch_s = batch_s
        self.seen = self.dropped = self.written = 0
        self.failed: dict[str, str] = {}  # writer name -> what went wrong
        self.notes: list[str] = []
        # One producer (the loop) and one consumer (the writer thread): deque's append and popleft
        # are atomic, and cost the step a tenth of a locked queue.Queue's put.
        self._queue: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: str | None = None

    def _report(self, message: str) -> None:
        self.notes.append(message)
        report_note(message, self.stream)

    def _fail(self, writer: Writer, err: BaseException) -> None:
        if writer.name not in self.failed:
            self.failed[writer.name] = f"{type(err).__name__}: {err}"
            if hasattr(writer, "mark_failed"):
                writer.mark_failed(self.failed[writer.name])
            self._report(f"{writer.name} logging failed ({type(err).__name__}: {err}); training continues without it")

    def _drain(self) -> list[dict[str, Any]]:
        """Everything queued now."""
        batch: list[dict[str, Any]] = []
        while self._queue:
            batch.append(self._queue.popleft())
        return batch

    def _work(self) -> None:
        live = []
        for writer in self.writers:
            try:
                writer.open(self.run_name, self.params)
                live.append(writer)
            except Exception as err:  # noqa: BLE001 - any tracker failure is reported, never raised
                self._fail(writer, err)
        stopped = False
        while not stopped:
            # Sleep, then take the batch: a thread woken by every record would take the GIL
            # from the training loop 300 times an epoch (that cost 15% of a 2 ms step).
            stopped = self._stop.wait(self.batch_s)
            if not (batch := self._drain()):
                continue
            for writer in list(live):
                try:
                    writer.write(batch)
                except Exception as err:  # noqa: BLE001
                    live.remove(writer)
                    self._fail(writer, err)
            self.written += len(batch)
        for writer in live:
            try:
                writer.close(self._status)
            except Exception as err:  # noqa: BLE001
                self._fail(writer, err)

    def on_fit_start(self, state: TrainState) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="dlforge-trackers", daemon=True)
        self._thread.start()

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        if self._thread is None:
            return
        self.seen += 1
        if len(self._queue) < self.queue_size:
            self._queue.append(dict(record))  # a copy: the loop reuses nothing, but callbacks may add keys
        else:
            self.dropped += 1

    def close(self, status: str | None) -> None:
        """Stop taking records, wait up to ``close_timeout_s`` for the writers, report drops."""
        if self._thread is None:
            return
        self._status = status
        self._stop.set()  # wakes the writer thread now; it drains what is queued and closes
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            self._report(f"trackers still writing after {self.close_timeout_s:g} s; gave up on "
                         f"{len(self._queue)} queued records (history.jsonl has them all)")
        if self.dropped:
            names = ", ".join(w.name for w in self.writers)
            self._report(f"{self.dropped} of {self.seen} history records were not sent to {names}: the writer fell "
                         "behind (history.jsonl has them all; `dlforge runs export` replays a run)")
        self._thread = None

    def on_fit_end(self, state: TrainState) -> None:
        self.close("FINISHED" if self.end_run else None)

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        self.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


__all__ = ["MlflowWriter", "RUN_ARTIFACTS", "TRACKERS", "TensorBoardWriter", "TrackerLogger", "Writer",
           "check_trackers", "record_scalars", "report_note", "tracker_params"]
