"""``dlforge runs export RUN... --to tensorboard|mlflow``: finished runs into a tracker.

The command parses its options, calls :func:`dlforge.runs.export.export_runs` and prints
where each copy went; the ``dlforge runs`` group registers :func:`runs_export`.

Example:
    $ dlforge runs export iris-20240101-120000 --to mlflow --uri sqlite:///mlflow.db
    $ dlforge runs export runs/iris-* --to tensorboard --uri tb && tensorboard --logdir tb
"""

from __future__ import annotations

from typing import List, Optional

import typer

from dlforge.cli._common import friendly, out_console
from dlforge.cli._common import say as _say


@friendly
def runs_export(
    runs: List[str] = typer.Argument(..., help="run directories, or run names under --runs-dir"),
    to: str = typer.Option(..., "--to", help="tensorboard or mlflow"),
    uri: Optional[str] = typer.Option(
        None, "--uri", help="mlflow: the tracking URI [default: MLFLOW_TRACKING_URI, else ./mlflow.db]; "
        "tensorboard: a log folder, one sub-folder per run [default: each run's tensorboard/]"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="the folder `dlforge train` writes runs to"),
) -> None:
    """Replay finished runs (config, history, report, model) into TensorBoard or MLflow."""
    from dlforge.runs.export import export_runs

    for done in export_runs(runs, to, uri, runs_dir=runs_dir):
        _say(out_console, done.where, f"{done.run_dir.name} ->")
