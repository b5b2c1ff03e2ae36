"""``dlforge runs compare``: several runs on one self-contained HTML page.

Sections: overlaid training curves (train and val loss, and the main metric, per epoch,
one colour per run), the config keys that differ between the runs (only those), each
run's reported metrics (``metrics.json``) and best epoch values, and, when the runs differ
only by ``seed``, each metric's mean with a 95% t interval
(:func:`dlforge.evaluate.intervals.measure`). When the runs are trials of one tuning study
whose outputs are beside them (``<runs>/<study>-tune/trials.json``), the page adds the
study's parallel-coordinates view (:func:`dlforge.evaluate.parallel.parallel_coordinates`).
Like the run report, the page inlines its CSS and figures and a Content-Security-Policy
forbids any fetch.

Example:
    >>> from dlforge.runs.index import RunIndex
    >>> index = RunIndex("runs")  # doctest: +SKIP
    >>> write_compare(index.records()[-2:], "compare.html")  # doctest: +SKIP
    PosixPath('compare.html')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from dlforge.errors import ConfigError
from dlforge.evaluate.intervals import Interval, measure
from dlforge.evaluate.report import format_number, format_value
from dlforge.runs.index import RunIndex, RunRecord, epoch_records
from dlforge.train.callbacks import higher_is_better
from dlforge.train.state_io import atomic_write

SEED_KEYS = {"seed", "name"}  # runs that differ only in these are repeats of one config
MAIN_METRICS = ("accuracy", "r2", "dice", "f1_macro", "mae", "mse")
_MISSING = object()


def differing_keys(records: Sequence[RunRecord]) -> list[str]:
    """The dotted config keys whose values are not the same in every run (missing counts as a value).

    Example:
        >>> a = RunRecord("a", "/a", config={"optim.lr": 0.1, "seed": 0, "model.arch": "mlp"})
        >>> b = RunRecord("b", "/b", config={"optim.lr": 0.01, "seed": 1, "model.arch": "mlp"})
        >>> differing_keys([a, b])
        ['optim.lr', 'seed']
    """
    keys = sorted({k for r in records for k in r.config})
    return [k for k in keys if len({json.dumps(r.config.get(k, "<missing>"), sort_keys=True, default=str)
                                     for r in records}) > 1]


def seed_intervals(records: Sequence[RunRecord]) -> dict[str, Interval] | None:
    """Each reported metric's mean and 95% t interval over the runs, when they differ only by
    ``seed`` (and ``name``); None otherwise.

    Example:
        >>> rs = [RunRecord(str(s), "/", config={"seed": s}, metrics={"val_accuracy": v})
        ...       for s, v in [(0, 0.9), (1, 0.8), (2, 0.85)]]
        >>> round(seed_intervals(rs)["val_accuracy"].mean, 3)
        0.85
    """
    diff = set(differing_keys(records))
    if len(records) < 2 or "seed" not in diff or not diff <= SEED_KEYS:
        return None
    common = [k for k in records[0].metrics if all(k in r.metrics for r in records[1:]) and k != "val_epoch"]
    return {k: measure([r.metrics[k] for r in records]) for k in common}


def expand(index: RunIndex, names: Sequence[str]) -> tuple[list[RunRecord], str | None]:
    """The records ``names`` point at: runs, or a tuning study (``<study>``, ``<study>-tune``,
    ``<study>-trials``), which stands for all its trial runs; and the study's name, if any."""
    records, out, studies = index.records(), [], []
    for name in names:
        text = str(name).rstrip("/")
        study = re.sub(r"-(tune|trials)$", "", Path(text).name)
        is_study = (index.runs_dir / f"{study}-tune").is_dir() or (index.runs_dir / f"{study}-trials").is_dir()
        if is_study and not any(text in (r.name, Path(r.name).name) for r in records):
            studies.append(study)
            out += [r for r in records if r.study == study]
            continue
        out.append(index.get(text, records))
    seen, unique = set(), []
    for r in out:
        if r.name not in seen:
            seen.add(r.name)
            unique.append(r)
    found = set(studies) | {r.study for r in unique}
    study = found.pop() if len(found) == 1 and None not in found else None
    if not unique and study is None:
        raise ConfigError("nothing to compare", hint="name two or more runs (`dlforge runs list` shows them)")
    return unique, study


