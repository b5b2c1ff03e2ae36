"""One self-contained HTML page per run: what was trained, how it went, how good it is.

``report.html`` holds everything inline (CSS, figures as base64 PNG data URIs, a
five-line script) and refers to nothing outside itself, so it can be mailed, archived or
opened offline. A Content-Security-Policy meta tag makes the browser refuse any network
fetch the page might still attempt. Sections, top to bottom: header (run, data, task,
arch, epochs, stop reason, best epoch, test metrics), diagnosis, training curves, gradient
health, evaluation (classification or regression), baselines (the same split's scores of
simple scikit-learn models), forecast (time series, against the
seasonal naive baseline), cross-validation, resolved config.

Inputs are plain dicts (the JSON forms of ``Evaluation``, ``Diagnosis``, ``CVResult`` and
:func:`dlforge.data.timeseries.forecast_evaluation`),
so a report can be rendered from files on disk without the objects that wrote them.

Example:
    >>> html = render_report(config={"name": "demo", "model": {"arch": "mlp"}},
    ...                      history=[{"type": "epoch", "epoch": 0, "train_loss": 0.7}])
    >>> "<h1>demo</h1>" in html
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from dlforge.evaluate.run_files import read_history, read_json, required, run_info_from_artifact
from dlforge.evaluate.seg_report import segmentation_section
from dlforge.train.state_io import atomic_write
from dlforge.user_files import read_yaml

_TEMPLATE = "report.html.j2"
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
# The header shows these (those present, in this order); the metric table shows them all.
HEADLINE_METRICS = ("loss", "accuracy", "f1_macro", "roc_auc", "pr_auc", "mse", "rmse", "mae", "r2", "dice", "hd95", "ap50")


def _plots():
    # Imported on first render: matplotlib costs a second at import, which commands that
    # never draw (predict, serve) should not pay.
    from dlforge.evaluate import plots

    return plots


def format_number(value: Any) -> str:
    """How the report prints a value: 4 significant digits, ``n/a`` for NaN or missing.

    Example:
        >>> [format_number(v) for v in (0.987654, 12, float("nan"), None, 2.5e-6, True)]
        ['0.9877', '12', 'n/a', 'n/a', '2.500e-06', 'yes']
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def format_value(value: Any, max_items: int = 8) -> str:
    """Evidence values: numbers via :func:`format_number`, short lists and dicts inline.

    Example:
        >>> format_value([1.0, 0.5, float("nan")])
        '1, 0.5, n/a'
    """
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v, max_items)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(v, max_items) for v in value[:max_items])
        return shown + (f", … ({len(value)} in all)" if len(value) > max_items else "")
    if isinstance(value, str) and value.lower() == "nan":
        return "n/a"  # Diagnosis evidence stores non-finite floats as strings
    return format_number(value)


# ----------------------------------------------------------------------------- sections

def _run_info(config: Mapping[str, Any], history: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any] | None,
              run_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Header facts: ``run_info`` (from model.json) wins, the config and history fill gaps."""
    info = dict(run_info or {})
    data_cfg = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    model_cfg = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    info.setdefault("data", data_cfg.get("source"))
    info.setdefault("arch", model_cfg.get("arch"))
    info.setdefault("task", (evaluation or {}).get("task"))
    info.setdefault("epochs_run", sum(1 for r in history if r.get("type") == "epoch"))
    return info


def _stop_reason(info: Mapping[str, Any]) -> str:
    if "stop_reason" not in info:
        return "n/a"
    reason = info["stop_reason"]
    return {None: "completed all epochs", "early_stopping": "early stopping",
            "non_finite": "non-finite loss or gradient (NaN guard)"}.get(reason, str(reason))


def _header_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    best = info.get("best_epoch")
    return [
        ("data source", format_number(info.get("data"))),
        ("task", format_number(info.get("task"))),
        ("model", format_number(info.get("arch"))),
        ("epochs run", format_number(info.get("epochs_run"))),
        ("stop reason", _stop_reason(info)),
        # FitResult.best_epoch is a 0-based index; people count epochs from 1
        ("best epoch", "n/a" if best is None else str(best + 1)),
    ]


def _held_out_metrics(info: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Header metrics: the run's ``<split>_*`` numbers overlaid by the evaluation's, headline
    ones only (:data:`HEADLINE_METRICS`; the first six when none is there), as
    ``("<split> <name>", value)``. The split is the evaluation's (``test`` by default)."""
    split = str((evaluation or {}).get("split") or "test")
    metrics: dict[str, Any] = {}
    for key, value in (info.get("metrics") or {}).items():
        if key.startswith(f"{split}_"):
            metrics[key[len(split) + 1:]] = value
    metrics.update(_scalars((evaluation or {}).get("metrics") or {}))
    names = [k for k in HEADLINE_METRICS if k in metrics] or list(metrics)[:6]
    return [(f"{split} {k}", format_number(metrics[k])) for k in names]


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float))}


