"""Topic 14, overfitting: the validation loss turns upward while the training loss
keeps falling, and early stopping (or a regulariser) keeps the better model.

Claim, in our words: a network big enough to memorise a small noisy training set will
do so if trained long enough. The sign is a validation loss that reaches a minimum and
then climbs while the training loss keeps going down. Stopping at the validation
minimum (early stopping that restores the best weights) gives a better model on unseen
data than the last epoch's, and so does a regulariser such as dropout.

Method: two noisy concentric circles (noise 0.25, so the classes overlap) with only 50
training points, 100 validation and 9,850 test points (the points are generated, so the test
split can be large: the two models' test accuracies then differ by what they learned, not by
which few hundred points were drawn). A 128-128 ReLU MLP trains with
Adam (lr 0.01) for a fixed, long number of epochs. From its history we take the epoch
of minimum validation loss (the turn) and compare train and validation loss there and
at the end. The same model and seed are trained again with ``EarlyStopping`` on
validation loss (``restore_best_weights=True``), and once more with dropout 0.5 for
the full length; all three are scored on the test split. One seed draws the data and the
initial weights; the lab's runner repeats it over seeds, and the remedies are checked on
their paired differences from the last epoch (same data, same initial weights).
"""

from __future__ import annotations

import numpy as np
import torch

from dlforge.data import load_source, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.lab.finding import significant as _r
from dlforge.models import build
from dlforge.train import EarlyStopping, evaluate_loss, fit, seed_everything
from dlforge.train.health import diagnose

TOPIC = 14
TITLE = "Overfitting"
CLAIM = ("Validation loss that rises while training loss keeps falling reveals overfitting; "
         "early stopping at the validation minimum and regularisation (dropout) give a model "
         "that scores better on unseen data than the last epoch of unregularised training.")
BUDGETS = {
    "quick": {"n_samples": 10_000, "epochs": 100, "patience": 15},
    "full": {"n_samples": 10_000, "epochs": 300, "patience": 25},
}
# Early stopping's test-accuracy gain is small beside its spread: +0.02 to +0.035 on average, sd
# 0.03 per seed over seeds 0-11, 100-111 and 200-211 (on about one seed in five the validation
# minimum comes so early that the restored model scores a few points lower). 20 seeds put the
# interval's half-width near 0.015; a seed costs about 0.6 s idle (2 s on a loaded 2-core machine).
SEEDS = {"quick": 20, "full": 20}
VAL_FRACTION, TEST_FRACTION = 0.01, 0.985  # of 10,000 points: 100 validation, 9,850 test, 50 training
NOISE = 0.25          # circles overlap at this noise: a perfect training fit must be memorised
HIDDEN = [128, 128]   # far more weights than 50 training points need
OPTIM = {"name": "adam", "lr": 0.01}
BATCH_SIZE = 32
DROPOUT = 0.5         # the classic value from the dropout paper, not tuned here


def _train(data, seed: int, epochs: int, dropout: float = 0.0, callbacks=()):
    seed_everything(seed)  # same initial weights for every variant of one seed
    model = build({"arch": "mlp", "hidden": HIDDEN, "dropout": dropout},
                  input_shape=data.input_shape, num_outputs=data.num_outputs)
    result = fit(model, data.train, data.val, epochs=epochs, batch_size=BATCH_SIZE, optim=OPTIM,
                 device="cpu", seed=seed, callbacks=list(callbacks))
    test = evaluate_loss(model, data.test, torch.nn.CrossEntropyLoss())
    return result, test


def _one_seed(seed: int, cfg: dict) -> dict:
    bundle = load_source("circles", n_samples=cfg["n_samples"], noise=NOISE, seed=seed)
    data = prepare(bundle, val=VAL_FRACTION, test=TEST_FRACTION, seed=seed)  # 0.5% train: small on purpose
    long_run, last_test = _train(data, seed, cfg["epochs"])
    train_loss = np.array([r["train_loss"] for r in long_run.epochs])
    val_loss = np.array([r["val_loss"] for r in long_run.epochs])
    turn = int(val_loss.argmin())
    stopper = EarlyStopping("val_loss", patience=cfg["patience"], restore_best_weights=True)
    es_run, es_test = _train(data, seed, cfg["epochs"], callbacks=[stopper])
    _, dropout_test = _train(data, seed, cfg["epochs"], dropout=DROPOUT)
    return {
        "train_size": len(data.train), "turn": turn, "train_loss": train_loss, "val_loss": val_loss,
        "train_ratio": train_loss[-1] / train_loss[turn], "val_ratio": val_loss[-1] / val_loss[turn],
        "last": last_test, "es": es_test, "dropout": dropout_test,
        "es_best_epoch": es_run.best_epoch, "es_epochs_run": es_run.epochs_run,
        # dlforge's own run doctor, with its own thresholds, reading the long run's history
        "diagnosed": int(any(d.kind == "overfitting" for d in diagnose(long_run.history))),
    }


