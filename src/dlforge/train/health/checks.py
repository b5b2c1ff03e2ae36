"""The individual checks behind :func:`dlforge.train.health.diagnose`: each reads the
history and returns a :class:`Diagnosis` or None."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Sequence

from dlforge.train.health.findings import Diagnosis, HealthThresholds, HeldOutScores, is_weight_layer_name

def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _clean(value: Any) -> Any:
    """JSON-able evidence: non-finite floats become strings, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf"
    return value


def _make(kind: str, severity: str, message: str, evidence: dict[str, Any], fix: str) -> Diagnosis:
    return Diagnosis(kind, severity, message, _clean(evidence), fix)


def _peak_lr(history: Sequence[dict]) -> float | None:
    lrs = _finite(r.get("lr") for r in history)
    return max(lrs) if lrs else None


def _grad_layers(steps: Sequence[dict], weight_names: Iterable[str] | None) -> list[str]:
    """Parameter names with logged gradient norms, in model (input-to-output) order."""
    seen: dict[str, None] = {}
    for r in steps:
        for key in r:
            if key.startswith("grad_norm/") and key != "grad_norm/total":
                seen.setdefault(key[len("grad_norm/"):])
    if weight_names is not None:
        keep = set(weight_names)
        return [n for n in seen if n in keep]
    return [n for n in seen if is_weight_layer_name(n)]


def _medians(steps: Sequence[dict], prefix: str, names: Sequence[str], min_count: int) -> dict[str, float]:
    out = {}
    for name in names:
        values = _finite(r.get(f"{prefix}{name}") for r in steps)
        if len(values) >= min_count:
            out[name] = statistics.median(values)
    return out


# ----------------------------------------------------------------------------- gradient checks

def _check_vanishing(steps: Sequence[dict], layers: list[str], t: HealthThresholds) -> Diagnosis | None:
    medians = _medians(steps, "grad_norm/", layers, t.min_grad_steps)
    if len(medians) < 2:
        return None
    names = list(medians)
    first, last = names[0], names[-1]
    if medians[last] <= 0:
        return None  # the output layer learns nothing either: not a front-to-back decay
    ratio = medians[first] / medians[last]
    if ratio >= t.vanishing_ratio:
        return None
    shrink = f"{1 / ratio:.3g}x smaller" if ratio > 0 else "exactly zero"
    return _make(
        "vanishing_gradients", "warning",
        f"Gradients vanish on their way back to the input: the first weight layer ({first}) gets a "
        f"gradient {shrink} than the last ({last}), so the early layers barely learn.",
        {"ratio": ratio, "threshold": t.vanishing_ratio, "first_layer": first, "last_layer": last,
         "median_grad_norm": medians, "logged_steps": len(_finite(r.get(f"grad_norm/{first}") for r in steps))},
        "use model.activation: relu with model.init: he, or add model.batch_norm: before; "
        "fewer layers (model.hidden for an MLP, model.channels for a CNN, model.widths for a U-Net) also help",
    )


