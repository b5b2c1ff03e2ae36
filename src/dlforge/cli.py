"""The ``dlforge`` command: thin wiring from Typer commands to dlforge's functions.

Input errors (config, data, artifact) print one clear message and a hint, no traceback,
and exit with status 2.
"""

from __future__ import annotations

import csv
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from dlforge._console import err_console, out_console
from dlforge._console import friendly as _friendly
from dlforge._console import say as _say
from dlforge.errors import DlforgeError, StorageError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dlforge: build, train, evaluate and serve deep-learning models.")


HEADLINE = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc", "ece", "mse", "rmse", "mae", "r2",
            # forecasts, in the series' own units (the plain regression metrics are in scaled units)
            "forecast_mae", "forecast_seasonal_naive_mae", "forecast_mae_ratio_vs_seasonal_naive")


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


def _run(cfg: Any, runs_dir: Path, as_json: bool, resume: Path | None = None) -> None:
    from dlforge.pipeline import train_run
    from dlforge.registry.disk import disk_full

    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    try:
        outcome = train_run(cfg, runs_dir=runs_dir, resume=resume, progress=None if as_json else sys.stderr)
    except OSError as err:  # a full disk is exit 2 and a way to continue, not a traceback
        if not disk_full(err):
            raise
        started = sorted(p for p in runs_dir.iterdir() if p not in before and p.is_dir()) if runs_dir.is_dir() else []
        raise _full_disk(err, resume or (started[-1] if started else None)) from None
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
    inputs: List[Path] = typer.Argument(..., help="a CSV file, image files, or text files (.txt: one text per line; .jsonl/.csv: a 'text' field)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write predictions to this CSV"),
    as_json: bool = typer.Option(False, "--json", help="print predictions as JSON lines"),
) -> None:
    """Predict with a saved model on a CSV file, image files or texts."""
    from dlforge.pipeline.predict import predict_files

    result = predict_files(model_dir, inputs)
    rows = result.rows
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
) -> None:
    """Evaluate a trained model: on its run's test split (rewriting the run's report), or
    on other data with --data (written to RUN/evaluations/<data>-<time>/, the run's own
    evaluation untouched)."""
    from dlforge.pipeline import evaluate_path

    evaluation, report = evaluate_path(path, data=data, target=target, out=out)
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


@app.command()
@_friendly
def cv(
    config: Path = typer.Argument(..., help="YAML run config"),
    folds: int = typer.Option(5, "--folds", "-k", help="number of folds"),
    stratified: bool = typer.Option(True, "--stratified/--plain", help="stratified folds (classification)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key (repeatable)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
) -> None:
    """k-fold cross-validation of a config: per-fold metrics, mean and spread."""
    from dlforge.config import load_config
    from dlforge.evaluate import cross_validate

    result = cross_validate(load_config(config, set_ or []), k=folds, stratified=stratified,
                            progress=None if as_json else sys.stderr)
    payload = result.to_dict()
    if output is not None:
        output.write_text(json.dumps(payload, indent=2))
    if as_json:
        print(json.dumps(payload))
        return
    keys = [k for k in ("accuracy", "f1_macro", "roc_auc", "log_loss", "mse", "mae", "r2") if k in result.mean]
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
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="trials for this worker (default tune.n_trials)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop starting trials after this many seconds"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
) -> None:
    """Search hyperparameters with Optuna; writes a report and the best config as YAML."""
    from dlforge.tune import tune_cli
    from dlforge.tune.study import result_dict

    result = tune_cli(config, set_ or [], runs_dir, storage, resume, n_trials, timeout)
    if as_json:
        print(json.dumps(result_dict(result)))


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
    from dlforge.data.augment import preview_grid
    from dlforge.errors import ConfigError
    from dlforge.pipeline import load_data
    from dlforge.pipeline.run import batch_augment

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
    from dlforge.pipeline.ensemble import ensemble_cli

    ensemble_cli([str(p) for p in paths], out, mode=mode, stream=sys.stdout)


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
    from dlforge.pipeline.learning_curve import learning_curve_cli

    learning_curve_cli(config, sizes, set_ or [], out, seeds=seeds, metric=metric, stream=sys.stdout)


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


from dlforge.registry.cli import keys_app, registry_app  # noqa: E402  (light: imports the store lazily)
from dlforge.serve.cli import serve_command  # noqa: E402  (light: imports FastAPI lazily)

app.add_typer(registry_app, name="registry", help="The versioned model store: register, list, alias, roll back.")
app.add_typer(keys_app, name="keys", help="API keys for dlforge serve (stored hashed).")
app.command("serve")(serve_command)

lab_app = typer.Typer(no_args_is_help=True, help="The lab: thirty claims of the guide, each tested by a measured experiment.")
app.add_typer(lab_app, name="lab")


@lab_app.command("list")
@_friendly
def lab_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the lab's experiments by level."""
    from dlforge.lab import available_topics, experiment
    from dlforge.lab.finding import level_of

    rows = [{"topic": t, "level": level_of(t), "title": experiment(t).TITLE, "claim": experiment(t).CLAIM}
            for t in available_topics()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="the lab")
    for col in ("topic", "level", "title", "claim"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["topic"]), r["level"], r["title"], r["claim"])
    out_console.print(table)


def _run_findings(topics: list[int], budget: str, quiet: bool) -> list:
    from dlforge.lab import available_topics, run_topic

    findings = []
    for t in topics or available_topics():
        if not quiet:
            _say(err_console, f"running topic {t} ({budget})...")
        findings.append(run_topic(t, budget=budget))
    return findings


@lab_app.command("run")
@_friendly
def lab_run(
    topics: List[int] = typer.Argument(None, help="topic numbers (default: all)"),
    budget: str = typer.Option("quick", help="quick (seconds each) or full (minutes)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of findings"),
) -> None:
    """Run experiments and print their findings and verdicts."""
    findings = _run_findings(topics or [], budget, as_json)
    if as_json:
        print(json.dumps([f.to_dict() for f in findings]))
        return
    table = Table(title=f"lab findings ({budget})")
    for col in ("topic", "level", "title", "verdict", "checks held", "seconds"):
        table.add_column(col)
    for f in findings:
        results = f.check_results()
        held = sum(c["holds"] for c in results)
        table.add_row(str(f.topic), f.level, f.title, f.verdict, f"{held}/{len(results)}", f"{f.seconds:.1f}")
    out_console.print(table)
    for f in findings:  # what did not hold is the interesting part
        for c in f.check_results():
            if not c["holds"]:
                _say(out_console, f"topic {f.topic}: {c['check']} did not hold (measured {c['value']:.4g})")
    _say(out_console, "numbers, rules and figures: dlforge lab run --json, or dlforge lab report")


@lab_app.command("report")
@_friendly
def lab_report(
    topics: List[int] = typer.Argument(None, help="topic numbers (default: all)"),
    budget: str = typer.Option("quick", help="quick or full"),
    output: Path = typer.Option(Path("lab_report.html"), "--output", "-o"),
) -> None:
    """Run experiments and write one HTML page with every finding."""
    from dlforge.lab.report import write_lab_report

    path = write_lab_report(_run_findings(topics or [], budget, False), output)
    _say(out_console, f"wrote {path}")


if __name__ == "__main__":
    app()
