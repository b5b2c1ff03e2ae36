"""``dlforge runs list | show | compare | export``: the run index from the shell.

A Typer group :mod:`dlforge.cli` mounts as ``dlforge runs``. Each command calls one
function of :mod:`dlforge.runs.queries` and prints its result (``--json``: one JSON value).

Example:
    $ dlforge runs list --filter 'val_accuracy>0.9 and model.arch=mlp' --sort -val_accuracy
    $ dlforge runs show iris-20240101-120000 --json
    $ dlforge runs compare iris-20240101-120000 iris-20240101-130000 -o compare.html
    $ dlforge runs export iris-20240101-120000 --to tensorboard
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer
from rich import box
from rich.table import Table

from dlforge.cli._common import friendly, out_console
from dlforge.cli._common import say as _say
from dlforge.cli.runs_export import runs_export

runs_index_app = typer.Typer(add_completion=False, no_args_is_help=True,
                             help="The run index: list, show and compare training runs.")
# The metric columns `runs list` shows, those present, at most MAX_METRIC_COLUMNS of them.
LIST_METRICS = ("val_accuracy", "test_accuracy", "val_loss", "test_r2", "test_rmse", "test_dice", "test_f1_macro",
                "test_loss")
MAX_METRIC_COLUMNS = 3


def _runs_dir_opt() -> Any:
    return typer.Option("runs", "--runs-dir", help="the folder `dlforge train` writes runs to")


def _registry_opt() -> Any:
    return typer.Option(None, "--registry", envvar="DLFORGE_REGISTRY", show_envvar=True,
                        help="registry to link runs to [default: registry/registry.db when it exists]")


def _fmt(value: Any) -> str:
    from dlforge.evaluate.report import format_value

    return format_value(value)


@runs_index_app.command("list")
@friendly
def list_command(
    runs_dir: str = _runs_dir_opt(),
    where: Optional[str] = typer.Option(None, "--filter", help="e.g. 'val_accuracy>0.9 and model.arch=cnn'"),
    sort: Optional[str] = typer.Option(None, "--sort", help="a metric or config key; -KEY sorts descending"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """List the runs: status, start, the config keys that differ between them, main metrics."""
    from dlforge.runs.compare import differing_keys
    from dlforge.runs.queries import list_runs

    records = list_runs(runs_dir, where=where, sort=sort, registry=registry)
    if as_json:
        print(json.dumps([r.to_dict() for r in records], default=str))
        return
    diff = differing_keys(records)
    fits = max(1, (out_console.width - 75) // 14)  # a narrow terminal keeps room for what differs
    first = [sort.lstrip("-")] if sort and any(sort.lstrip("-") in r.metrics for r in records) else []
    metrics = list(dict.fromkeys(k for k in [*first, *LIST_METRICS] if any(k in r.metrics for r in records)))
    metrics = metrics[:min(fits, MAX_METRIC_COLUMNS)]
    table = Table(title=f"{len(records)} runs in {runs_dir}" + (f" matching {where}" if where else ""))
    table = Table(title=table.title, box=box.SIMPLE_HEAD, pad_edge=False)  # narrow terminals: few borders
    table.add_column("run", overflow="fold", min_width=12)
    table.add_column("status", no_wrap=True)
    table.add_column("started", no_wrap=True)
    for k in metrics:
        table.add_column(k, justify="right", no_wrap=True, min_width=min(len(k), 13))
    table.add_column("differs", min_width=10)
    for r in records:
        differs = ", ".join(f"{k}={_fmt(r.config.get(k))}" for k in diff)
        table.add_row(r.name, r.status, (r.started or "")[5:16].replace("T", " "),
                      *[_fmt(r.metrics.get(k)) if k in r.metrics else "" for k in metrics], differs)
    out_console.print(table)


@runs_index_app.command("show")
@friendly
def show_command(
    run: str = typer.Argument(..., help="a run's folder name (as `runs list` prints it) or path"),
    runs_dir: str = _runs_dir_opt(),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """Everything the index knows about one run, the registry versions made from it included."""
    from dlforge.runs.queries import show_run

    rec = show_run(runs_dir, run, registry=registry)
    if as_json:
        print(json.dumps(rec.to_dict(), default=str))
        return
    facts = Table(title=f"run {rec.name}", show_header=False)
    for key in ("status", "started", "finished", "stop_reason", "epochs_run", "best_epoch", "config_hash",
                "data_fingerprint", "code_version", "study", "path"):
        facts.add_row(key, _fmt(getattr(rec, key)))
    facts.add_row("registry", ", ".join(f"{v['name']} v{v['version']}" for v in rec.registry) or "none")
    out_console.print(facts)
    for title, values in (("metrics", rec.metrics), ("best epoch values", rec.best), ("last epoch", rec.final),
                          ("config", rec.config)):
        if values:
            table = Table(title=title)
            table.add_column("key")
            table.add_column("value", justify="right")
            for k, v in values.items():
                table.add_row(k, _fmt(v))
            out_console.print(table)


@runs_index_app.command("compare")
@friendly
def compare_command(
    runs: List[str] = typer.Argument(..., help="two or more runs, or a tuning study's name"),
    out: str = typer.Option("compare.html", "-o", "--out", help="the HTML page to write"),
    runs_dir: str = _runs_dir_opt(),
) -> None:
    """One HTML page: overlaid curves, the config keys that differ, metrics (with intervals over seeds)."""
    from dlforge.runs.queries import compare_runs

    path, records = compare_runs(runs_dir, runs, out)
    _say(out_console, f"{path} ({len(records)} runs)", "compare:")


runs_index_app.command("export")(runs_export)  # replay finished runs into TensorBoard or MLflow
