"""``dlforge cv | tune | augment-preview | ensemble | learning-curve | datasets``: many runs
from one config, and what the built-in data looks like.

The library functions return results (``cross_validate``, ``run_tune``, ``build_ensemble``,
``learning_curve``); the printing of those results lives here.

Example:
    $ dlforge cv examples/iris_mlp.yaml --folds 5
    $ dlforge learning-curve examples/digits_cnn.yaml --sizes 50,100,200 --seeds 0,1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import typer
from rich.table import Table

from dlforge.cli._common import err_console, out_console
from dlforge.cli._common import friendly as _friendly
from dlforge.cli._common import say as _say
from dlforge.errors import ConfigError

app = typer.Typer()  # merged into dlforge.cli's app: these are top-level commands


@app.command()
@_friendly
def cv(
    config: Path = typer.Argument(..., help="YAML run config"),
    folds: int = typer.Option(5, "--folds", "-k", help="number of folds"),
    stratified: bool = typer.Option(True, "--stratified/--plain", help="stratified folds (classification)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key (repeatable)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
    report: Optional[Path] = typer.Option(None, "--report", help="segmentation: write an HTML report with overlays"),
) -> None:
    """k-fold cross-validation of a config: per-fold metrics, mean and spread.

    Segmentation data get spatial folds (quadrants of one image for k=4) and ``--report``."""
    from dlforge.config import load_config
    from dlforge.pipeline.crossval import cross_validate

    cfg = load_config(config, set_ or [])
    if report is not None and not report.parent.is_dir():
        raise ConfigError(f"folder {report.parent} for --report does not exist", hint="create it, or pick another path")
    result = cross_validate(cfg, k=folds, stratified=stratified, progress=None if as_json else sys.stderr)
    if report is not None:
        if result.segmentation is None:
            raise ConfigError("--report is for segmentation cross-validation", hint="use dlforge train for a run report")
        from dlforge.evaluate.report import render_report
        from dlforge.train.state_io import atomic_write

        atomic_write(report, render_report(config=cfg.model_dump(mode="json"), history=[],
                                           evaluation=result.segmentation, title=f"{cfg.name}: {folds}-fold CV").encode())
    payload = result.to_dict()
    if payload.get("segmentation"):  # the overlays are in the --report page, not the JSON
        payload["segmentation"] = {k: v for k, v in payload["segmentation"].items() if k != "overlays"}
    if output is not None:
        output.write_text(json.dumps(payload, indent=2))
    if as_json:
        print(json.dumps(payload))
        return
    keys = [k for k in ("accuracy", "f1_macro", "roc_auc", "log_loss", "mse", "mae", "r2",
                        "dice", "iou", "hd95", "ap50", "dsb", "otsu_dice") if k in result.mean]
    table = Table(title=f"{folds}-fold cross-validation ({'stratified' if stratified else 'plain'})")
    table.add_column("fold")
    for k in keys:
        table.add_column(k, justify="right")
    if result.class_ratios:
        table.add_column("held-out class ratio")
    for i, fold in enumerate(result.folds):
        ratio = [" ".join(f"{r:.2f}" for r in result.class_ratios[i])] if result.class_ratios else []
        table.add_row(str(i + 1), *(f"{fold[k]:.4f}" for k in keys), *ratio)
    table.add_row("mean ± std", *(f"{result.mean[k]:.4f} ± {result.std[k]:.4f}" for k in keys),
                  *([" ".join(f"{r:.2f}" for r in result.overall_ratio)] if result.class_ratios else []))
    out_console.print(table)


@app.command()
@_friendly
def tune(
    config: Path = typer.Argument(..., help="YAML run config with a tune: section"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key (repeatable)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where trial runs and the tuning report go"),
    storage: Optional[str] = typer.Option(None, "--storage", help="SQLAlchemy URL (default: SQLite under --runs-dir)"),
    resume: bool = typer.Option(False, "--resume", help="continue an existing study (also: join other workers)"),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="trials this command adds, all its --workers together (default tune.n_trials)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop starting trials after this many seconds"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
    workers: int = typer.Option(1, "--workers", help="local worker processes sharing the study's trials"),
    multi_host: bool = typer.Option(False, "--multi-host", help="workers on other machines join this study "
                                    "(refuses SQLite: use a PostgreSQL --storage)"),
) -> None:
    """Search hyperparameters with Optuna; writes a report and the best config as YAML.

    --workers N runs N local processes that together run --n-trials trials. Workers on other
    machines join with the same --storage (a database server, e.g. postgresql://user@host/db)
    plus --resume and --multi-host; each command adds its own --n-trials to the study."""
    import time

    from dlforge.config import apply_overrides, read_yaml
    from dlforge.tune import result_dict, run_tune

    raw = apply_overrides(read_yaml(config), set_ or [])
    started = time.time()
    result = run_tune(raw, runs_dir=runs_dir, storage=storage, resume=resume, n_trials=n_trials, timeout=timeout,
                      progress=sys.stderr, workers=workers, multi_host=multi_host)
    # --json: stdout holds the one JSON object; the summary goes to stderr beside the progress lines
    _print_study(result, (raw.get("tune") or {}).get("metric", "val_loss"), time.time() - started,
                 err_console if as_json else out_console)
    if as_json:
        print(json.dumps(result_dict(result)))
    for failure in result.worker_failures:  # the study and the outputs are intact; say what went wrong
        _say(err_console, failure, "error:", "bold red")
    if result.worker_failures:
        raise typer.Exit(code=1)


def _print_study(result: Any, metric: str, seconds: float, console: Any = out_console) -> None:
    """The study's counts, its best trial as a table, then its storage and files as plain lines."""
    from dlforge.tune.study import short_value

    counts = f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed"
    _say(console, f"study {result.study_name}: {counts} ({seconds:.0f} s)")
    table = Table()
    table.add_column("best trial")
    if result.best_trial is not None:
        table.add_column(metric, justify="right")
        for key in result.best_params:
            table.add_column(key, justify="right")
        table.add_row(str(result.best_trial), f"{result.best_value:.6g}", *map(short_value, result.best_params.values()))
    else:
        table.add_row("none complete")
    console.print(table)
    # Paths and URLs as plain lines: a table cell would wrap or cut them
    for label, value in (("storage", result.storage), *((k, str(v)) for k, v in result.files.items())):
        _say(console, f"{label}: {value}")


@app.command("augment-preview")
@_friendly
def augment_preview(
    config: Path = typer.Argument(..., help="YAML run config with a data.augment section"),
    out: Path = typer.Option(Path("augment_preview.png"), "--out", "-o", help="PNG to write"),
    n: int = typer.Option(8, "--n", help="samples per row"),
    rows: int = typer.Option(3, "--rows", help="rows of augmented versions"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key (repeatable)"),
) -> None:
    """Write a grid image: a row of training samples, then rows of their augmented versions."""
    import torch

    from dlforge.config import load_config
    from dlforge.data.augment_preview import preview_grid
    from dlforge.pipeline import load_data
    from dlforge.pipeline.fit_options import batch_augment

    cfg = load_config(config, set_ or [])
    prepared = load_data(cfg)
    augment = batch_augment(cfg, prepared)
    if augment is None:
        raise ConfigError("data.augment turns nothing on", hint="set data.augment.preset: auto, or some transforms")
    torch.manual_seed(cfg.seed)
    x, y = prepared.train.tensors
    path = preview_grid(x, augment, out, n=n, rows=rows, y=y[:n], stats=prepared.preprocessing.get("standardize"))
    _say(out_console, str(path), "wrote")


@app.command()
@_friendly
def ensemble(
    paths: List[Path] = typer.Argument(..., help="two or more run directories or artifact folders"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the ensemble artifact"),
    mode: str = typer.Option("average", "--mode", help="average (mean probability) or vote (majority)"),
) -> None:
    """Combine trained models into one artifact (averaging or voting) and score it."""
    from dlforge.pipeline.ensemble import build_ensemble

    _print_ensemble(build_ensemble([str(p) for p in paths], out, mode=mode))


ENSEMBLE_METRICS = ("accuracy", "log_loss", "rmse", "r2")  # what `dlforge ensemble` prints, when present


def _print_ensemble(outcome: Any) -> None:
    """Where the ensemble went, then each member's, the mean member's and its own scores."""
    print(f"ensemble of {outcome.n_members} members ({outcome.mode}) saved to {outcome.path}")
    if outcome.split is None:
        print("the members come from different runs or bare artifact folders, so there is no shared "
              f"split to score them on; run `dlforge evaluate {outcome.path} --data ...`")
        return
    scores = outcome.ensemble
    shown = [k for k in ENSEMBLE_METRICS if k in scores]
    mean = {k: sum(s[k] for s in outcome.members) / len(outcome.members) for k in shown}
    rows = [*((f"member {i}", s) for i, s in enumerate(outcome.members)), ("mean member", mean), ("ensemble", scores)]
    print(f"{outcome.split} split (n={int(scores['n'])})")
    print(f"  {'':<12}" + "".join(f"{k:>10}" for k in shown))
    for label, row in rows:
        print(f"  {label:<12}" + "".join(f"{row[k]:>10.4f}" for k in shown))


@app.command("learning-curve")
@_friendly
def learning_curve_cmd(
    config: Path = typer.Argument(..., help="YAML run config"),
    sizes: str = typer.Option(..., "--sizes", help="training-set sizes, e.g. 50,100,200,400"),
    seeds: str = typer.Option("0", "--seeds", help="seeds to average over, e.g. 0,1,2"),
    metric: Optional[str] = typer.Option(None, "--metric", help="default: accuracy (classification) or r2"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default runs/<name>-learning-curve)"),
) -> None:
    """Train at each training-set size and plot train and test scores."""
    from dlforge.config import load_config
    from dlforge.pipeline.learning_curve import learning_curve, write_learning_curve

    cfg = load_config(config, set_ or [])
    curve = learning_curve(cfg, parse_int_list(sizes, "--sizes"), seeds=parse_int_list(seeds, "--seeds"),
                           metric=metric, progress=sys.stdout)  # one line per size
    paths = write_learning_curve(curve, out or Path("runs") / f"{cfg.name}-learning-curve")
    print(f"learning curve written to {paths['html']} and {paths['json']}", flush=True)


def parse_int_list(text: str | Sequence[int], option: str) -> list[int]:
    """``"50,100,200"`` -> ``[50, 100, 200]``; a bad entry is a ConfigError naming ``option``.

    Example:
        >>> parse_int_list("50, 100,200", "--sizes")
        [50, 100, 200]
    """
    if not isinstance(text, str):
        return [int(v) for v in text]
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise ConfigError(f"{option} holds {bad!r}, not a whole number",
                          hint=f"write {option} as comma-separated integers, e.g. {option} 50,100,200") from None


def _text_and_series_sets() -> list[dict[str, Any]]:
    """The built-in text sets and time series, in list_builtin's format."""
    from dlforge.data.text import TEXT_BUILTINS
    from dlforge.data.timeseries import SERIES, load_series

    entries = []
    for name, load in TEXT_BUILTINS.items():
        table = load()
        labelled = table.class_names is not None
        entries.append({"name": name, "task": "classification" if labelled else "mlm", "kind": "text",
                        "shape": ["max_len"], "n_samples": len(table),
                        "n_classes": len(table.class_names) if labelled else None,
                        "description": (load.__doc__ or "").strip().splitlines()[0]})
    for name in SERIES:
        series = load_series(name)
        entries.append({"name": name, "task": "regression", "kind": "sequence", "shape": ["window", 1],
                        "n_samples": len(series.values), "n_classes": None,
                        "description": series.description.splitlines()[0]})
    return entries


@app.command()
@_friendly
def datasets(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the built-in datasets with their shape, task and size."""
    from dlforge.data import list_builtin

    entries = list_builtin() + _text_and_series_sets()
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