def _figure(title: str, png: str | None, caption: str = "") -> list[dict[str, str]]:
    return [] if png is None else [{"title": title, "png": png, "caption": caption}]


def _training_figures(history: Sequence[Mapping[str, Any]], best_epoch: int | None,
                      standardized_target: bool = False) -> list[dict[str, str]]:
    caption = "Dotted red line: the best epoch (the weights early stopping kept)." if best_epoch is not None else ""
    if standardized_target:  # the metrics are in the target's units, the losses are not
        caption = ("Losses are the training loss on the standardised target ((y - mean) / std of the train "
                   "split), not in the target's units. " + caption).strip()
    return _figure("training curves", _plots().training_curves(history, best_epoch), caption)


def _baselines_section(baselines: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``baselines.json`` table: the model's headline numbers, then each baseline's."""
    if not baselines or not baselines.get("baselines"):
        return None
    from dlforge.evaluate.baselines import HEADLINE, LABELS, Baseline, BaselineReport, summary_lines

    task = str(baselines.get("task") or "regression")
    keys = HEADLINE.get(task, HEADLINE["regression"])
    model = baselines.get("model") or {}
    rows = [{"name": str(b.get("name")), "skipped": b.get("skipped"), "seconds": format_number(b.get("seconds")),
             "values": [format_number((b.get("metrics") or {}).get(k)) for k in keys]}
            for b in baselines["baselines"]]
    report = BaselineReport(task, str(baselines.get("split") or "test"), str(baselines.get("metric") or keys[0]),
                            dict(model), [Baseline(**b) for b in baselines["baselines"]])
    verdicts = [line for line in summary_lines(report) if " beats this model " in line]
    return {"split": report.split, "labels": [LABELS[k] for k in keys],
            "model": [format_number(model.get(k)) for k in keys], "rows": rows, "verdicts": verdicts}


def _gradient_figures(history: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    return _figure("gradient norms", _plots().gradient_norms(history),
                   "Gradient L2 norm of each weight tensor at each logged step (log scale). Lines that fall "
                   "decades below the others are layers that barely learn; steep climbs are explosions.")


def _evaluation_section(evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    plots = _plots()
    task = evaluation.get("task", "classification")
    curves = evaluation.get("curves") or {}
    figures: list[dict[str, str]] = []
    if task == "regression":
        residuals = curves.get("residuals") or {}
        y_true, y_pred = residuals.get("y_true") or [], residuals.get("y_pred") or []
        figures += _figure("predicted vs true", plots.predicted_vs_true(y_true, y_pred))
        figures += _figure("residual histogram", plots.residual_histogram(y_true, y_pred))
    else:
        # Curves first: they keep one size, so the row fills evenly; a big confusion matrix wraps.
        figures += _figure("ROC curves", plots.roc_curves(curves.get("roc") or {}), "One-vs-rest per class.")
        figures += _figure("precision-recall curves", plots.pr_curves(curves.get("pr") or {}), "One-vs-rest per class.")
        if evaluation.get("confusion") is not None:
            figures += _figure("confusion matrix", plots.confusion_heatmap(evaluation["confusion"], evaluation.get("class_names")),
                               "Rows: true class; columns: predicted class.")
    per_class = [
        {"class": str(row.get("class")), **{k: format_number(row.get(k)) for k in ("precision", "recall", "f1", "support")}}
        for row in evaluation.get("per_class") or []
    ]
    metrics = [(k, format_value(v)) for k, v in (evaluation.get("metrics") or {}).items()]
    return {"task": task, "split": evaluation.get("split"), "metrics": metrics, "per_class": per_class,
            "figures": figures}


def _balance_section(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """Class counts of the train split, and after resampling when the run resampled."""
    counts = info.get("class_counts")
    if not counts:
        return None
    before = counts["train"]
    names = counts.get("class_names") or [str(i) for i in range(len(before))]
    resampling = info.get("resampling")
    after = resampling["counts_after"] if resampling else None
    rows = [[name, b, *([after[i]] if after else [])] for i, (name, b) in enumerate(zip(names, before))]
    return {"rows": rows, "resampled": after is not None, "method": resampling["method"] if resampling else None,
            "note": info.get("imbalance_note")}


def _forecast_section(forecast: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Plot and error table of a ``forecast_evaluation`` dict (``forecast.json``)."""
    if forecast is None:
        return None
    unit = str(forecast.get("unit") or "")
    figures = _figure("forecast vs actual", _plots().forecast_vs_actual(
        forecast.get("index") or [], forecast.get("actual") or [], forecast.get("predicted") or [],
        forecast.get("seasonal_naive"), unit=unit),
        "One step ahead: each point is forecast from the window of values just before it.")
    period = forecast.get("period")
    rows = [
        ("model", format_number(forecast.get("mae")), format_number(forecast.get("rmse"))),
        (f"seasonal naive (period {format_number(period)})", format_number(forecast.get("seasonal_naive_mae")),
         format_number(forecast.get("seasonal_naive_rmse"))),
        ("last value", format_number(forecast.get("last_value_mae")), "n/a"),
    ]
    ratio = forecast.get("mae_ratio_vs_seasonal_naive")
    verdict = ""
    if isinstance(ratio, (int, float)) and math.isfinite(ratio):
        verdict = "beats" if ratio < 1 else "does not beat"
    return {
        "series": format_number(forecast.get("series")), "split": format_number(forecast.get("split")),
        "unit": unit, "window": format_number(forecast.get("window")),
        "horizon": format_number(forecast.get("horizon")), "period": format_number(period),
        "rows": rows, "ratio": format_number(ratio), "verdict": verdict, "figures": figures,
    }


def _ratio(values: Sequence[float] | None) -> str:
    return "n/a" if not values else " / ".join(f"{float(v):.3f}" for v in values)


def _cv_section(cv: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if cv is None:
        return None
    folds = cv.get("folds") or []
    columns: list[str] = []
    for fold in folds:
        columns += [k for k, v in _scalars(fold).items() if k not in columns and k != "fold"]
    ratios = cv.get("class_ratios") or []
    rows = [
        {"fold": str(i + 1), "values": [format_number(fold.get(c)) for c in columns],
         "ratio": _ratio(ratios[i]) if i < len(ratios) else "n/a"}
        for i, fold in enumerate(folds)
    ]
    mean, std = cv.get("mean") or {}, cv.get("std") or {}
    summary = [f"{format_number(mean.get(c))} ± {format_number(std.get(c))}" for c in columns]
    return {"k": cv.get("k", len(folds)), "stratified": format_number(cv.get("stratified")), "columns": columns,
            "rows": rows, "summary": summary, "overall_ratio": _ratio(cv.get("overall_ratio"))}


def _diagnosis_section(diagnoses: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    if diagnoses is None:
        return None
    findings = sorted(diagnoses, key=lambda d: _SEVERITY_ORDER.get(d.get("severity", "info"), 3))
    counts = {s: sum(1 for d in findings if d.get("severity") == s) for s in _SEVERITY_ORDER}
    return {
        "counts": [(s, n) for s, n in counts.items() if n],
        "findings": [
            {"kind": str(d.get("kind", "")), "severity": str(d.get("severity", "info")), "message": str(d.get("message", "")),
             "evidence": [(str(k), format_value(v)) for k, v in (d.get("evidence") or {}).items()],
             "fix": str(d.get("fix") or "")}
            for d in findings
        ],
    }


@lru_cache(maxsize=1)
def _environment() -> Environment:
    # A file loader, not PackageLoader: evaluate/ may be a namespace package.
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def render_report(
    *,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    evaluation: Mapping[str, Any] | None = None,
    diagnoses: Sequence[Mapping[str, Any]] | None = None,
    cv: Mapping[str, Any] | None = None,
    title: str | None = None,
    run_info: Mapping[str, Any] | None = None,
    forecast: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
) -> str:
    """The report as one HTML string.

    ``config`` is the resolved run config; ``history`` the records of ``history.jsonl``;
    ``evaluation``, ``diagnoses`` and ``cv`` the JSON forms of ``Evaluation``, the
    diagnosis list and ``CVResult``; ``forecast`` the dict of
    :func:`dlforge.data.timeseries.forecast_evaluation`; ``baselines`` the dict of
    ``baselines.json`` (:class:`dlforge.evaluate.baselines.BaselineReport`). ``run_info`` holds what only the finished run knows:
    ``data``, ``task``, ``arch``, ``epochs_run``, ``stop_reason``, ``best_epoch``
    (0-based, as ``FitResult.best_epoch``; shown 1-based), ``metrics`` (``test_*`` keys
    go to the header). Missing facts come from the config and history, or show ``n/a``.
    A section whose input is ``None`` is left out; an empty diagnosis list says
    "No problems detected".

    Example:
        >>> html = render_report(config={"name": "r"}, history=[], diagnoses=[])
        >>> "No problems detected" in html
        True
    """
    info = _run_info(config, history, evaluation, run_info)
    segmentation = evaluation is not None and evaluation.get("task") == "segmentation"
    if info.get("task") is None and forecast is not None:
        info["task"] = "regression"  # a forecast run may have no evaluation.json to say so
    best_epoch = info.get("best_epoch")
    standardized = _standardized_target(config, info)
    held_out = [(f"{name} (standardised target)" if standardized and name.endswith(" loss") else name, value)
                for name, value in _held_out_metrics(info, evaluation)]
    context = {
        "title": title or str(config.get("name") or "dlforge run"),
        "header_rows": _header_rows(info),
        "held_out_metrics": held_out,
        "config_yaml": yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False),
        "training_figures": _training_figures(history, best_epoch, standardized),
        "gradient_figures": _gradient_figures(history),
        "evaluation": None if segmentation else _evaluation_section(evaluation),
        "segmentation": Markup(segmentation_section(evaluation)) if segmentation else None,
        "baselines": _baselines_section(baselines),
        "forecast": _forecast_section(forecast),
        "balance": _balance_section(info),
        "cv": _cv_section(cv),
        "diagnosis": _diagnosis_section(diagnoses),
    }
    return _environment().get_template(_TEMPLATE).render(**context)


def _standardized_target(config: Mapping[str, Any], info: Mapping[str, Any]) -> bool:
    """Whether the run trained on a standardised target (regression with the default
    ``data.standardize_target: true``), so its losses are not in the target's units."""
    data_cfg = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    return info.get("task") == "regression" and data_cfg.get("standardize_target", True) is not False


# ----------------------------------------------------------------------------- run directories

def write_report(
    run_dir: str | Path,
    *,
    evaluation: Mapping[str, Any] | None = None,
    diagnoses: Sequence[Mapping[str, Any]] | None = None,
    cv: Mapping[str, Any] | None = None,
    forecast: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
) -> Path:
    """Render ``run_dir/report.html`` from the files a run left and return its path.

    Reads ``config.yaml`` and ``history.jsonl`` (both required), and, for each keyword
    left ``None``, ``evaluation.json``, ``diagnosis.json``, ``cv.json``, ``forecast.json`` and
    ``baselines.json`` when present;
    ``model/model.json`` supplies the training facts (epochs run, stop reason, best epoch)
    and the test metrics. The page is written atomically.

    Example:
        >>> write_report("runs/digits-cnn-20261126-101500")  # doctest: +SKIP
        PosixPath('runs/digits-cnn-20261126-101500/report.html')
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config = read_yaml(required(config_path, "resolved config"), "resolved config")
    history = read_history(run_dir / "history.jsonl")
    if evaluation is None:
        evaluation = read_json(run_dir / "evaluation.json")
    if diagnoses is None:
        diagnoses = read_json(run_dir / "diagnosis.json")
        if isinstance(diagnoses, Mapping):  # tolerate {"diagnoses": [...]} as well as a bare list
            diagnoses = diagnoses.get("diagnoses", diagnoses.get("findings", []))
    if cv is None:
        cv = read_json(run_dir / "cv.json")
    if forecast is None:
        forecast = read_json(run_dir / "forecast.json")
    if baselines is None:
        baselines = read_json(run_dir / "baselines.json")
    run_info = run_info_from_artifact(read_json(run_dir / "model" / "model.json"))
    html = render_report(config=config, history=history, evaluation=evaluation, diagnoses=diagnoses, cv=cv,
                         run_info=run_info, forecast=forecast, baselines=baselines)
    out = run_dir / "report.html"
    atomic_write(out, html.encode("utf-8"))
    return out