def study_trials(runs_dir: Path, study: str) -> tuple[list[dict[str, Any]], str]:
    """The rows of ``<runs_dir>/<study>-tune/trials.json`` and the objective's name (read from
    ``best_config.yaml``'s header; ``objective`` when unknown)."""
    folder = runs_dir / f"{study}-tune"
    try:
        trials = json.loads((folder / "trials.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], "objective"
    objective = "objective"
    try:
        header = (folder / "best_config.yaml").read_text(encoding="utf-8").splitlines()[0]
        found = re.search(r":\s*([A-Za-z0-9_]+)\s*=", header)
        objective = found.group(1) if found else objective
    except (OSError, IndexError):
        pass
    return (trials if isinstance(trials, list) else []), objective


def _main_metric(histories: Sequence[list[dict[str, Any]]]) -> str | None:
    keys = {k for h in histories for e in h for k in e}
    return next((m for m in MAIN_METRICS if f"val_{m}" in keys or f"train_{m}" in keys), None)


def curves_figure(records: Sequence[RunRecord]) -> str | None:
    """Train (solid) and val (dashed) loss, and the main metric, per epoch; one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from dlforge.evaluate.plots import to_png

    histories = [epoch_records(Path(r.path) / "history.jsonl") for r in records]
    if not any(histories):
        return None
    panels = ["loss"] + ([m] if (m := _main_metric(histories)) else [])
    fig = Figure(figsize=(5.6 * len(panels), 3.8))
    fig.subplots_adjust(left=0.08 if len(panels) == 2 else 0.13, right=0.98, bottom=0.14, top=0.9, wspace=0.22)
    colors = [f"C{i % 10}" for i in range(len(records))]
    for p, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for rec, history, color in zip(records, histories, colors):
            for split, style in (("train", "-"), ("val", "--")):
                points = [(e["epoch"] + 1, e[f"{split}_{metric}"]) for e in history
                          if isinstance(e.get(f"{split}_{metric}"), (int, float)) and isinstance(e.get("epoch"), int)]
                if points:
                    ax.plot(*zip(*points), style, color=color, marker="o", markersize=2.5, linewidth=1.3,
                            label=f"{Path(rec.name).name} ({split})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if p == 0:
            ax.legend(fontsize=7, frameon=False)
    return to_png(fig)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _metric_order(keys: set[str]) -> list[str]:
    return sorted(keys, key=lambda k: (not k.startswith("val_"), not k.startswith("test_"), k))


def render_compare(records: Sequence[RunRecord], *, study: str | None = None,
                   trials: Sequence[dict[str, Any]] = (), objective: str = "objective") -> str:
    """The compare page as one HTML string.

    Example:
        >>> a = RunRecord("a", "/nowhere/a", config={"optim.lr": 0.1}, metrics={"val_loss": 0.5})
        >>> b = RunRecord("b", "/nowhere/b", config={"optim.lr": 0.01}, metrics={"val_loss": 0.4})
        >>> html = render_compare([a, b])
        >>> "optim.lr" in html and "0.4" in html
        True
    """
    from dlforge.evaluate.parallel import parallel_coordinates

    names = [Path(r.name).name for r in records]
    diff = differing_keys(records)
    metrics = _metric_order({k for r in records for k in r.metrics})
    best_keys = _metric_order({k for r in records for k in r.best if k.startswith("val_")})
    intervals = seed_intervals(records)
    figures = []
    curves = curves_figure(records) if records else None
    if curves:
        figures.append({"title": "training curves", "png": curves,
                        "caption": "Solid: training split; dashed: validation split; one colour per run."})
    if trials:
        png = parallel_coordinates(trials, objective, "maximize" if higher_is_better(objective) else "minimize")
        if png:
            figures.append({"title": "parallel coordinates", "png": png,
                            "caption": f"Every trial of study {study}: one line per trial, coloured by {objective} "
                                       "(yellow: best); dashed grey: pruned or failed trials."})
    summary = [("runs", str(len(records))), ("differing keys", str(len(diff))),
               ("configs", "identical" if len({r.config_hash for r in records}) == 1 else "differ")]
    if study:
        summary.append(("study", study))
    return _environment().get_template("compare.html.j2").render(
        title=f"{len(records)} runs compared" if not study else f"study {study}: {len(records)} runs compared",
        summary=summary, names=names, figures=figures,
        diff=[(k, [format_value(r.config.get(k)) if k in r.config else "missing" for r in records]) for k in diff],
        statuses=[r.status for r in records],
        metric_rows=[(k, [format_number(r.metrics.get(k)) for r in records]) for k in metrics],
        best_rows=[("best epoch", [format_number(r.best_epoch) for r in records])]
        + [(k, [format_number(r.best.get(k)) for r in records]) for k in best_keys],
        intervals=[(k, format_number(v.mean), format_number(v.low), format_number(v.high), v.n)
                   for k, v in (intervals or {}).items()],
        runs=[{"name": r.name, "status": r.status, "started": r.started or "", "epochs": format_number(r.epochs_run),
               "code": r.code_version or "", "data": r.data_fingerprint or "", "hash": (r.config_hash or "")[:12],
               "path": r.path} for r in records],
    )


def write_compare(records: Sequence[RunRecord], path: str | Path, *, study: str | None = None,
                  runs_dir: str | Path | None = None) -> Path:
    """Write the compare page of ``records`` to ``path``; with ``study``, its trials'
    parallel-coordinates view too, from ``<runs_dir>/<study>-tune/trials.json`` (``runs_dir``
    defaults to the folder that holds the study's trial runs)."""
    trials: list[dict[str, Any]] = []
    objective = "objective"
    if study:
        if runs_dir is None and records:
            runs_dir = Path(records[0].path).parent.parent if records[0].study else Path(records[0].path).parent
        trials, objective = study_trials(Path(runs_dir or "."), study)
    html = render_compare(records, study=study, trials=trials, objective=objective)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, html.encode("utf-8"))
    return path
