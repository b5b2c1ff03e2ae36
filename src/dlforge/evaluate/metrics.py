"""Held-out metrics for classification and regression, on torchmetrics.

:func:`classification_metrics` takes true labels and class probabilities,
:func:`regression_metrics` true and predicted values, and both return an
:class:`Evaluation`: flat metrics, per-class scores, the confusion matrix and the curves a
report draws. :func:`evaluate` runs a model (or a loaded artifact) over a data set first.

Where a metric is undefined for the data, it is NaN rather than an exception or a
silent 0, so one degenerate fold or test split never hides the other numbers:

- ``roc_auc`` is NaN unless every scored class (binary: class 1; multiclass: all K)
  has both positive and negative samples in ``y_true`` (scikit-learn raises there);
- ``pr_auc`` is NaN unless every scored class has a positive sample (scikit-learn warns
  "No positive class found" and returns 0);
- ``r2`` is NaN when ``y_true`` is constant (in any output) or has fewer than 2 rows
  (scikit-learn's ``force_finite=False`` gives NaN or -inf there; its default prints
  1.0 or 0.0 by convention).

Precision, recall and F1 follow scikit-learn's ``zero_division=0``: a class never
predicted has precision 0. Macro averages, like scikit-learn's default, run over the
classes that occur in ``y_true`` or in the predictions.

Example:
    >>> import torch
    >>> ev = classification_metrics(torch.tensor([0, 1, 1]),
    ...                             torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    >>> round(ev.metrics["accuracy"], 3), ev.confusion
    (0.667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from dlforge.data.preprocess import to_target_units
from dlforge.errors import ConfigError, DataError
from dlforge.train import select_device

N_BINS = 15  # calibration bins, equal width on the top-class confidence
MAX_RESIDUAL_POINTS = 2000  # enough for a readable scatter plot, small enough for JSON
TASKS = ("classification", "regression")


@dataclass
class Evaluation:
    """Metrics of one model on one data set (see the module docstring for NaN cases).

    ``confusion`` rows are true classes, columns predicted ones. ``curves`` holds
    ``{"roc": {class: {"fpr", "tpr", "auc"}}, "pr": {class: {"precision", "recall",
    "ap"}}}`` for classification (binary: only the positive class, index 1; a class
    whose curve is undefined is left out) and ``{"residuals": {"y_true", "y_pred"}}``
    (at most 2000 points) for regression.

    Example:
        >>> import torch
        >>> ev = regression_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
        >>> round(ev.metrics["mse"], 4), ev.to_dict()["task"]
        (0.3333, 'regression')
    """

    task: str
    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]] | None
    curves: dict[str, Any]
    class_names: list[str] | None

    def to_dict(self) -> dict:
        """A JSON-able dict (NaN stays a float NaN; ``json.dumps`` writes it as NaN)."""
        return asdict(self)


def _check_classification(
    y_true: Tensor, probs: Tensor, class_names: list[str] | None
) -> tuple[Tensor, Tensor, list[str]]:
    """Validated ``(y (N,) int64, probs (N, K) float64, names)`` on the CPU."""
    y_true, probs = torch.as_tensor(y_true).detach().cpu(), torch.as_tensor(probs).detach().cpu()
    if probs.ndim != 2 or probs.shape[1] < 2 or y_true.shape != (probs.shape[0],) or len(y_true) == 0:
        raise DataError(
            f"expected y_true of shape (N,) and probs of shape (N, K) with N >= 1, K >= 2; "
            f"got {tuple(y_true.shape)} and {tuple(probs.shape)}",
            hint="pass one row of class probabilities per label",
        )
    if torch.is_floating_point(y_true) or y_true.dtype == torch.bool:
        raise DataError(f"y_true holds class indices and must be an integer tensor, not {y_true.dtype}")
    n_classes = probs.shape[1]
    y, p = y_true.long(), probs.double()
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"labels must lie in 0..{n_classes - 1} for {n_classes} probability columns; "
                        f"got {int(y.min())}..{int(y.max())}")
    # torchmetrics silently softmaxes inputs outside [0, 1]; logits must not pass for probabilities.
    if not torch.isfinite(p).all() or p.min() < 0 or p.max() > 1 or (p.sum(dim=1) - 1).abs().max() > 1e-3:
        raise DataError("probs must be finite probabilities whose rows sum to 1",
                        hint="apply softmax to the logits first (evaluate() does it for you)")
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise DataError(f"{len(names)} class names for {n_classes} probability columns")
    return y, p, names


def _curves(y: Tensor, p: Tensor, names: list[str]) -> tuple[dict[str, Any], bool, bool]:
    """ROC and PR curves of the scored classes, one-vs-rest, and whether every one is defined."""
    import torchmetrics.functional.classification as tmc  # here: importing torchmetrics takes a second or more

    n, n_classes = p.shape
    scored = [1] if n_classes == 2 else list(range(n_classes))  # binary: the positive class only
    roc: dict[str, Any] = {}
    pr: dict[str, Any] = {}
    for c in scored:
        score, target = p[:, c], (y == c).long()  # (N,), (N,)
        positives = int(target.sum())
        if 0 < positives < n:  # ROC needs both positives and negatives
            fpr, tpr, _ = tmc.binary_roc(score, target)
            roc[names[c]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                             "auc": float(tmc.binary_auroc(score, target))}
        if positives > 0:  # recall is 0/0 without a positive
            precision, recall, _ = tmc.binary_precision_recall_curve(score, target)
            pr[names[c]] = {"precision": precision.tolist(), "recall": recall.tolist(),
                            "ap": float(tmc.binary_average_precision(score, target))}
    return {"roc": roc, "pr": pr}, len(roc) == len(scored), len(pr) == len(scored)


def expected_calibration_error(y_true: Tensor, probs: Tensor, n_bins: int = N_BINS) -> float:
    """Expected calibration error (L1) over ``n_bins`` equal-width bins of the top-class
    confidence: the sample-weighted mean of |accuracy - mean confidence| per bin.

    Bins are [i/n, (i+1)/n), the last one closed at 1. Hand-written because torchmetrics'
    ``multiclass_calibration_error`` works in float32 and puts a confidence of exactly 1.0
    (a saturated softmax) in a bin of its own; it agrees elsewhere.

    Example:
        >>> import torch
        >>> round(expected_calibration_error(torch.tensor([0, 1]), torch.tensor([[0.9, 0.1], [0.8, 0.2]])), 4)
        0.45
    """
    probs = torch.as_tensor(probs).double()
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    bins = (conf * n_bins).long().clamp(max=n_bins - 1)  # (N,)
    correct = (pred == torch.as_tensor(y_true)).double()
    # sum_b n_b/N * |acc_b - conf_b| = sum_b |sum of correct_b - sum of conf_b| / N
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((correct_sum - conf_sum).abs().sum() / len(conf))


def classification_metrics(
    y_true: Tensor, probs: Tensor, class_names: list[str] | None = None
) -> Evaluation:
    """All classification metrics from true labels ``(N,)`` and probabilities ``(N, K)``.

    Predictions are the argmax of ``probs``. Keys: accuracy, balanced_accuracy,
    precision/recall/f1 each ``_macro``, ``_micro`` and ``_weighted``, roc_auc (binary:
    class 1; multiclass: macro one-vs-rest), pr_auc (binary: average precision of class 1;
    multiclass: macro), log_loss, ece (15 bins, L1) and n.

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 1, 2, 2])
        >>> p = torch.tensor([[.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.5, .1, .4]])
        >>> ev = classification_metrics(y, p, ["a", "b", "c"])
        >>> ev.metrics["accuracy"], ev.per_class[2]["recall"], ev.metrics["roc_auc"]
        (0.75, 0.5, 1.0)
    """
    import torchmetrics.functional.classification as tmc  # here: importing torchmetrics takes a second or more

    y, p, names = _check_classification(y_true, probs, class_names)
    n, n_classes = p.shape
    pred = p.argmax(dim=1)  # (N,)
    kw = {"num_classes": n_classes}
    metrics: dict[str, float] = {"accuracy": float(tmc.multiclass_accuracy(pred, y, average="micro", **kw))}

    support = torch.bincount(y, minlength=n_classes)  # (K,)
    recall = tmc.multiclass_recall(pred, y, average=None, **kw)  # (K,)
    # Balanced accuracy averages recall over the classes present in y_true only.
    metrics["balanced_accuracy"] = float(recall[support > 0].mean())
    scores = {"precision": tmc.multiclass_precision, "recall": tmc.multiclass_recall,
              "f1": tmc.multiclass_f1_score}
    for name, fn in scores.items():
        for average in ("macro", "micro", "weighted"):
            metrics[f"{name}_{average}"] = float(fn(pred, y, average=average, zero_division=0, **kw))

    curves, roc_defined, pr_defined = _curves(y, p, names)
    aucs = [c["auc"] for c in curves["roc"].values()]
    aps = [c["ap"] for c in curves["pr"].values()]
    metrics["roc_auc"] = sum(aucs) / len(aucs) if roc_defined else math.nan
    metrics["pr_auc"] = sum(aps) / len(aps) if pr_defined else math.nan

    # Clip as scikit-learn does, so a confident mistake costs -log(eps), not infinity.
    eps = torch.finfo(p.dtype).eps
    p_true = p[torch.arange(n), y].clamp(eps, 1 - eps)  # (N,)
    metrics["log_loss"] = float(-p_true.log().mean())
    metrics["ece"] = expected_calibration_error(y, p)
    metrics["n"] = float(n)

    per_class = [
        {"class": names[c], "precision": float(prec), "recall": float(rec), "f1": float(f1),
         "support": int(support[c])}
        for c, (prec, rec, f1) in enumerate(zip(
            tmc.multiclass_precision(pred, y, average=None, zero_division=0, **kw), recall,
            tmc.multiclass_f1_score(pred, y, average=None, zero_division=0, **kw)))
    ]
    confusion = tmc.multiclass_confusion_matrix(pred, y, **kw).tolist()  # rows: true class
    return Evaluation("classification", metrics, per_class, confusion, curves, names)


def _thin(values: Tensor, limit: int) -> Tensor:
    """At most ``limit`` evenly spaced entries, first and last kept."""
    if len(values) <= limit:
        return values
    idx = torch.linspace(0, len(values) - 1, limit, dtype=torch.float64).round().long()  # step > 1: no repeats
    return values[idx]


def regression_metrics(y_true: Tensor, y_pred: Tensor) -> Evaluation:
    """MSE, RMSE, MAE, R² and n from targets and predictions of shape ``(N,)`` or ``(N, D)``.

    With several outputs, MSE and MAE average over every element and R² over the outputs
    (scikit-learn's ``multioutput="uniform_average"``).

    Example:
        >>> import torch
        >>> ev = regression_metrics(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 3.0]))
        >>> ev.metrics["mae"], ev.metrics["r2"]
        (0.3333333333333333, 0.5)
    """
    import torchmetrics.functional.regression as tmr  # here: importing torchmetrics takes a second or more

    target = torch.as_tensor(y_true).detach().cpu().double()
    pred = torch.as_tensor(y_pred).detach().cpu().double()
    # (N, 1) and (N,) describe the same single output.
    target = target.squeeze(1) if target.ndim == 2 and target.shape[1] == 1 else target
    pred = pred.squeeze(1) if pred.ndim == 2 and pred.shape[1] == 1 else pred
    if target.shape != pred.shape or target.ndim not in (1, 2) or len(target) == 0:
        raise DataError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} must both be "
                        "(N,) or (N, D) with N >= 1")
    if not (torch.isfinite(target).all() and torch.isfinite(pred).all()):
        raise DataError("regression targets and predictions must be finite",
                        hint="a non-finite prediction usually means the model diverged")
    mse = float(tmr.mean_squared_error(pred, target))
    metrics = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(tmr.mean_absolute_error(pred, target))}
    constant = len(target) < 2 or bool((target.var(dim=0, correction=0) == 0).any())
    metrics["r2"] = math.nan if constant else float(tmr.r2_score(pred, target, multioutput="uniform_average"))
    metrics["n"] = float(len(target))
    residuals = {"y_true": _thin(target.flatten(), MAX_RESIDUAL_POINTS).tolist(),
                 "y_pred": _thin(pred.flatten(), MAX_RESIDUAL_POINTS).tolist()}
    return Evaluation("regression", metrics, [], None, {"residuals": residuals}, None)


def _unpack(model_or_artifact: Any) -> tuple[nn.Module, str | None, list[str] | None, Mapping | None]:
    """(model, task, class names, target standardisation); an artifact is recognised by
    shape, not imported (registry sits downstream of evaluate)."""
    if isinstance(model_or_artifact, nn.Module):
        return model_or_artifact, None, None, None
    model = getattr(model_or_artifact, "model", None)
    if isinstance(model, nn.Module) and hasattr(model_or_artifact, "task"):
        preprocessing = getattr(model_or_artifact, "preprocessing", None) or {}
        return (model, model_or_artifact.task, getattr(model_or_artifact, "class_names", None),
                preprocessing.get("target_standardize"))
    raise DataError(f"cannot evaluate a {type(model_or_artifact).__name__}",
                    hint="pass a torch.nn.Module or an Artifact from dlforge.registry.load_artifact")


def _inputs_targets(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0], data[1]
    raise DataError(f"cannot evaluate on a {type(data).__name__}",
                    hint="pass a TensorDataset(x, y) or an (x, y) tuple of tensors")


@torch.no_grad()
def predict_outputs(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Raw model outputs ``(N, outputs)`` in float32 on the CPU, batched, in eval mode.

    The model runs on its own device and gets its train/eval mode back afterwards.

    Example:
        >>> import torch
        >>> predict_outputs(torch.nn.Linear(3, 2), torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()  # dropout off, batch norm on running statistics
    try:
        outs = [model(_as_input(x[i : i + batch_size], device)).float().cpu()
                for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def _as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Features as float32; token ids (integers) stay integers."""
    return x.to(device, torch.float32) if torch.is_floating_point(x) else x.to(device)


