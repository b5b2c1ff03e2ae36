"""The tuning report: one self-contained HTML page per study.

Like the run report (:mod:`dlforge.evaluate.report`), ``report.html`` inlines its CSS and
figures (base64 PNG) and a Content-Security-Policy forbids any fetch. Sections: summary
(study, storage, objective, sampler, pruner, trial counts, best value), optimisation
history (each complete trial's value and the best so far), parameter importances,
learning curves (the value each trial reported per epoch, pruned trials in grey:
where pruning cut them short), the trials table, and the best config as YAML.

Importances are fANOVA's (Hutter et al., 2014: the share of the objective's variance
each parameter explains, from a random forest fitted to the trials) when the study has
at least :data:`FANOVA_MIN_TRIALS` complete trials; below that, or when fANOVA fails,
mean decrease in impurity of the same kind of forest (cheaper; with so few trials either
is only a rough guide). Fewer than two complete trials: none.

Example:
    >>> png = history_figure([{"number": 0, "state": "complete", "value": 0.5},
    ...                       {"number": 1, "state": "complete", "value": 0.7}], "maximize")
    >>> import base64; base64.b64decode(png)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from dlforge.train.state_io import atomic_write

FANOVA_MIN_TRIALS = 10  # below this, fANOVA's per-parameter marginals rest on too few points
_STATE_COLORS = {"complete": "#0b5cad", "pruned": "#9aa4ad", "fail": "#cf222e", "running": "#bf8700"}


def _figure_tools():
    # Imported on first render, as the run report does: matplotlib costs a second at import.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from dlforge.evaluate.plots import to_png

    return Figure, MaxNLocator, to_png


def _fmt(value: Any) -> str:
    from dlforge.evaluate.report import format_number

    return format_number(value)


# ----------------------------------------------------------------------------- figures

def history_figure(trials: Sequence[Mapping[str, Any]], direction: str) -> str | None:
    """Objective value per trial (complete trials) and the best value so far.

    Example:
        >>> history_figure([], "minimize") is None
        True
    """
    done = sorted((t for t in trials if t.get("state") == "complete" and t.get("value") is not None),
                  key=lambda t: t["number"])
    if not done:
        return None
    Figure, MaxNLocator, to_png = _figure_tools()
    fig = Figure(figsize=(5.6, 3.6))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    x = [t["number"] for t in done]
    y = [float(t["value"]) for t in done]
    pick = max if direction == "maximize" else min
    best = [pick(y[: i + 1]) for i in range(len(y))]
    ax.scatter(x, y, s=18, color=_STATE_COLORS["complete"], label="trial value", zorder=3)
    ax.step(x, best, where="post", color="#cf222e", linewidth=1.6, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"optimisation history ({direction})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return to_png(fig)


def importance_figure(importances: Mapping[str, float]) -> str | None:
    """Horizontal bars, most important parameter on top.

    Example:
        >>> importance_figure({}) is None
        True
    """
    if not importances:
        return None
    Figure, _, to_png = _figure_tools()
    names = list(importances)[::-1]  # barh draws bottom-up
    height = 1.1 + 0.42 * len(names)
    fig = Figure(figsize=(5.6, height))
    fig.subplots_adjust(left=0.3, right=0.95, bottom=0.55 / height, top=1 - 0.25 / height)
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=_STATE_COLORS["complete"])
    ax.set_xlim(0, max(1.0, max(importances.values())))
    ax.set_xlabel("importance (normalised to sum to 1)")
    ax.grid(alpha=0.3, axis="x")
    return to_png(fig)


def intermediate_figure(trials: Sequence[Mapping[str, Any]]) -> str | None:
    """The value each trial reported after every epoch; pruned trials in grey.

    Example:
        >>> intermediate_figure([{"number": 0, "state": "complete", "intermediate": []}]) is None
        True
    """
    curves = [t for t in trials if t.get("intermediate")]
    if not curves:
        return None
    Figure, MaxNLocator, to_png = _figure_tools()
    fig = Figure(figsize=(5.6, 3.6))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    seen: set[str] = set()
    # Pruned trials last and dashed, so a short curve is not hidden under a complete one.
    for t in sorted(curves, key=lambda t: (t.get("state") == "pruned", t["number"])):
        state = str(t.get("state"))
        steps = [s + 1 for s, _ in t["intermediate"]]  # epochs counted from 1, as the progress bar does
        values = [math.nan if v is None else float(v) for _, v in t["intermediate"]]
        ax.plot(steps, values, marker=".", linewidth=1.0, color=_STATE_COLORS.get(state, "#59636e"),
                linestyle="--" if state == "pruned" else "-", alpha=0.85, label=None if state in seen else state)
        seen.add(state)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("reported value")
    ax.set_title("learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return to_png(fig)


# ----------------------------------------------------------------------------- importances

def param_importances(study: Any, seed: int = 0) -> tuple[dict[str, float], str]:
    """``(importances, method)``: fANOVA, or mean decrease in impurity with few trials.

    ``method`` says which evaluator gave the numbers, or why there are none.

    Example:
        >>> import optuna
        >>> param_importances(optuna.create_study())
        ({}, 'none: needs at least 2 complete trials with different values')
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator

    values = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if len(values) < 2 or len(set(values)) < 2:
        return {}, "none: needs at least 2 complete trials with different values"
    evaluators = [("mean decrease in impurity", MeanDecreaseImpurityImportanceEvaluator(seed=seed))]
    if len(values) >= FANOVA_MIN_TRIALS:
        evaluators.insert(0, ("fANOVA", FanovaImportanceEvaluator(seed=seed)))
    for method, evaluator in evaluators:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        result = {k: float(v) for k, v in found.items()}
        if result and all(math.isfinite(v) for v in result.values()):
            return result, method
    return {}, "none: the importance evaluators could not fit these trials"


