"""The ``dlforge`` command: thin wiring from Typer commands to dlforge's functions.

Input errors (config, data, artifact) print one clear message and a hint, no traceback,
and exit with status 2.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from dlforge.errors import DlforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dlforge: build, train, evaluate and serve deep-learning models.")
err_console = Console(stderr=True)
out_console = Console()


def _friendly(fn: Callable) -> Callable:
    """Turn dlforge's input errors into a message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DlforgeError as err:
            err_console.print(f"[bold red]error:[/] {err.message}", highlight=False, soft_wrap=True)
            if err.hint:
                err_console.print(f"[bold]hint:[/] {err.hint}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _print_metrics(title: str, metrics: dict[str, float], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    out_console.print(table)


def _report_run(outcome: Any, as_json: bool) -> None:
    result = outcome.result
    if result.nan_report:
        err_console.print(f"[bold red]training stopped:[/] {result.nan_report['message']}", highlight=False, soft_wrap=True)
    if not as_json:
        stop = f", stopped by {result.stop_reason}" if result.stop_reason else ""
        best = f", best epoch {result.best_epoch + 1}" if result.best_epoch is not None else ""
        out_console.print(f"run: {outcome.run_dir}  ({result.epochs_run} epochs{stop}{best})", highlight=False)
    test = {k: v for k, v in outcome.metrics.items() if k.startswith("test_")} or outcome.metrics
    _print_metrics("test metrics", test, as_json)
    if result.stop_reason == "non_finite":
        raise typer.Exit(code=1)


def _run(cfg: Any, runs_dir: Path, as_json: bool, resume: Path | None = None) -> None:
    from dlforge.pipeline import train_run

    outcome = train_run(cfg, runs_dir=runs_dir, resume=resume, progress=None if as_json else sys.stderr)
    _report_run(outcome, as_json)


@app.command()
@_friendly
def train(
    config: Path = typer.Argument(..., help="YAML run config"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key: --set train.epochs=5 (repeatable)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where run directories are created"),
    as_json: bool = typer.Option(False, "--json", help="print the test metrics as one JSON object"),
) -> None:
    """Train from a config; writes runs/<name>-<time>/ and prints the test metrics."""
    from dlforge.config import load_config

    _run(load_config(config, set_ or []), runs_dir, as_json)


@app.command()
@_friendly
def resume(
    run_dir: Path = typer.Argument(..., help="a run directory with checkpoints/"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Continue an interrupted run from its last checkpoint."""
    from dlforge.config import load_config

    _run(load_config(run_dir / "config.yaml"), run_dir.parent, as_json, resume=run_dir)


@app.command()
@_friendly
def quickstart(
    runs_dir: Path = typer.Option(Path("runs"), help="where the run directory is created"),
    as_json: bool = typer.Option(False, "--json", help="print the test metrics as one JSON object"),
) -> None:
    """Train a CNN on the digits set with early stopping and print its test metrics."""
    from dlforge.config import read_yaml, validate_config

    with resources.as_file(resources.files("dlforge") / "configs" / "quickstart.yaml") as path:
        cfg = validate_config(read_yaml(path))
    _run(cfg, runs_dir, as_json)


@app.command()
@_friendly
def predict(
    model_dir: Path = typer.Argument(..., help="an artifact folder (or a run directory)"),
    inputs: List[Path] = typer.Argument(..., help="a CSV file, or image files"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write predictions to this CSV"),
    as_json: bool = typer.Option(False, "--json", help="print predictions as JSON lines"),
) -> None:
    """Predict with a saved model on a CSV file or image files."""
    from dlforge.errors import DataError
    from dlforge.registry import load_artifact

    art = load_artifact(model_dir)
    for p in inputs:
        if not p.exists():
            raise DataError(f"input {p} does not exist", hint="pass a CSV file or image files")
    kind = art.preprocessing.get("encoding", {}).get("kind")
    if kind == "tabular":
        if len(inputs) != 1 or inputs[0].suffix.lower() != ".csv":
            raise DataError("this model takes tabular rows", hint="pass one CSV file with the training columns")
        x, ids = art.encode(inputs[0]), None
    else:
        x, ids = art.encode(inputs), [str(p) for p in inputs]
    pred = art.predict(x)
    rows = _prediction_rows(art, pred, ids or [str(i) for i in range(len(x))])
    if output is not None:
        with output.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        err_console.print(f"wrote {len(rows)} predictions to {output}")
    elif as_json:
        for row in rows:
            print(json.dumps(row))
    else:
        table = Table()
        for col in ("input", "prediction", "confidence") if art.task == "classification" else rows[0]:
            table.add_column(col)
        for row in rows:
            if art.task == "classification":
                table.add_row(row["input"], row["prediction"], f"{row['confidence']:.3f}")
            else:
                table.add_row(*(str(v) for v in row.values()))
        out_console.print(table)


def _prediction_rows(art: Any, pred: dict, ids: list[str]) -> list[dict[str, Any]]:
    if art.task != "classification":
        values = pred["values"].tolist()
        return [{"input": i, **{f"output_{j}": v for j, v in enumerate(vals)}} for i, vals in zip(ids, values)]
    probs = pred["probabilities"]
    names = art.class_names or [str(i) for i in range(probs.shape[1])]
    return [
        {"input": i, "prediction": label, "confidence": float(p.max()), **{f"p_{n}": float(v) for n, v in zip(names, p)}}
        for i, label, p in zip(ids, pred["labels"], probs)
    ]


@app.command()
@_friendly
def datasets(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the built-in datasets with their shape, task and size."""
    from dlforge.data import list_builtin

    entries = list_builtin()
    if as_json:
        print(json.dumps(entries))
        return
    table = Table(title="built-in datasets")
    for col in ("name", "task", "kind", "shape", "samples", "classes", "description"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["name"], e["task"], e["kind"], "x".join(map(str, e["shape"])), str(e["n_samples"]),
                      str(e["n_classes"] or "-"), e["description"])
    out_console.print(table)


if __name__ == "__main__":
    app()