def evaluate(
    model_or_artifact: Any,
    data: TensorDataset | tuple[Tensor, Tensor],
    *,
    task: str | None = None,
    class_names: list[str] | None = None,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    target_standardize: Mapping | None = None,
) -> Evaluation:
    """Run a model or a loaded artifact over model-ready ``data`` and score it.

    An artifact supplies its task and class names (explicit arguments win); for a plain
    module the task is classification when the targets are integers. Probabilities are
    the softmax of the logits. ``device`` moves the model there first; by default it
    runs where its parameters are.

    Regression is scored in the target's own units. ``data``'s targets ``y`` must be in
    those units (as in the CSV), while the inputs ``x`` are model-ready (encoded and
    standardised). A model trained on a standardised target outputs standard units:
    its outputs become ``mean + std * output`` with ``target_standardize``
    (``{"mean": [...], "std": [...]}``, ``preprocessing["target_standardize"]``), which an
    artifact supplies itself; ``None`` for a plain module scores the raw outputs.

    Example:
        >>> import torch
        >>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
        >>> evaluate(torch.nn.Linear(4, 3), (x, y)).metrics["n"]
        20.0
    """
    model, art_task, art_names, art_target = _unpack(model_or_artifact)
    task = task or art_task
    target_standardize = target_standardize if target_standardize is not None else art_target
    class_names = class_names if class_names is not None else art_names
    x, y = _inputs_targets(data)
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"evaluation needs as many targets as inputs, at least one; got {len(x)} and {len(y)}")
    if task is None:
        task = "regression" if torch.is_floating_point(y) else "classification"
    if task not in TASKS:
        raise ConfigError(f"task is {task!r}", hint=f"use one of: {', '.join(TASKS)}")
    if device is not None:
        model.to(select_device(device))
    outputs = predict_outputs(model, x, batch_size)  # (N, outputs)
    if task == "regression":
        return regression_metrics(y, to_target_units(outputs.double(), target_standardize))
    if torch.is_floating_point(y):
        if not torch.equal(y, y.round()):
            raise DataError("classification targets must be class indices, got fractional values",
                            hint="pass task='regression' for continuous targets")
        y = y.long()
    return classification_metrics(y, outputs.softmax(dim=1), class_names)
