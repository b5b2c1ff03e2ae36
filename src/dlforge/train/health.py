"""Training diagnosis: what went wrong in a run, the numbers that show it, and the fix.

:func:`diagnose` reads a run's history (``FitResult.history`` or the lines of
``history.jsonl``) and returns one :class:`Diagnosis` per problem it finds: vanishing or
exploding gradients, non-finite values, dead ReLUs, overfitting, a learning rate that is
too high or too low. A healthy run gives an empty list; a false alarm is a bug. Every
threshold lives in :class:`HealthThresholds` with the reason for its value.

What each check needs: gradient checks need the ``grad_norm/*`` keys that
:class:`~dlforge.train.GradientMonitor` adds to logged step records; the learning-rate
checks use epoch ``train_loss`` and step ``loss`` (and ``update_ratio/*`` when present);
overfitting needs ``val_loss``; dead ReLUs need :func:`dead_relu_fraction` of the model.

Which parameters count as weight layers (for layer-to-layer comparisons): a parameter
whose last name part contains ``bias`` is skipped, and so is a norm layer's scale, found
by name: a module-path part that contains ``norm`` or is ``bn``/``ln``/``gn`` (``bn1``,
``ln_f``), or, in dlforge's own models, any child after position 0 of a block in
``layers.<i>`` / ``blocks.<i>`` (each block holds its one Linear/Conv at position 0,
followed by BatchNorm, activation and dropout). Pass ``weight_names`` (for example
``weight_layer_names(model)``, the parameters with ``ndim > 1``) to make it exact.

Epoch numbers in ``evidence`` are the history's own (0-based); messages count from 1, as
the progress bar does.

Example:
    >>> history = [{"type": "epoch", "epoch": e, "train_loss": 0.5 ** e, "val_loss": 0.6 ** e}
    ...            for e in range(10)]
    >>> diagnose(history)
    []
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

KINDS = ("vanishing_gradients", "exploding_gradients", "non_finite", "dead_relu", "overfitting",
         "lr_too_high", "lr_too_low")
SEVERITIES = ("error", "warning", "info")


@dataclass
class Diagnosis:
    """One finding: what kind of problem, how bad, in plain words, the numbers, the fix."""

    kind: str  # one of KINDS
    severity: str  # "error": training failed; "warning": the result suffers; "info": worth a look
    message: str  # one or two plain sentences a learner understands
    evidence: dict[str, Any]  # the numbers behind it (JSON-able; non-finite floats as "nan"/"inf")
    fix: str  # which config key to change, and to what

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with the five fields."""
        return asdict(self)


