"""Topic 14, overfitting: the validation loss turns upward while the training loss
keeps falling, and early stopping (or a regulariser) keeps the better model.

Claim, in our words: a network big enough to memorise a small noisy training set will
do so if trained long enough. The sign is a validation loss that reaches a minimum and
then climbs while the training loss keeps going down. Stopping at the validation
minimum (early stopping that restores the best weights) gives a better model on unseen
data than the last epoch's, and so does a regulariser such as dropout.

Method: two noisy concentric circles (noise 0.25, so the classes overlap) with only 50
training points, 100 validation and 100 test points. A 128-128 ReLU MLP trains with
Adam (lr 0.01) for a fixed, long number of epochs. From its history we take the epoch
of minimum validation loss (the turn) and compare train and validation loss there and
at the end. The same model and seed are trained again with ``EarlyStopping`` on
validation loss (``restore_best_weights=True``), and once more with dropout 0.5 for
the full length; all three are scored on the test split. The full budget repeats this
over several data seeds and reports means.
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
    "quick": {"n_samples": 250, "epochs": 100, "patience": 15, "seeds": 1},
    "full": {"n_samples": 250, "epochs": 300, "patience": 25, "seeds": 5},
}
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
    data = prepare(bundle, val=0.4, test=0.4, seed=seed)  # 20% train: small on purpose
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
    per_seed = [_one_seed(seed + i, cfg) for i in range(cfg["seeds"])]
    mean = lambda f: _r(np.mean([f(s) for s in per_seed]))  # noqa: E731
    numbers = {
        "train_size": per_seed[0]["train_size"],
        "epochs": cfg["epochs"],
        "seeds": cfg["seeds"],
        "val_turn_epoch": mean(lambda s: s["turn"] + 1),
        "val_turn_fraction": mean(lambda s: (s["turn"] + 1) / cfg["epochs"]),
        "train_loss_at_turn": mean(lambda s: s["train_loss"][s["turn"]]),
        "train_loss_last": mean(lambda s: s["train_loss"][-1]),
        "val_loss_min": mean(lambda s: s["val_loss"][s["turn"]]),
        "val_loss_last": mean(lambda s: s["val_loss"][-1]),
        "train_loss_ratio_after_turn": mean(lambda s: s["train_ratio"]),
        "val_loss_ratio_after_turn": mean(lambda s: s["val_ratio"]),
        "last_epoch_test_loss": mean(lambda s: s["last"]["loss"]),
        "last_epoch_test_accuracy": mean(lambda s: s["last"]["accuracy"]),
        "early_stopped_test_loss": mean(lambda s: s["es"]["loss"]),
        "early_stopped_test_accuracy": mean(lambda s: s["es"]["accuracy"]),
        "early_stopped_best_epoch": mean(lambda s: s["es_best_epoch"] + 1),
        "early_stopped_epochs_run": mean(lambda s: s["es_epochs_run"]),
        "health_diagnosed_overfitting": mean(lambda s: s["diagnosed"]),
        "dropout_test_loss": mean(lambda s: s["dropout"]["loss"]),
        "dropout_test_accuracy": mean(lambda s: s["dropout"]["accuracy"]),
        "last_epoch_test_accuracy_per_seed": [_r(s["last"]["accuracy"]) for s in per_seed],
        "early_stopped_test_accuracy_per_seed": [_r(s["es"]["accuracy"]) for s in per_seed],
    }
    # Thresholds fixed before running: the turn comes in the first half of training; after
    # it the training loss at least halves while the validation loss ends 20% above its
    # minimum; and both remedies beat the last epoch on unseen data.
    checks = [
        Check("val_turn_fraction", "<=", 0.5),
        Check("train_loss_ratio_after_turn", "<=", 0.5),
        Check("val_loss_ratio_after_turn", ">=", 1.2),
        Check("early_stopped_test_loss", "<", "last_epoch_test_loss"),
        Check("early_stopped_test_accuracy", ">=", "last_epoch_test_accuracy"),
        Check("dropout_test_loss", "<", "last_epoch_test_loss"),
    ]
    n = numbers
    notes = (f"Accuracy moves far less than loss: the early-stopped model's test accuracy was "
             f"{n['early_stopped_test_accuracy']} against the last epoch's {n['last_epoch_test_accuracy']}, "
             f"while test cross-entropy went from {n['early_stopped_test_loss']} to {n['last_epoch_test_loss']}: "
             "the overfitted model grows confidently wrong on the points it misses. Early stopping needs "
             "no retraining, since EarlyStopping restores the weights of the validation minimum. Dropout "
             f"{DROPOUT} is checked on test loss only (its test accuracy was {n['dropout_test_accuracy']}). "
             "dlforge.train.health.diagnose, with its own thresholds, flagged overfitting in the long "
             f"run's history in {n['health_diagnosed_overfitting']:.0%} of seeds.")
    return Finding(
        topic=TOPIC, title=TITLE, claim=CLAIM,
        method=(f"circles (noise {NOISE}), {numbers['train_size']} training points; MLP {HIDDEN} with "
                f"Adam lr {OPTIM['lr']} for {cfg['epochs']} epochs; the same run with EarlyStopping "
                f"(patience {cfg['patience']}, restore_best_weights) and with dropout {DROPOUT}; "
                f"test loss/accuracy of each, mean over {cfg['seeds']} seed(s)."),
        numbers=numbers, checks=checks,
        figures=[_figure(per_seed[0], cfg["epochs"])],
        notes=notes,
    )