def _check_exploding(steps: Sequence[dict], overflow: dict | None, went_bad: bool,
                     t: HealthThresholds) -> Diagnosis | None:
    totals = [(r.get("step"), float(r["grad_norm/total"])) for r in steps
              if isinstance(r.get("grad_norm/total"), (int, float)) and math.isfinite(r["grad_norm/total"])]
    growth = None
    evidence: dict[str, Any] = {}
    if len(totals) >= t.min_grad_steps:
        q = max(1, len(totals) // 4)
        early = statistics.median(v for _, v in totals[:q])
        late = statistics.median(v for _, v in totals[-q:])
        growth = late / early if early > 0 else (math.inf if late > 0 else 1.0)
        peak_step, peak = max(totals, key=lambda sv: sv[1])
        evidence = {"growth": growth, "threshold": t.exploding_growth, "first_quarter_median": early,
                    "last_quarter_median": late, "max_grad_norm": peak, "step_of_max": peak_step,
                    "logged_steps": len(totals)}
    if overflow is None and (growth is None or growth <= t.exploding_growth):
        return None
    if overflow is not None:
        evidence.update(overflow_step=overflow["step"], overflow_layer=overflow["key"][len("grad_norm/"):])
        message = (f"Gradients exploded: the gradient of {evidence['overflow_layer']} overflowed at step "
                   f"{overflow['step']} while the loss was still finite.")
    else:
        message = (f"Gradients explode: the total gradient norm grew {growth:.3g}x from the first to the "
                   f"last quarter of the run, so each step is bigger than the one before.")
    return _make(
        "exploding_gradients", "error" if went_bad else "warning", message, evidence,
        "set train.clip_grad_norm: 1.0 and lower optim.lr (try 10x smaller); model.batch_norm: before "
        "or model.init: he (xavier for tanh/sigmoid) keeps gradients in range",
    )


# ----------------------------------------------------------------------------- non-finite values

_SCANNED = ("loss", "train_loss", "val_loss", "grad_norm/total")


def _first_non_finite(history: Sequence[dict]) -> dict | None:
    """The first record holding a NaN/Inf loss or gradient norm. ``update_ratio/*`` is not
    scanned: GradientMonitor writes inf there for an all-zero weight, which is legitimate."""
    for r in history:
        keys = [k for k in r if k in _SCANNED or (k.startswith("grad_norm/"))]
        bad = [k for k in keys if isinstance(r[k], (int, float)) and not math.isfinite(r[k])]
        if bad:
            losses_bad = [k for k in bad if not k.startswith("grad_norm/")]
            key = losses_bad[0] if losses_bad else next((k for k in bad if k != "grad_norm/total"), bad[0])
            return {"type": r.get("type"), "step": r.get("step"), "epoch": r.get("epoch"), "key": key,
                    "value": r[key], "loss_finite": not losses_bad}
    return None


def _from_nan_report(report: dict) -> Diagnosis:
    layer = report.get("first_bad_layer")
    epoch = report.get("epoch")
    where = f" (epoch {epoch + 1})" if isinstance(epoch, int) else ""
    return _make(
        "non_finite", "error",
        f"Training stopped at step {report.get('step')}{where}: the {report.get('where', 'loss')} became "
        f"non-finite" + (f", first in {layer}" if layer else "") + f". Likely cause: {report.get('cause', 'unknown')}.",
        {k: report.get(k) for k in ("step", "epoch", "where", "first_bad_layer", "bad_layers", "loss", "lr",
                                    "recent_grad_norms", "cause")},
        report.get("fix") or "lower optim.lr (try 10x smaller) and set train.clip_grad_norm: 1.0",
    )


def _from_history(bad: dict) -> Diagnosis:
    when = f"step {bad['step']}" if bad["type"] == "step" else f"epoch {bad['epoch'] + 1}"
    return _make(
        "non_finite", "error",
        f"Training went non-finite: {bad['key']} became {bad['value']} at {when}, and every number after "
        f"that is meaningless.",
        {k: bad[k] for k in ("type", "step", "epoch", "key", "value")},
        "keep train.nan_guard: true (it stops at the first bad step and names the layer), lower optim.lr "
        "(try 10x smaller) and set train.clip_grad_norm: 1.0",
    )


# ----------------------------------------------------------------------------- loss-curve checks

def _first_spike(values: Sequence[tuple[Any, float]], t: HealthThresholds) -> dict | None:
    """The first run of `spike_length` (label, loss) pairs, each above spike_factor x the
    running median before the run and above the first loss."""
    for i in range(1, len(values) - t.spike_length + 1):
        ref = statistics.median(v for _, v in values[max(0, i - t.spike_window):i])
        run = [v for _, v in values[i:i + t.spike_length]]
        if all(v > t.spike_factor * ref and v > values[0][1] for v in run):
            label, loss = values[i]
            return {"at": label, "loss": loss, "running_median": ref, "factor": loss / ref if ref > 0 else math.inf}
    return None


def _oscillation(losses: Sequence[float], t: HealthThresholds) -> dict | None:
    """Evidence that the epoch losses bounce without settling, or None."""
    if len(losses) < t.oscillation_min_epochs or losses[0] <= 0:
        return None
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    signs = [d > 0 for d in diffs if d != 0]
    flips = sum(a != b for a, b in zip(signs, signs[1:])) / max(len(signs) - 1, 1)
    swing = statistics.median(abs(d) for d in diffs) / losses[0]
    half = len(losses) // 2
    stuck = min(losses[half:]) >= min(losses[:half])
    if flips < t.oscillation_sign_changes or swing < t.oscillation_amplitude or not stuck:
        return None
    return {"sign_change_fraction": flips, "median_swing": swing, "best_first_half": min(losses[:half]),
            "best_second_half": min(losses[half:]), "threshold_sign_changes": t.oscillation_sign_changes,
            "threshold_swing": t.oscillation_amplitude, "train_loss": list(losses)}


def _epoch_losses(epochs: Sequence[dict], key: str) -> list[tuple[int, float]]:
    return [(r.get("epoch"), float(r[key])) for r in epochs
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def _check_lr_too_high(epochs: Sequence[dict], steps: Sequence[dict], lr: float | None, went_bad: bool,
                       nan_report: dict | None, t: HealthThresholds) -> Diagnosis | None:
    train = _epoch_losses(epochs, "train_loss")
    step_losses = [(r.get("step"), float(r["loss"])) for r in steps
                   if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    lower = f"lower optim.lr (now {lr:.3g}; try {lr / 10:.3g})" if lr else "lower optim.lr (try 10x smaller)"
    fix = f"{lower} and set train.clip_grad_norm: 1.0; a warmup (optim.schedule.warmup_epochs: 1) also helps"
    if len(train) >= 2 and train[-1][1] > t.divergence_ratio * train[0][1]:
        return _make("lr_too_high", "error",
                     f"The loss diverged: the last epoch's training loss ({train[-1][1]:.4g}) is above the first "
                     f"epoch's ({train[0][1]:.4g}), so the steps overshoot instead of descending.",
                     {"first_train_loss": train[0][1], "final_train_loss": train[-1][1],
                      "ratio": train[-1][1] / train[0][1] if train[0][1] > 0 else math.inf,
                      "threshold": t.divergence_ratio, "epochs": len(train), "lr": lr}, fix)
    for unit, losses in (("step", step_losses), ("epoch", train)):
        spike = _first_spike(losses, t)
        if spike is not None:
            return _make("lr_too_high", "error" if went_bad else "warning",
                         f"The loss spiked to {spike['loss']:.4g} at {unit} {spike['at']}, {spike['factor']:.3g}x its "
                         f"running median and above where training started: a step overshot.",
                         {**spike, "unit": unit, "threshold": t.spike_factor, "initial_loss": losses[0][1],
                          "lr": lr}, fix)
    oscillation = _oscillation([v for _, v in train], t)
    if oscillation is not None:
        return _make("lr_too_high", "warning",
                     f"The training loss oscillates: it changed direction in {oscillation['sign_change_fraction']:.0%} "
                     f"of epochs, swinging by {oscillation['median_swing']:.1%} of its starting value, and made no "
                     f"progress in the second half of the run.", {**oscillation, "lr": lr}, fix)
    # The run blew up before a spike had a median to stand out from: compare the first
    # logged loss with the last finite one (NanGuard's report holds the loss of the bad step).
    last = step_losses[-1] if step_losses else None
    if nan_report is not None and isinstance(nan_report.get("loss"), (int, float)) and math.isfinite(nan_report["loss"]):
        last = (nan_report.get("step"), float(nan_report["loss"]))
    if went_bad and step_losses and last is not None and last[1] > t.spike_factor * step_losses[0][1]:
        return _make("lr_too_high", "error",
                     f"The loss grew from {step_losses[0][1]:.4g} to {last[1]:.4g} by step {last[0]} and then went "
                     f"non-finite: the steps are far too big.",
                     {"first_loss": step_losses[0][1], "last_finite_loss": last[1], "step": last[0], "lr": lr}, fix)
    return None


def _check_lr_too_low(epochs: Sequence[dict], steps: Sequence[dict], layers: list[str], lr: float | None,
                      t: HealthThresholds) -> Diagnosis | None:
    train = _epoch_losses(epochs, "train_loss")
    if len(train) < t.flat_min_epochs or train[0][1] <= 0:
        return None
    first, last = train[0][1], train[-1][1]
    decrease = (first - last) / first
    if decrease >= t.flat_rel_decrease or last < t.near_zero_loss:
        return None
    ratios = _medians(steps, "update_ratio/", layers, t.min_grad_steps)
    largest = max(ratios.values()) if ratios else None
    if largest is not None and largest >= t.tiny_update_ratio:
        return None  # the weights move: a flat loss has another cause
    evidence = {"epochs": len(train), "first_train_loss": first, "final_train_loss": last,
                "relative_decrease": decrease, "threshold": t.flat_rel_decrease, "lr": lr}
    message = (f"The loss is flat: the training loss fell only {decrease:.2%} over {len(train)} epochs, "
               f"so the steps are too small to make progress.")
    if largest is not None:
        evidence.update(largest_median_update_ratio=largest, update_ratio_threshold=t.tiny_update_ratio,
                        median_update_ratio=ratios)
        message += f" Each step changes the weights by at most {largest:.2g} of their size (about 1e-3 is typical)."
    factor = 100.0
    if largest is not None and largest > 0:
        factor = min(max(t.healthy_update_ratio / largest, 10.0), 1e4)
    raise_to = f"raise optim.lr (now {lr:.3g}; try {lr * factor:.2g})" if lr else "raise optim.lr (try 100x)"
    return _make("lr_too_low", "warning", message, evidence,
                 f"{raise_to}, or use optim.name: adam, which adapts the step size per weight")


def _check_overfitting(epochs: Sequence[dict], t: HealthThresholds) -> Diagnosis | None:
    rows = [r for r in epochs if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
                                     for k in ("train_loss", "val_loss"))]
    if len(rows) < t.overfit_patience + 1:
        return None
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])  # the first best on ties
    since = len(rows) - 1 - best
    best_val, final_val = rows[best]["val_loss"], rows[-1]["val_loss"]
    train_best, train_final = rows[best]["train_loss"], rows[-1]["train_loss"]
    first_val = rows[0]["val_loss"]
    if since < t.overfit_patience or final_val < best_val * (1 + t.overfit_val_rise):
        return None
    if final_val - best_val < t.overfit_giveback * (first_val - best_val):
        return None  # a small rise next to what validation gained: noise at a plateau
    if train_final > train_best * (1 - t.overfit_train_drop):
        return None  # the training loss rose too: a stability problem, not overfitting
    best_epoch = rows[best].get("epoch", best)
    return _make(
        "overfitting", "warning",
        f"The model overfits: validation loss was best at epoch {best_epoch + 1} ({best_val:.4g}) and rose "
        f"{final_val / best_val - 1:.0%} over the next {since} epochs while the training loss kept falling.",
        {"best_epoch": best_epoch, "best_val_loss": best_val, "final_val_loss": final_val,
         "first_val_loss": first_val, "val_rise": final_val / best_val - 1,
         "giveback": (final_val - best_val) / (first_val - best_val) if first_val > best_val else None,
         "epochs_since_best": since, "train_loss_at_best": train_best,
         "final_train_loss": train_final, "train_change": train_final / train_best - 1 if train_best else None,
         "val_loss_after_best": [r["val_loss"] for r in rows[best:]]},
        f"set train.early_stopping: {{monitor: val_loss, patience: {t.overfit_patience}}} (it keeps the best "
        f"epoch's weights), regularise (model.dropout: 0.3, optim.weight_decay: 1e-4), use a smaller model "
        f"(model.hidden for an MLP, model.channels for a CNN, model.widths for a U-Net, model.dim for a BERT) "
        f"or more data",
    )


