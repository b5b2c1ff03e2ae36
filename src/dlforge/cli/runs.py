"""``dlforge train | resume | quickstart | predict | evaluate | report``: one run's life.

Each command parses its options, calls one pipeline function, and prints the result
(tables on stdout, notes and diagnoses on stderr; ``--json`` prints one JSON object).

Example:
    $ dlforge train examples/iris_mlp.yaml --set train.epochs=5
    $ dlforge predict runs/iris-20240101 flowers.csv --json
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from dlforge.cli._common import err_console, out_console
from dlforge.cli._common import friendly as _friendly
from dlforge.cli._common import say as _say
from dlforge.errors import DlforgeError, StorageError

app = typer.Typer()  # merged into dlforge.cli's app: these are top-level commands


HEADLINE = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc", "ece", "mse", "rmse", "mae", "r2",
            # forecasts, in the series' own units (the plain regression metrics are in scaled units)
            "forecast_mae", "forecast_seasonal_naive_mae", "forecast_mae_ratio_vs_seasonal_naive",
            # segmentation: the held-out regions, and the Otsu threshold on the same regions
            "dice", "iou", "hd95", "ap50", "dsb", "otsu_dice")


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
        _say(err_console, result.nan_report["message"], "training stopped:", "bold red")
    if not as_json:
        stop = f", stopped by {result.stop_reason}" if result.stop_reason else ""
        best = f", best epoch {result.best_epoch + 1}" if result.best_epoch is not None else ""
        _say(out_console, f"{outcome.run_dir}  ({result.epochs_run} epochs{stop}{best})", "run:")
    test = {k: v for k, v in outcome.metrics.items() if k.startswith("test_")} or outcome.metrics
    if not as_json:  # the headline numbers; --json, metrics.json and the report have them all
        test = {k: v for k, v in test.items() if k.split("_", 1)[1] in HEADLINE}
        if "target_standardize" in getattr(getattr(outcome, "prepared", None), "preprocessing", {}):
            # the other numbers are in the target's units; the loss is what training minimised
            test = {f"{k} (standardised target)" if k.endswith("_loss") else k: v for k, v in test.items()}
    if test or as_json:
        _print_metrics("test metrics", test, as_json)
    baselines = getattr(outcome, "baselines", None)
    if baselines is not None and not as_json:  # --json prints one object; baselines.json has them
        from dlforge.evaluate.baselines import summary_lines

        for line in summary_lines(baselines):
            _say(out_console, line, "baseline:")
    if not as_json:
        from dlforge.train.health import format_diagnoses

        _say(err_console, format_diagnoses(outcome.diagnoses) if outcome.diagnoses else "no problems detected",
             "diagnosis:")
        _say(out_console, str(outcome.run_dir / "report.html"), "report:")
    if result.stop_reason == "non_finite":
        raise typer.Exit(code=1)


def _run(cfg: Any, runs_dir: Path, as_json: bool, resume: Path | None = None, reshard: bool = False) -> None:
    from dlforge.pipeline import train_run
    from dlforge.registry.disk import disk_full

    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    try:
        outcome = train_run(cfg, runs_dir=runs_dir, resume=resume, progress=None if as_json else sys.stderr,
                            reshard=reshard)
    except OSError as err:  # a full disk is exit 2 and a way to continue, not a traceback
        if not disk_full(err):
            raise
        started = sorted(p for p in runs_dir.iterdir() if p not in before and p.is_dir()) if runs_dir.is_dir() else []
        raise _full_disk(err, resume or (started[-1] if started else None)) from None
    if outcome.main:  # the other ranks of a data-parallel run stay quiet
        _report_run(outcome, as_json)


def _full_disk(err: OSError, run: Path | None) -> StorageError:
    """The StorageError for training stopped by a full disk: checkpoints are written atomically,
    so the last one is intact and ``dlforge resume`` continues from it."""
    from dlforge.train.callbacks import find_last_checkpoint

    where = f" writing {err.filename}" if err.filename else ""
    hint = "free some space and train again"
    if run is not None:
        try:
            find_last_checkpoint(run)
            hint = f"free some space, then continue from the last checkpoint: dlforge resume {run}"
        except DlforgeError:
            hint = f"free some space and train again ({run} holds no checkpoint yet; remove it)"
    return StorageError(f"the disk is full ({err.strerror or 'no space left'}){where}; training stopped", hint=hint)


@app.command()
@_friendly
def train(
    config: Path = typer.Argument(..., help="YAML run config"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key: --set train.epochs=5 (repeatable)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where run directories are created"),
    as_json: bool = typer.Option(False, "--json", help="print the test metrics as one JSON object"),
    nproc: int = typer.Option(1, "--nproc", help="data-parallel processes on this machine (launches torchrun; "
                                                 "gloo on the CPU, NCCL with one GPU each)"),
    nnodes: int = typer.Option(1, "--nnodes", help="machines in the run; start the same command on each"),
    node_rank: int = typer.Option(0, "--node-rank", help="this machine's number, 0 to nnodes-1"),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint",
                                                help="HOST:PORT where the machines meet (c10d), the same on each"),
) -> None:
    """Train from a config; writes runs/<name>-<time>/ and prints the test metrics.

    `--nproc N` trains on N processes with the same global train.batch_size (each takes
    batch_size / N): `dlforge train c.yaml --nproc 2`."""
    from dlforge.config import load_config

    cfg = load_config(config, set_ or [])  # a config error shows here, before any process starts
    argv = ["train", str(config), *(f"--set={s}" for s in set_ or []), f"--runs-dir={runs_dir}", *(["--json"] if as_json else [])]
    _launch(argv, nproc, nnodes, node_rank, rdzv_endpoint)
    _run(cfg, runs_dir, as_json)
    _end_if_worker()


@app.command()
@_friendly
def resume(
    run_dir: Path = typer.Argument(..., help="a run directory with checkpoints/"),
    as_json: bool = typer.Option(False, "--json"),
    nproc: int = typer.Option(1, "--nproc", help="processes on this machine; the run's own number for a "
                                                 "bit-identical continuation"),
    nnodes: int = typer.Option(1, "--nnodes"),
    node_rank: int = typer.Option(0, "--node-rank"),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint"),
    reshard: bool = typer.Option(False, "--reshard", help="continue on a different number of processes "
                                                          "(the data order is re-sharded; the history notes it)"),
) -> None:
    """Continue an interrupted run from its last checkpoint."""
    from dlforge.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    argv = ["resume", str(run_dir), *(["--json"] if as_json else []), *(["--reshard"] if reshard else [])]
    _launch(argv, nproc, nnodes, node_rank, rdzv_endpoint)
    _run(cfg, run_dir.parent, as_json, resume=run_dir, reshard=reshard)
    _end_if_worker()


def _end_if_worker() -> None:
    """In a torchrun worker whose run has finished: exit now (see ``end_worker``: the teardown
    after the process group is gone could abort a rank that had done its work)."""
    from dlforge.train.distributed import end_worker, in_torchrun_world

    if in_torchrun_world():
        end_worker(0)


def _launch(argv: list[str], nproc: int, nnodes: int, node_rank: int, endpoint: str | None) -> None:
    """Run ``dlforge argv`` under torchrun and exit with its status, when more than one process
    is asked for and this process was not itself started by torchrun."""
    from dlforge.train.distributed import TORCHRUN_ENV, torchrun_command

    command = torchrun_command(argv, nproc=nproc, nnodes=nnodes, node_rank=node_rank, endpoint=endpoint)
    if (nproc == 1 and nnodes == 1) or all(k in os.environ for k in TORCHRUN_ENV):
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    raise typer.Exit(code=subprocess.run(command, env=env).returncode)


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
    inputs: List[Path] = typer.Argument(..., help="a CSV file, image files, or text files (.txt: one text per line; .jsonl/.csv: a 'text' field)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="write predictions to this CSV (segmentation: the mask image, or a folder)"),
    as_json: bool = typer.Option(False, "--json", help="print predictions as JSON lines"),
    runtime: str = typer.Option("torch", "--runtime", help="torch, or onnxruntime: run the artifact's model.onnx "
                                                          "(made by dlforge export)"),
) -> None:
    """Predict with a saved model on a CSV file, image files or texts.

    A segmentation model takes images of any size and writes masks: `dlforge predict RUN cells.tif -o mask.png`."""
    from dlforge.pipeline.predict import predict_files, write_masks

    result = predict_files(model_dir, inputs, runtime=runtime)
    rows = result.rows
    if result.masks is not None and output is not None:
        for path in write_masks(result, output):
            _say(err_console, f"wrote {path}")
        output = None  # the areas still print below
    if output is not None:
        with output.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        _say(err_console, f"wrote {len(rows)} predictions to {output}")
    elif as_json:
        for row in rows:
            print(json.dumps(row))
    else:
        _print_predictions(rows, result.key, result.task, shorten=result.kind == "text")


def _print_predictions(rows: list[dict[str, Any]], key: str, task: str, shorten: bool) -> None:
    """The predictions as a table; paths and ids are folded onto more lines, never cut
    (a text is shortened here only: --json and --output keep it whole)."""
    columns = [key, "prediction", "confidence"] if task == "classification" else list(rows[0])
    table = Table()
    table.add_column(key, overflow="fold")
    for col in columns[1:]:
        table.add_column(col, justify="right" if col != "prediction" else "left")
    for row in rows:
        first = str(row[key])
        if shorten and len(first) > 60:
            first = first[:57] + "..."
        table.add_row(first, *(_table_cell(c, row[c]) for c in columns[1:]))
    out_console.print(table)


def _table_cell(column: str, value: Any) -> str:
    if column == "confidence":
        return f"{value:.3f}"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@app.command("evaluate")
@_friendly
def evaluate_cmd(
    path: Path = typer.Argument(..., help="a run directory or an artifact folder"),
    data: Optional[str] = typer.Option(None, "--data", help="evaluate on this source instead (built-in name or path)"),
    target: Optional[str] = typer.Option(None, "--target",
                                         help="target column of a --data CSV (default: the model's own)"),
    out: Optional[Path] = typer.Option(None, "--out",
                                       help="with --data: write the evaluation under this folder (default: RUN/evaluations/)"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as one JSON object"),
    runtime: str = typer.Option("torch", "--runtime", help="torch, or onnxruntime: score the artifact's model.onnx"),
) -> None:
    """Evaluate a trained model: on its run's test split (rewriting the run's report), or
    on other data with --data (written to RUN/evaluations/<data>-<time>/, the run's own
    evaluation untouched)."""
    from dlforge.pipeline import evaluate_path

    evaluation, report = evaluate_path(path, data=data, target=target, out=out, runtime=runtime)
    metrics = evaluation.metrics if as_json else {k: v for k, v in evaluation.metrics.items() if k != "n"}
    _print_metrics(f"evaluation ({evaluation.metrics.get('n', 0):.0f} samples)", metrics, as_json)
    if as_json:
        return
    if report is None:
        _say(err_console, "nothing written: this artifact folder has no run; pass --out DIR to keep the evaluation",
             "note:")
    elif data is not None:
        _say(out_console, str(report.parent), "wrote:")
    else:
        _say(out_console, str(report), "report:")


@app.command()
@_friendly
def report(run_dir: Path = typer.Argument(..., help="a run directory")) -> None:
    """(Re)write a run's self-contained report.html."""
    from dlforge.evaluate.report import write_report

    _say(out_console, str(write_report(run_dir)), "report:")