@dataclass(frozen=True)
class HealthThresholds:
    """Every number the checks compare against, with why it has its default.

    Example:
        >>> strict = HealthThresholds(vanishing_ratio=1e-2, overfit_patience=2)
        >>> diagnose([], thresholds=strict)
        []
    """

    # Medians over fewer logged steps are one or two noisy batches, not a trend.
    min_grad_steps: int = 4
    # First/last weight layer gradient-norm ratio: healthy deep nets stay within ~10-100x;
    # a 20-layer sigmoid net is below 1e-10. 1e-3 leaves a wide margin on both sides.
    vanishing_ratio: float = 1e-3
    # Last-quarter / first-quarter median of the total gradient norm. Healthy runs grow it
    # up to ~10-100x as the model sharpens; 1000x means the updates feed on themselves.
    exploding_growth: float = 1e3
    # A layer with more than half its units never active has lost most of its capacity;
    # a few dead units (10-20%) are normal in a trained ReLU net.
    dead_fraction: float = 0.5
    # Overfitting: at least this many epochs after the best val_loss epoch, so one bad
    # epoch (noise) is not a trend ...
    overfit_patience: int = 3
    # ... with the final val_loss at least 10% above its best (smaller rises are noise on
    # a small validation set) ...
    overfit_val_rise: float = 0.1
    # ... and having given back at least a tenth of its improvement since the first epoch:
    # near zero loss a few val samples move the loss by 20%, which is noise, not a trend ...
    overfit_giveback: float = 0.1
    # ... while the final train_loss is at least 5% below its value at the best epoch
    # (the model keeps fitting the training set; if it does not, it is not overfitting).
    overfit_train_drop: float = 0.05
    # Divergence: the last epoch's train_loss more than 5% above the first epoch's. The
    # first epoch averages the loss from initialisation on, so a learning run ends well
    # below it; the 5% keeps a run that is merely not learning (noise) out.
    divergence_ratio: float = 1.05
    # A loss spike: `spike_length` logged losses in a row, each this many times the median
    # of the `spike_window` logged losses before them and above the first logged loss (the
    # untrained model's). One hard batch of 8 samples can do that alone; an overshoot
    # damages the weights, so the next batch is bad too.
    spike_factor: float = 10.0
    spike_window: int = 10
    spike_length: int = 2
    # Oscillation: over at least this many epochs ...
    oscillation_min_epochs: int = 6
    # ... the epoch-to-epoch train_loss change flips sign at least half the time ...
    oscillation_sign_changes: float = 0.5
    # ... with a median swing of at least 10% of the first epoch's loss (small wiggles
    # near a minimum are minibatch noise; BatchNorm nets swing ~5% with data order alone),
    # and no new low in the second half of the run (a bumpy run that still descends is fine).
    oscillation_amplitude: float = 0.1
    # Flat loss: over at least this many epochs ...
    flat_min_epochs: int = 5
    # ... train_loss fell by less than 1% of its first value in total ...
    flat_rel_decrease: float = 0.01
    # ... and is not already near zero (a solved task has nothing left to fall).
    near_zero_loss: float = 1e-3
    # Every weight layer's median update/weight ratio below this: the weights barely move.
    # A healthy step changes a weight matrix by about 1e-3 of its norm.
    tiny_update_ratio: float = 1e-5
    healthy_update_ratio: float = 1e-3  # used to suggest a learning rate


# ----------------------------------------------------------------------------- helpers

_NORM_PART = re.compile(r".*norm.*|(bn|ln|gn)(\d*|_\w*)", re.IGNORECASE)
_DLFORGE_BLOCK_CHILD = re.compile(r"^(layers|blocks)\.\d+\.(\d+)\.")


def is_weight_layer_name(name: str) -> bool:
    """Whether a parameter name is a weight matrix or kernel, judged by name alone (no
    biases, no norm-layer scales); for when only the history is at hand.

    Example:
        >>> is_weight_layer_name("layers.0.0.weight"), is_weight_layer_name("layers.0.1.weight")
        (True, False)
    """
    parts = name.split(".")
    if "bias" in parts[-1]:
        return False
    if any(_NORM_PART.fullmatch(p) for p in parts[:-1]):
        return False
    block = _DLFORGE_BLOCK_CHILD.match(name)
    return not (block and int(block.group(2)) > 0)


def weight_layer_names(model: nn.Module) -> list[str]:
    """The parameters that are weight matrices or kernels (``ndim > 1``), in model order.

    Example:
        >>> weight_layer_names(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))
        ['0.weight', '2.weight']
    """
    return [name for name, p in model.named_parameters() if p.ndim > 1]


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
        "fewer hidden layers (model.hidden) also help",
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
        f"(model.hidden) or more data",
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


# ----------------------------------------------------------------------------- public API