def _check_dead_relu(dead_units: dict[str, float], t: HealthThresholds) -> Diagnosis | None:
    dead = {name: frac for name, frac in dead_units.items() if frac > t.dead_fraction}
    if not dead:
        return None
    worst = max(dead, key=dead.get)
    return _make(
        "dead_relu", "error" if dead[worst] >= 1.0 else "warning",
        f"{len(dead)} ReLU layer(s) have more than {t.dead_fraction:.0%} dead units (never positive on the "
        f"probe batch); worst: {worst} with {dead[worst]:.0%}. Dead units pass no gradient, so they never recover.",
        {"dead_layers": dead, "dead_fraction": dict(dead_units), "threshold": t.dead_fraction},
        "use model.activation: leaky_relu (or gelu) with model.init: he, or model.batch_norm: before; "
        "lower optim.lr if units died during training",
    )


# ----------------------------------------------------------------------------- held-out scores

def _check_worse_than_baseline(scores: HeldOutScores, t: HealthThresholds) -> Diagnosis | None:
    """A model scoring below the training mean (R² < 0) or at the majority-class rate."""
    better = {name: v for name, v in scores.baselines.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if scores.r2 is not None and math.isfinite(scores.r2) and scores.r2 < t.min_r2:
        scale = ("set data.standardize_target: true (an unscaled target in the hundreds or thousands makes "
                 "the loss huge and the default lr far too small), then " if scores.target_standardized is False
                 else "")
        return _make(
            "worse_than_baseline", "error",
            f"The model does worse than predicting the training mean for every row: {scores.split} R² is "
            f"{scores.r2:.3g} (0 is the mean's score, 1 is perfect).",
            {"split": scores.split, "r2": scores.r2, "threshold": t.min_r2, "baselines_r2": better,
             "target_standardized": scores.target_standardized},
            f"{scale}raise train.epochs or optim.lr (the loss may still be falling), and check the features: "
            f"drop id columns (data.drop) and make sure the inputs relate to the target",
        )
    acc, majority = scores.accuracy, scores.majority_accuracy
    if acc is None or majority is None or not (math.isfinite(acc) and math.isfinite(majority)):
        return None
    if acc > majority + t.majority_margin:
        return None
    return _make(
        "worse_than_baseline", "error",
        f"The model is no better than always answering the most common class: {scores.split} accuracy "
        f"{acc:.3g} vs the majority-class rate {majority:.3g}.",
        {"split": scores.split, "accuracy": acc, "majority_accuracy": majority, "margin": t.majority_margin,
         "baselines_accuracy": better},
        "raise train.epochs or optim.lr (the loss may still be falling); with skewed classes set "
        "data.imbalance (e.g. sampler: balanced) or train.loss: {name: cross_entropy, class_weights: inverse}; "
        "check that the features carry signal",
    )
