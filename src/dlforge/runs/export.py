"""Replay finished runs into TensorBoard or MLflow: ``dlforge runs export RUN... --to mlflow``.

The writers ``train.log_to`` uses (:mod:`dlforge.train.trackers`) get the run's config
(params / hyperparameters), every record of ``history.jsonl`` and, for MLflow,
``report.html``, ``metrics.json`` and ``model/``; so an exported run reads back exactly like
one logged while it trained.

Example:
    >>> export_runs(["runs/iris-20240101-120000"], to="mlflow", uri="sqlite:///mlflow.db")  # doctest: +SKIP
    [Exported(run_dir=PosixPath('runs/iris-20240101-120000'), to='mlflow', where='sqlite:///mlflow.db run 3f2a...')]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlforge.config import flat_config
from dlforge.errors import ConfigError, DataError
from dlforge.train.trackers import MlflowWriter, TensorBoardWriter, Writer, check_trackers, tracker_params
from dlforge.user_files import read_yaml


@dataclass
class Exported:
    """One exported run: where its copy is (a TensorBoard folder, or an MLflow URI and run id)."""

    run_dir: Path
    to: str
    where: str


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory: ``run`` itself when it is a folder, else ``runs_dir/run``.

    Example:
        >>> resolve_run("no-such-run", "/nowhere")
        Traceback (most recent call last):
        ...
        dlforge.errors.DataError: no run directory 'no-such-run' (nor /nowhere/no-such-run) (pass a folder `dlforge train` wrote, or its name under --runs-dir)
    """
    for path in (Path(run), Path(runs_dir) / str(run)):
        if path.is_dir():
            if not (path / "config.yaml").is_file() or not (path / "history.jsonl").is_file():
                raise DataError(f"{path} is not a run directory: it has no config.yaml and history.jsonl",
                                hint="pass a folder `dlforge train` wrote")
            return path
    raise DataError(f"no run directory {str(run)!r} (nor {Path(runs_dir) / str(run)})",
                    hint="pass a folder `dlforge train` wrote, or its name under --runs-dir")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate((run_dir / "history.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise DataError(f"{run_dir / 'history.jsonl'} line {n} is not JSON",
                                hint="the run's history is damaged; export another run") from None
    return records


def _writer(run_dir: Path, to: str, uri: str | None, experiment: str) -> Writer:
    if to == "mlflow":
        return MlflowWriter(uri, experiment=experiment)
    log_dir = Path(uri) / run_dir.name if uri else run_dir / "tensorboard"
    if log_dir.is_dir() and any(log_dir.iterdir()):
        raise ConfigError(f"{log_dir} already holds TensorBoard events (train.log_to or an earlier export)",
                          hint="point --uri at another folder; TensorBoard reads it with --logdir")
    return TensorBoardWriter(log_dir)


def export_run(run_dir: str | Path, to: str, uri: str | None = None) -> Exported:
    """Replay one finished run through the ``to`` writer (see :func:`export_runs`)."""
    run_dir = Path(run_dir)
    config = read_yaml(run_dir / "config.yaml")
    history = _history(run_dir)
    writer = _writer(run_dir, to, uri, experiment=str(config.get("name") or "dlforge"))
    finished = (run_dir / "metrics.json").is_file()
    try:
        writer.open(run_dir.name, tracker_params(flat_config(config)))
        writer.write(history)
        if isinstance(writer, MlflowWriter):
            writer.log_artifacts(run_dir)
        writer.close("FINISHED" if finished else "FAILED")  # FAILED: the run never finished
    except Exception as err:  # noqa: BLE001 - no server, a full disk, a refused URI: one readable error
        if isinstance(writer, MlflowWriter) and writer.run_id is not None:
            writer.close("FAILED")
        raise ConfigError(f"could not export {run_dir} to {to}: {err}",
                          hint="check --uri (or MLFLOW_TRACKING_URI) and that the server or folder is reachable")
    if isinstance(writer, MlflowWriter):
        return Exported(run_dir, to, f"{writer.tracking_uri} run {writer.run_id}")
    return Exported(run_dir, to, str(writer.log_dir))


def export_runs(run_dirs: Sequence[str | Path], to: str, uri: str | None = None,
                runs_dir: str | Path = "runs") -> list[Exported]:
    """Replay finished runs into TensorBoard (``to="tensorboard"``: ``uri`` is a log folder
    that gets one sub-folder per run; None: each run's own ``tensorboard/``) or MLflow
    (``to="mlflow"``: ``uri`` a tracking URI; None: MLflow's default). A run is a folder or
    its name under ``runs_dir``; every run is checked before the first is written.

    Example:
        >>> export_runs(["runs/iris-20240101-120000"], to="tensorboard", uri="tb")  # doctest: +SKIP
        [Exported(run_dir=PosixPath('runs/iris-20240101-120000'), to='tensorboard', where='tb/iris-20240101-120000')]
    """
    check_trackers([to], key="--to")
    dirs = [resolve_run(r, runs_dir) for r in run_dirs]
    if to == "tensorboard":
        for d in dirs:
            _writer(d, to, uri, "")  # refuses an occupied folder before anything is written
    return [export_run(d, to, uri) for d in dirs]
