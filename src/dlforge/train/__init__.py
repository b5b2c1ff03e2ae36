"""Training: the :func:`fit` loop, optimizers and schedules, callbacks.

Example:
    >>> from dlforge.train import fit, EarlyStopping
"""

from dlforge.train.callbacks import Callback, Checkpoint, EarlyStopping, HistoryWriter, ProgressBar, find_last_checkpoint
from dlforge.train.batches import batch_notes, epoch_permutation, fold_single_batch, iterate_batches
from dlforge.train.devices import available_devices, select_device
from dlforge.targets import IGNORE_INDEX
from dlforge.train.engine import count_correct, evaluate_loss, fit, seed_everything
from dlforge.train.gradients import GradientMonitor, NanGuard
from dlforge.train.health import Diagnosis, HealthThresholds, dead_relu_fraction, diagnose, format_diagnoses
from dlforge.train.optim import OptimConfig, ScheduleConfig, Scheduler, build_optimizer, lr_factor
from dlforge.train.state import FitResult, TrainState
from dlforge.train.bagging import bagging_members
from dlforge.train.losses import FocalLoss, LossConfig, build_loss, class_weights, cross_entropy, resolve_loss
from dlforge.train.pseudo_label import pseudo_label_fit
from dlforge.train.transfer import (
    GradualUnfreezing,
    TransferReport,
    freeze,
    layerwise_lr_groups,
    load_pretrained_weights,
    param_groups,
    trainable_summary,
    unfreeze,
)

__all__ = [
    "Callback", "Checkpoint", "Diagnosis", "EarlyStopping", "HealthThresholds", "dead_relu_fraction", "diagnose",
    "format_diagnoses", "FitResult", "GradientMonitor", "HistoryWriter", "NanGuard",
    "OptimConfig", "ProgressBar", "ScheduleConfig", "Scheduler", "TrainState", "build_optimizer",
    "IGNORE_INDEX", "available_devices", "batch_notes", "count_correct", "cross_entropy", "epoch_permutation",
    "evaluate_loss", "find_last_checkpoint", "fit", "fold_single_batch", "iterate_batches", "lr_factor",
    "resolve_loss", "seed_everything", "select_device",
    "GradualUnfreezing", "TransferReport", "freeze", "layerwise_lr_groups", "load_pretrained_weights",
    "param_groups", "trainable_summary", "unfreeze",
    "FocalLoss", "LossConfig", "bagging_members", "build_loss", "class_weights", "pseudo_label_fit",
]
