"""Learning curves: train and test score of one run config against the training-set size.

For every size ``n`` in ``sizes`` (and every seed) a fresh model is trained on ``n`` samples
of the config's train split as ``dlforge train`` trains (:func:`dlforge.pipeline.fit_options.fit_config`:
the model and its freezing, optimizer, loss, augmentation, imbalance remedies on those
``n`` samples, callbacks), and scored on those ``n`` samples and on the held-out split with
:func:`dlforge.evaluate.evaluate`. Rules that keep the points comparable:

* one split for everything: :func:`dlforge.pipeline.data.load_data` with the config's own
  seed, so every size and every seed is scored on the *same* test samples (the validation
  split when the config keeps no test split), and standardised with the statistics of the
  whole train split;
* nested, stratified subsets: seed ``s`` fixes one ordering of the train split whose every
  prefix holds each class within about one sample of its share, and size ``n`` takes its first ``n``
  samples, so a larger size only adds data (classification; regression, or
  ``data.split.stratify: false``, uses a plain shuffled ordering);
* seed ``s`` also sets the initial weights and the batch order, so several seeds show the
  spread a single curve hides.

Every size trains ``train.epochs`` epochs, so a small size also takes fewer optimizer
steps: that is what this config does with that much data. Nothing is written to disk
except by :func:`write_learning_curve`.

Example:
    >>> from dlforge.config import validate_config
    >>> cfg = validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
    ...                        "train": {"epochs": 2, "device": "cpu"}})
    >>> curve = learning_curve(cfg, [20, 60])
    >>> curve.sizes, len(curve.test_scores), curve.metric
    ([20, 60], 2, 'accuracy')
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

from dlforge.config import RunConfig
from dlforge.data.preprocess import in_target_units
from dlforge.errors import ConfigError, DataError
from dlforge.evaluate.metrics import classification_metrics, evaluate, regression_metrics
from dlforge.evaluate.plots import to_png
from dlforge.pipeline.data import load_data
from dlforge.pipeline.fit_options import fit_config
from dlforge.train import build_optimizer
from dlforge.train.state_io import atomic_write

DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2"}
JSON_FILE, HTML_FILE = "learning_curve.json", "learning_curve.html"


@dataclass
class LearningCurve:
    """Scores per training-set size: means over seeds, and each seed's own.

    ``train_scores_per_seed[i][j]`` is size ``sizes[i]`` with seed ``seeds[j]``;
    ``seconds[i]`` is the mean wall time of one training run at that size.
    """

    name: str
    data: str
    metric: str
    split: str  # the held-out split scored: "test", or "val" when the config keeps no test split
    n_held_out: int
    n_train_split: int
    sizes: list[int]
    seeds: list[int]
    train_scores: list[float]
    test_scores: list[float]
    train_scores_per_seed: list[list[float]]
    test_scores_per_seed: list[list[float]]
    seconds: list[float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def nested_order(y: np.ndarray | None, seed: int, n: int) -> np.ndarray:
    """An ordering of ``n`` samples whose every prefix is a stratified subset of ``y``.

    Each class's samples are shuffled and spread evenly over (0, 1) with a random offset
    (systematic sampling); sorting all samples by that position interleaves the classes
    in proportion: every prefix holds each class within about one sample of its share
    (at most 1.22 off on digits over every prefix and five seeds). ``y=None`` gives a
    plain shuffle.

    Example:
        >>> y = np.array([0] * 50 + [1] * 50)
        >>> order = nested_order(y, seed=0, n=100)
        >>> np.bincount(y[order[:10]]).tolist()
        [5, 5]
    """
    rng = np.random.default_rng(seed)
    if y is None:
        return rng.permutation(n)
    position = np.empty(n)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        position[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    return np.lexsort((rng.random(n), position))  # ties broken at random


def _check_sizes(sizes: Sequence[int], n_train: int) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not sizes:
        raise ConfigError("--sizes is empty", hint="give training-set sizes, e.g. --sizes 50,100,200")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1]
    if bad:
        raise ConfigError(f"--sizes holds {bad[0]!r}; sizes are whole numbers of samples >= 1",
                          hint="e.g. --sizes 50,100,200")
    if len(set(sizes)) != len(sizes):
        raise ConfigError("--sizes lists a size twice", hint="list each training-set size once")
    too_big = [s for s in sizes if s > n_train]
    if too_big:
        raise DataError(f"--sizes asks for {max(too_big)} training samples, but the train split holds only {n_train}",
                        hint=f"use sizes up to {n_train}, or lower data.split.val / data.split.test "
                        "to give the train split more data")
    return sorted(int(s) for s in sizes)


def _known_metrics(task: str) -> list[str]:
    """The metric names :func:`evaluate` returns for ``task`` (from a tiny example)."""
    if task == "classification":
        ev = classification_metrics(torch.tensor([0, 1]), torch.tensor([[0.6, 0.4], [0.3, 0.7]]))
    else:
        ev = regression_metrics(torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.9]))
    return [k for k in ev.metrics if k != "n"]


def _train_on(cfg: RunConfig, prepared: Any, subset: TensorDataset, seed: int) -> torch.nn.Module:
    """A fresh model trained on ``subset`` as ``dlforge train`` would (every ``train`` and
    ``data.imbalance`` / ``data.augment`` setting), its weights and batch order seeded ``seed``."""
    model, _ = fit_config(cfg, replace(prepared, train=subset), seed=seed)
    return model


def learning_curve(
    cfg: RunConfig, sizes: Sequence[int], *, seeds: Sequence[int] = (0,), metric: str | None = None,
    progress: TextIO | None = None,
) -> LearningCurve:
    """Train ``cfg`` on growing subsets of its train split and score train and held-out data.

    ``metric`` is any key of :func:`evaluate`'s metrics (default: ``accuracy`` for
    classification, ``r2`` for regression). ``progress`` gets one line per size.

    Example:
        >>> from dlforge.config import load_config
        >>> curve = learning_curve(load_config("examples/digits_cnn.yaml"), [100, 400, 1000])  # doctest: +SKIP
        >>> curve.test_scores  # doctest: +SKIP
        [0.82, 0.93, 0.97]
    """

    if cfg.data.task == "mlm":
        raise ConfigError("a learning curve needs a labelled task; masked-LM pretraining has no test score",
                          hint="use a classification or regression config")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {seeds}", hint="e.g. seeds=(0, 1, 2)")
    prepared = load_data(cfg)
    if prepared.task == "segmentation":
        raise ConfigError("learning curves draw training samples; a segmentation set is a few images cut into "
                          "random patches, so there is no sample count to vary",
                          hint="compare data.patches_per_epoch or train.epochs with dlforge cv (spatial folds) instead")
    if not isinstance(prepared.train, TensorDataset):
        raise ConfigError(f"{prepared.name} is not held in memory as tensors", hint="use a table, image or text source")
    sizes = _check_sizes(sizes, len(prepared.train))
    held_out, split = (prepared.test, "test") if prepared.test is not None else (prepared.val, "val")
    if held_out is None or len(held_out) == 0:
        raise ConfigError("the config keeps no test or validation split to score",
                          hint="set data.split.test above 0 (e.g. 0.2)")
    metric = metric or DEFAULT_METRIC[prepared.task]
    known = _known_metrics(prepared.task)
    if metric not in known:
        raise ConfigError(f"metric {metric!r} is not a {prepared.task} metric", hint=f"use one of: {', '.join(known)}")

    x, y = prepared.train.tensors
    stratify = prepared.task == "classification" and cfg.data.split.stratify
    orders = {s: nested_order(y.numpy() if stratify else None, s, len(y)) for s in seeds}
    # Scored in the target's units: targets back from the standardised scale, outputs with them.
    score_kw = {"task": prepared.task, "class_names": prepared.class_names,
                "target_standardize": prepared.preprocessing.get("target_standardize")}
    scored_held_out = in_target_units(held_out, prepared)
    # The first optimizer a process builds imports torch._dynamo (seconds on a busy machine):
    # pay that before the clock starts, so seconds[0] measures training, not an import.
    build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim)
    train_rows, test_rows, seconds = [], [], []
    for size in sizes:
        train_row, test_row, elapsed = [], [], 0.0
        for seed in seeds:
            idx = torch.as_tensor(orders[seed][:size])
            subset = TensorDataset(x[idx], y[idx])
            start = time.perf_counter()
            model = _train_on(cfg, prepared, subset, seed)
            elapsed += time.perf_counter() - start
            train_row.append(evaluate(model, in_target_units(subset, prepared), **score_kw).metrics[metric])
            test_row.append(evaluate(model, scored_held_out, **score_kw).metrics[metric])
        train_rows.append(train_row)
        test_rows.append(test_row)
        seconds.append(elapsed / len(seeds))
        if progress is not None:
            progress.write(f"size {size}: train {metric} {np.mean(train_row):.4f}, {split} {metric} "
                           f"{np.mean(test_row):.4f} ({seconds[-1]:.1f} s per run)\n")
            progress.flush()
    return LearningCurve(
        name=cfg.name, data=prepared.name, metric=metric, split=split, n_held_out=len(held_out),
        n_train_split=len(prepared.train), sizes=sizes, seeds=seeds,
        train_scores=[float(np.mean(r)) for r in train_rows], test_scores=[float(np.mean(r)) for r in test_rows],
        train_scores_per_seed=train_rows, test_scores_per_seed=test_rows, seconds=seconds,
    )


# ----------------------------------------------------------------------------- output

def plot_learning_curve(curve: LearningCurve) -> str:
    """Train and held-out score against training-set size (a band spans the seeds), as base64 PNG.

    Example:
        >>> curve = LearningCurve("run", "iris", "accuracy", "test", 30, 90, [10, 40, 90], [0],
        ...                       [1.0, 0.98, 0.97], [0.7, 0.9, 0.95], [[1.0], [0.98], [0.97]],
        ...                       [[0.7], [0.9], [0.95]], [0.1, 0.2, 0.3])
        >>> import base64; base64.b64decode(plot_learning_curve(curve))[:4]
        b'\\x89PNG'
    """
    fig = Figure(figsize=(6.0, 3.8))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    sizes = np.asarray(curve.sizes, dtype=float)
    for label, mean, per_seed, style, color in (
        ("train", curve.train_scores, curve.train_scores_per_seed, "-", "tab:blue"),
        (curve.split, curve.test_scores, curve.test_scores_per_seed, "--", "tab:orange"),
    ):
        ax.plot(sizes, np.asarray(mean, dtype=float), style, marker="o", markersize=4, color=color, label=label)
        if len(curve.seeds) > 1:  # the spread over seeds: one curve alone overstates its precision
            runs = np.asarray(per_seed, dtype=float)  # (sizes, seeds)
            ax.fill_between(sizes, runs.min(axis=1), runs.max(axis=1), color=color, alpha=0.15, linewidth=0)
    if len(sizes) > 1 and sizes.max() / sizes.min() >= 8:
        ax.set_xscale("log")  # sizes usually grow geometrically: even spacing on a log axis
    ax.set_xticks(sizes, [str(s) for s in curve.sizes])
    ax.minorticks_off()
    ax.set_xlabel("training samples")
    ax.set_ylabel(curve.metric)
    seeds = f", {len(curve.seeds)} seeds" if len(curve.seeds) > 1 else ""
    ax.set_title(f"learning curve: {curve.name} on {curve.data} ({curve.split} n={curve.n_held_out}{seeds})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _summary(curve: LearningCurve) -> str:
    """What the curve says in numbers (no verdict): the last step's gain and the final gap."""
    last, gap = curve.sizes[-1], curve.train_scores[-1] - curve.test_scores[-1]
    text = f"At {last} samples the train-{curve.split} gap in {curve.metric} is {_fmt(gap)}."
    if len(curve.sizes) > 1:
        gain = curve.test_scores[-1] - curve.test_scores[-2]
        text = (f"From {curve.sizes[-2]} to {last} training samples the {curve.split} {curve.metric} "
                f"changed by {gain:+.4f}. " + text)
    return text