# ----------------------------------------------------------------------------- page

@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_tune_report(
    *, title: str, summary: Sequence[tuple[str, str]], trials: Sequence[Mapping[str, Any]], direction: str,
    importances: Mapping[str, float], importance_method: str, best_config_yaml: str | None = None,
) -> str:
    """The report as one HTML string, from plain data (the rows of ``trials.json``).

    Example:
        >>> html = render_tune_report(title="demo", summary=[("metric", "val_loss")], direction="minimize",
        ...     trials=[{"number": 0, "state": "complete", "value": 0.3, "params": {"optim.lr": 0.01}}],
        ...     importances={}, importance_method="none")
        >>> "<h1>demo</h1>" in html and "0.01" in html
        True
    """
    done = [t for t in trials if t.get("state") == "complete" and t.get("value") is not None]
    best = (max if direction == "maximize" else min)(done, key=lambda t: t["value"])["number"] if done else None
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.get("params") or {} if k not in keys]
    rows = [{
        "number": t["number"], "state": t.get("state", ""), "value": _fmt(t.get("value")),
        "duration": _fmt(t.get("duration_s")), "epochs": _fmt(t.get("epochs_run")),
        "params": [_param_text((t.get("params") or {}).get(k)) for k in keys],
        "run_dir": str(t.get("run_dir") or ""), "best": t["number"] == best,
    } for t in sorted(trials, key=lambda t: t["number"])]
    figures = []
    for fig_title, png, caption in (
        ("optimisation history", history_figure(trials, direction),
         "Dots: complete trials' objective values. Line: the best value found so far."),
        ("parameter importances", importance_figure(importances), f"Method: {importance_method}."),
        ("learning curves", intermediate_figure(trials),
         "The value each trial reported to the pruner after every epoch: the objective metric, or val_loss "
         "(negated when maximising) for a metric known only after training. Dashed grey: pruned trials."),
    ):
        if png is not None:
            figures.append({"title": fig_title, "png": png, "caption": caption})
    return _environment().get_template("tune.html.j2").render(
        title=title, summary=list(summary), keys=keys, rows=rows, figures=figures,
        importances=[(k, _fmt(v)) for k, v in importances.items()], importance_method=importance_method,
        best_config_yaml=best_config_yaml,
    )


def _param_text(value: Any) -> str:
    if value is None:
        return ""
    return _fmt(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def write_tune_report(study: Any, tune: Any, trials: Sequence[Mapping[str, Any]], path: str | Path, *,
                      storage: str, best_config_yaml: str | None = None) -> Path:
    """Render the report of ``study`` (its rows from :func:`dlforge.tune.study.trial_rows`) to ``path``.

    Example:
        >>> write_tune_report(study, tune, rows, "runs/circles-tune/report.html",
        ...                   storage="sqlite:///runs/circles-tune.db")  # doctest: +SKIP
    """
    direction = tune.resolved_direction()
    importances, method = param_importances(study)
    states = [t["state"] for t in trials]
    done = [t for t in trials if t["state"] == "complete" and t.get("value") is not None]
    best = (max if direction == "maximize" else min)(done, key=lambda t: t["value"]) if done else None
    pruner = "none (k-fold objective)" if tune.k_folds else tune.pruner.name
    summary = [
        ("study", study.study_name), ("storage", storage),
        ("objective", f"{direction} {tune.metric}" + (f" ({tune.k_folds}-fold mean)" if tune.k_folds else "")),
        ("sampler", tune.sampler.name), ("pruner", pruner),
        ("trials", f"{states.count('complete')} complete, {states.count('pruned')} pruned, "
                   f"{states.count('fail')} failed" + (f", {states.count('running')} running"
                                                        if "running" in states else "")),
        ("best value", "n/a" if best is None else f"{_fmt(best['value'])} (trial {best['number']})"),
    ]
    html = render_tune_report(title=f"{study.study_name} · tuning", summary=summary, trials=trials,
                              direction=direction, importances=importances, importance_method=method,
                              best_config_yaml=best_config_yaml)
    path = Path(path)
    atomic_write(path, html.encode("utf-8"))
    return path