def _figure(first: dict, epochs: int):
    with plot("Train and validation loss", figsize=(6.5, 3.8)) as drawn:
        ax = drawn.axes
        x = np.arange(1, epochs + 1)
        ax.plot(x, first["train_loss"], label="train loss")
        ax.plot(x, first["val_loss"], label="validation loss")
        ax.axvline(first["turn"] + 1, color="grey", ls="--", label=f"val minimum (epoch {first['turn'] + 1})")
        ax.axvline(first["es_epochs_run"], color="tab:red", ls=":", label="early stopping fired")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy")
        ax.set_title("50 noisy training points, 128-128 MLP")
        ax.legend(fontsize=8)
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    s = _one_seed(seed, cfg)
    numbers = {
        "train_size": s["train_size"],
        "epochs": cfg["epochs"],
        "val_turn_epoch": s["turn"] + 1,
        "val_turn_fraction": _r((s["turn"] + 1) / cfg["epochs"]),
        "train_loss_at_turn": _r(s["train_loss"][s["turn"]]),
        "train_loss_last": _r(s["train_loss"][-1]),
        "val_loss_min": _r(s["val_loss"][s["turn"]]),
        "val_loss_last": _r(s["val_loss"][-1]),
        "train_loss_ratio_after_turn": _r(s["train_ratio"]),
        "val_loss_ratio_after_turn": _r(s["val_ratio"]),
        "last_epoch_test_loss": _r(s["last"]["loss"]),
        "last_epoch_test_accuracy": _r(s["last"]["accuracy"]),
        "early_stopped_test_loss": _r(s["es"]["loss"]),
        "early_stopped_test_accuracy": _r(s["es"]["accuracy"]),
        "early_stopped_best_epoch": s["es_best_epoch"] + 1,
        "early_stopped_epochs_run": s["es_epochs_run"],
        "health_diagnosed_overfitting": s["diagnosed"],  # 0/1: over seeds, the fraction
        "dropout_test_loss": _r(s["dropout"]["loss"]),
        "dropout_test_accuracy": _r(s["dropout"]["accuracy"]),
    }
    # Paired on the seed (same data, same initial weights): what each remedy saved.
    numbers["early_stopping_loss_saving"] = _r(numbers["last_epoch_test_loss"] - numbers["early_stopped_test_loss"])
    numbers["early_stopping_accuracy_gain"] = _r(numbers["early_stopped_test_accuracy"]
                                                 - numbers["last_epoch_test_accuracy"])
    numbers["dropout_loss_saving"] = _r(numbers["last_epoch_test_loss"] - numbers["dropout_test_loss"])
    # Thresholds fixed before running: the turn comes in the first half of training; after
    # it the training loss at least halves while the validation loss ends 20% above its
    # minimum; and both remedies beat the last epoch on unseen data, compared on the same
    # seed (a paired difference: the seed's data and initial weights are shared).
    checks = [
        Check("val_turn_fraction", "<=", 0.5),
        Check("train_loss_ratio_after_turn", "<=", 0.5),
        Check("val_loss_ratio_after_turn", ">=", 1.2),
        Check("early_stopping_loss_saving", ">", 0.0),
        Check("early_stopping_accuracy_gain", ">=", 0.0),
        Check("dropout_loss_saving", ">", 0.0),
    ]
    n = numbers
    notes = (f"Accuracy moves far less than loss: on seed {seed} the early-stopped model's test accuracy was "
             f"{n['early_stopped_test_accuracy']} against the last epoch's {n['last_epoch_test_accuracy']}, "
             f"while test cross-entropy went from {n['early_stopped_test_loss']} to {n['last_epoch_test_loss']}: "
             "the overfitted model grows confidently wrong on the points it misses. Early stopping's "
             "accuracy gain is read over seeds (early_stopping_accuracy_gain >= 0): the validation minimum "
             "is found on 100 points, so on some seeds the restored model stopped too early and scored a "
             "few points lower on test, while its test-loss saving (early_stopping_loss_saving) is large "
             "by comparison. Early stopping needs "
             "no retraining, since EarlyStopping restores the weights of the validation minimum. Dropout "
             f"{DROPOUT} is checked on test loss only (its test accuracy was {n['dropout_test_accuracy']}). "
             "dlforge.train.health.diagnose, with its own thresholds, "
             f"{'flagged' if n['health_diagnosed_overfitting'] else 'did not flag'} overfitting in that "
             "seed's long run (health_diagnosed_overfitting: over seeds, the fraction flagged).")
    return Finding(
        topic=TOPIC, title=TITLE, claim=CLAIM,
        method=(f"circles (noise {NOISE}), {numbers['train_size']} training points; MLP {HIDDEN} with "
                f"Adam lr {OPTIM['lr']} for {cfg['epochs']} epochs; the same run with EarlyStopping "
                f"(patience {cfg['patience']}, restore_best_weights) and with dropout {DROPOUT}; "
                "test loss/accuracy of each; remedies compared with the last epoch on the same seed."),
        numbers=numbers, checks=checks,
        figures=[_figure(s, cfg["epochs"])],
        notes=notes,
    )