def learning_curve_html(curve: LearningCurve) -> str:
    """A self-contained HTML page: the plot (inline PNG) and a table of every number."""
    e = html.escape
    seeds_head = "".join(f"<th>{e(curve.split)} (seed {s})</th>" for s in curve.seeds) if len(curve.seeds) > 1 else ""
    rows = []
    for i, size in enumerate(curve.sizes):
        per_seed = "".join(f"<td>{_fmt(v)}</td>" for v in curve.test_scores_per_seed[i]) if len(curve.seeds) > 1 else ""
        rows.append(f"<tr><td>{size}</td><td>{_fmt(curve.train_scores[i])}</td><td>{_fmt(curve.test_scores[i])}</td>"
                    f"<td>{_fmt(curve.train_scores[i] - curve.test_scores[i])}</td>{per_seed}"
                    f"<td>{curve.seconds[i]:.2f}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>learning curve: {e(curve.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>Learning curve: {e(curve.name)}</h1>
<p>Data <b>{e(curve.data)}</b>: {curve.n_train_split} samples in the train split, subsets of it trained
with seeds {e(", ".join(map(str, curve.seeds)))}; every point scored on the same {e(curve.split)} split
({curve.n_held_out} samples). Metric: <b>{e(curve.metric)}</b>.</p>
<p>{e(_summary(curve))}</p>
<img alt="learning curve" src="data:image/png;base64,{plot_learning_curve(curve)}">
<table><thead><tr><th>training samples</th><th>train</th><th>{e(curve.split)}</th><th>gap</th>{seeds_head}
<th>seconds per run</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def write_learning_curve(curve: LearningCurve, out_dir: str | Path) -> dict[str, Path]:
    """Write ``learning_curve.json`` and ``learning_curve.html`` into ``out_dir``.

    Example:
        >>> paths = write_learning_curve(curve, "runs/digits-curve")  # doctest: +SKIP
        >>> sorted(paths)  # doctest: +SKIP
        ['html', 'json']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_FILE, "html": out_dir / HTML_FILE}
    atomic_write(paths["json"], json.dumps(curve.to_dict(), indent=2).encode())
    atomic_write(paths["html"], learning_curve_html(curve).encode())
    return paths
