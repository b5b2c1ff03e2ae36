"""What a diagnosis is: :class:`Diagnosis`, the named thresholds, and which parameters
count as weight layers."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

KINDS = ("vanishing_gradients", "exploding_gradients", "non_finite", "dead_relu", "overfitting",
         "lr_too_high", "lr_too_low", "worse_than_baseline")
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


@dataclass
class HeldOutScores:
    """Plain numbers about the held-out split, for the worse-than-baseline check (train
    does not import evaluate: the caller copies the numbers in).

    ``r2`` (regression) or ``accuracy`` (classification) is the model's, in the target's
    units; ``majority_accuracy`` the share of the held-out split the majority class of the
    train split gets right; ``baselines`` each baseline's headline number (R² or
    accuracy); ``target_standardized`` whether the regression target was standardised.

    Example:
        >>> HeldOutScores("test", r2=-0.4).r2
        -0.4
    """

    split: str  # "test" or "val"
    r2: float | None = None
    accuracy: float | None = None
    majority_accuracy: float | None = None
    baselines: dict[str, float] = field(default_factory=dict)
    target_standardized: bool | None = None


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
    # Held-out R² below 0 means predicting the training mean for every row would have done
    # better (R² is 0 for the test mean itself, and the training mean is close to it): the
    # model has learned nothing usable, whatever its loss curve looks like.
    min_r2: float = 0.0
    # Held-out accuracy at or below (majority-class rate + this) is what always answering
    # the most common class gets: no margin, since any real gain on the test split counts.
    majority_margin: float = 0.0


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