def diagnose(
    history: Sequence[dict[str, Any]],
    *,
    nan_report: dict[str, Any] | None = None,
    dead_units: dict[str, float] | None = None,
    thresholds: HealthThresholds | None = None,
    weight_names: Iterable[str] | None = None,
) -> list[Diagnosis]:
    """Find what went wrong in a training run; errors first, an empty list when healthy.

    ``history`` is ``FitResult.history`` or the parsed lines of ``history.jsonl``;
    ``nan_report`` is ``FitResult.nan_report``; ``dead_units`` is the output of
    :func:`dead_relu_fraction`; ``weight_names`` overrides the name rule for weight layers
    (see the module docstring).

    Example:
        >>> steps = [{"type": "step", "step": s, "loss": 0.7, "grad_norm/layers.0.0.weight": 1e-9,
        ...           "grad_norm/head.weight": 0.1, "grad_norm/total": 0.1} for s in range(8)]
        >>> [d.kind for d in diagnose(steps)]
        ['vanishing_gradients']
    """
    t = thresholds or HealthThresholds()
    epochs = [r for r in history if r.get("type") == "epoch"]
    steps = [r for r in history if r.get("type") == "step"]
    layers = _grad_layers(steps, weight_names)
    lr = _peak_lr(history)
    bad = _first_non_finite(history)
    went_bad = nan_report is not None or bad is not None

    found: list[Diagnosis | None] = []
    if nan_report is not None:
        found.append(_from_nan_report(nan_report))
    elif bad is not None:
        found.append(_from_history(bad))
    overflow = bad if bad is not None and bad["loss_finite"] else None
    exploding = _check_exploding(steps, overflow, went_bad, t)
    # In a run that blew up, layer-to-layer gradient ratios measure the blow-up, not depth.
    vanishing = None if exploding or went_bad else _check_vanishing(steps, layers, t)
    found += [exploding, vanishing, _check_dead_relu(dead_units, t) if dead_units else None]
    too_high = _check_lr_too_high(epochs, steps, lr, went_bad, nan_report, t)
    found += [too_high, None if too_high or went_bad else _check_lr_too_low(epochs, steps, layers, lr, t),
              _check_overfitting(epochs, t)]
    diagnoses = [d for d in found if d is not None]
    return sorted(diagnoses, key=lambda d: SEVERITIES.index(d.severity))  # stable: check order within a level


@torch.no_grad()
def dead_relu_fraction(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per ``nn.ReLU`` module: the fraction of its units never active (output > 0) on ``x``.

    A unit is a feature of a (B, F) output and a channel of a (B, C, ...) output (a conv
    channel counts as alive if any sample is positive anywhere in its map). The model runs
    once in eval mode (BatchNorm uses its running statistics, dropout is off) and is put
    back in its previous mode. A ReLU module called several times in one forward pass (one
    instance shared by layers) counts each call's units separately. Functional
    ``F.relu`` calls and other activations (LeakyReLU, GELU) are not seen.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].bias.copy_(torch.tensor([-100.0, -100.0, -100.0, 100.0]))
        >>> dead_relu_fraction(net, torch.randn(16, 2))
        {'1': 0.75}
    """
    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    alive: dict[str, list[torch.Tensor]] = {name: [] for name, _ in relus}

    def record(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            out = output.detach()
            units = out.reshape(1, -1) if out.ndim == 1 else out.transpose(0, 1).reshape(out.shape[1], -1)  # (U, B*...)
            alive[name].append((units > 0).any(dim=1))  # (U,)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in relus]
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()
        model(x.to(param.device) if param is not None else x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    fractions = {}
    for name, calls in alive.items():
        if calls:
            units = torch.cat(calls)  # (U,) over every call
            fractions[name] = (units.numel() - int(units.sum())) / units.numel()
    return fractions


def _show(value: Any, limit: int = 6) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        items = [f"{k}={_show(v)}" for k, v in value.items()]
        if len(items) > limit:
            items = items[: limit // 2] + ["..."] + items[-(limit // 2):]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        items = [_show(v) for v in value]
        if len(items) > limit:
            items = items[: limit // 2] + ["..."] + items[-(limit // 2):]
        return "[" + ", ".join(items) + "]"
    return str(value)


def format_diagnoses(diagnoses: Sequence[Diagnosis]) -> str:
    """Plain text for the terminal: one block per finding (severity, kind, message,
    evidence, fix), or one line saying nothing was found.

    Example:
        >>> print(format_diagnoses([]))
        No training problems found.
        >>> d = Diagnosis("lr_too_low", "warning", "The loss is flat.", {"lr": 1e-7}, "raise optim.lr")
        >>> print(format_diagnoses([d]))
        [warning] lr_too_low: The loss is flat.
          evidence: lr=1e-07
          fix: raise optim.lr
    """
    if not diagnoses:
        return "No training problems found."
    blocks = []
    for d in diagnoses:
        evidence = ", ".join(f"{k}={_show(v)}" for k, v in d.evidence.items())
        blocks.append(f"[{d.severity}] {d.kind}: {d.message}\n  evidence: {evidence}\n  fix: {d.fix}")
    return "\n\n".join(blocks)


__all__ = ["Diagnosis", "HealthThresholds", "KINDS", "dead_relu_fraction", "diagnose", "format_diagnoses",
           "is_weight_layer_name", "weight_layer_names"]
