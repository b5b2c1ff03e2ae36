"""Topic 2, machine learning versus deep learning: who wins depends on how much data.

Claim: a deep network learns its features from the data, which makes it hungrier for
data and compute than classical models on fixed inputs; on small data the classical
models hold up or win, and the network gains more as the data grows.

Method: learning curves on scikit-learn's 8x8 digits. A fixed, stratified 30% of the
set is held out; from the rest, stratified subsets of increasing size train a logistic
regression, an RBF-kernel SVM and a random forest (scikit-learn, default settings), and
dlforge's CNN (two conv blocks, Adam, the same number of optimizer steps at every size
so small sets are not under-trained). Each model's held-out accuracy and training time
are measured at every size, for one seed (the lab's runner repeats it over seeds). The
checks read the trend of the gap "best classical minus CNN": above zero at the smallest
size, smaller at the full set than at the smallest, so quick and full (the same sweep
with more sizes and seeds) test the same thing.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC
from torch.utils.data import TensorDataset

from dlforge.data import load_source, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import build
from dlforge.train import evaluate_loss, fit, resolve_loss, seed_everything

TOPIC = 2
TITLE = "ML versus DL"
CLAIM = ("Deep learning needs more data and compute than classical ML: on a few dozen "
         "digits the classical models match or beat a CNN, the CNN gains more as the "
         "training set grows, and it costs more training time.")
BUDGETS = {
    # The same ends at both budgets (same CNN step budget, same smallest and largest size): the
    # checks read only those two; the full budget adds the sizes between them (the learning
    # curve of the figure) and seeds. sizes: training-set sizes (None: all). Quick measured 100
    # and 400 too until issue 18's time cut: 45% of a seed, read by no check.
    "quick": {"sizes": [30, None], "cnn_steps": 300, "trees": 50},
    "full": {"sizes": [30, 50, 100, 200, 400, 800, None], "cnn_steps": 300, "trees": 50},
}
# The gap on 30 digits is 0.01 to 0.07 between seeds: 3 seeds leave its interval across 0.
SEEDS = {"quick": 5, "full": 8}
# One CPU thread whatever the runner asks (run_topic reads MAX_THREADS): the 8x8 CNN's ops are
# too small to gain from a second thread, and they pay its synchronisation. Measured on the
# shared two-core machine (load ~7), seed 0 of the quick budget: 3.2 s of CPU on one thread,
# 40-75 s on two; set B (two workers of two threads) took 34 s against set A's 15 s.
MAX_THREADS = 1
WALL_CLOCK = True  # cnn_over_slowest_classical_seconds_at_all reads training times (never at low priority)
BATCH_SIZE = 32
CATCH_UP_TOLERANCE = 0.02  # "the CNN catches up" = within this of the best classical model
CLASSICAL = ("logreg", "svm", "forest")


def classical_models(trees: int, seed: int) -> dict[str, object]:
    """The three scikit-learn baselines, fresh and seeded."""
    return {
        "logreg": LogisticRegression(max_iter=2000),
        "svm": SVC(kernel="rbf"),
        "forest": RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1),
    }


def train_cnn(train: TensorDataset, test: TensorDataset, steps: int, seed: int) -> float:
    """Train dlforge's CNN for about ``steps`` optimizer steps; held-out accuracy."""
    model = build({"arch": "cnn", "channels": [16, 32]}, input_shape=(1, 8, 8), num_outputs=10)
    epochs = max(1, math.ceil(steps / math.ceil(len(train) / BATCH_SIZE)))
    fit(model, train, epochs=epochs, batch_size=BATCH_SIZE, optim={"name": "adam", "lr": 3e-3},
        device="cpu", seed=seed)
    return evaluate_loss(model, test, resolve_loss(None, test.tensors[1]))["accuracy"]


def measure_at(n: int, x_all: torch.Tensor, y_all: torch.Tensor, test: TensorDataset,
               cfg: dict, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out accuracy and training seconds of every model trained on ``n`` samples."""
    idx = np.arange(len(y_all))
    if n < len(y_all):  # stratified, so 50 samples still hold every digit
        idx, _ = train_test_split(idx, train_size=n, stratify=y_all.numpy(), random_state=seed)
    x_n, y_n = x_all[idx], y_all[idx]  # (n, 1, 8, 8), (n,)
    x_test, y_test = (t.numpy() for t in (test.tensors[0].flatten(1), test.tensors[1]))
    acc, secs = {}, {}
    for name, model in classical_models(cfg["trees"], seed).items():
        start = time.perf_counter()
        model.fit(x_n.flatten(1).numpy(), y_n.numpy())  # raw pixels: (n, 64)
        secs[name] = time.perf_counter() - start
        acc[name] = float(model.score(x_test, y_test))
    start = time.perf_counter()
    acc["cnn"] = train_cnn(TensorDataset(x_n, y_n), test, cfg["cnn_steps"], seed)
    secs["cnn"] = time.perf_counter() - start
    return acc, secs


def _figure(sizes: list[int], acc: dict[str, list[float]], secs: dict[str, list[float]]):
    with plot("Learning curves on digits", 1, 2, figsize=(10, 4)) as drawn:
        ax1, ax2 = drawn.axes
        for name in (*CLASSICAL, "cnn"):
            style = "o-" if name == "cnn" else "s--"
            ax1.plot(sizes, acc[name], style, label=name)
            ax2.plot(sizes, secs[name], style, label=name)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel("training samples")
            ax.legend()
        ax1.set_ylabel("held-out accuracy")
        ax2.set_yscale("log")
        ax2.set_ylabel("training time (s)")
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    seed_everything(seed)
    # The first optimizer a process builds imports torch._dynamo (seconds); pay that
    # before any clock starts so it is not billed to the CNN's smallest size.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    data = prepare(load_source("digits"), val=0, test=0.3, seed=seed)
    x_all, y_all = data.train.tensors  # (N, 1, 8, 8), (N,)
    sizes = [len(y_all) if s is None else s for s in cfg["sizes"]]
    names = (*CLASSICAL, "cnn")
    measured = [measure_at(n, x_all, y_all, data.test, cfg, seed) for n in sizes]
    acc = {m: [round(a[m], 4) for a, _ in measured] for m in names}
    secs = {m: [round(t[m], 4) for _, t in measured] for m in names}

    # The best classical model at each size (the envelope: logistic regression wins small
    # sets, the SVM large ones) against the CNN; gap > 0 means classical ML is ahead.
    best = [max(acc[m][i] for m in CLASSICAL) for i in range(len(sizes))]
    gap = [round(b - c, 4) for b, c in zip(best, acc["cnn"])]
    caught_up = next((n for n, g in zip(sizes, gap) if g <= CATCH_UP_TOLERANCE), None)
    numbers: dict[str, object] = {"sizes": sizes}
    for name in names:
        numbers[f"{name}_accuracy"] = acc[name]
        numbers[f"{name}_train_seconds"] = secs[name]
    numbers["best_classical_accuracy"] = best
    numbers["classical_minus_cnn"] = gap
    for n, g in zip(sizes, gap):  # one scalar per size, so each gets its interval over seeds
        numbers[f"classical_minus_cnn_at_{n}"] = g
    numbers.update({
        "classical_minus_cnn_at_smallest": gap[0],
        "classical_minus_cnn_at_all": gap[-1],
        # How much of the small-data gap the CNN closes by the full set (> 0: it gains more).
        "gap_closed_by_all": round(gap[0] - gap[-1], 4),
        "best_classical_gain": round(best[-1] - best[0], 4),
        "cnn_gain": round(acc["cnn"][-1] - acc["cnn"][0], 4),
        "cnn_within_tolerance_at_all": int(gap[-1] <= CATCH_UP_TOLERANCE),  # mean: fraction of seeds
        "cnn_over_slowest_classical_seconds_at_all": round(
            secs["cnn"][-1] / max(secs[m][-1] for m in CLASSICAL), 3),
    })
    checks = [
        # classical ML wins on a few dozen digits: the best classical model above the CNN
        Check("classical_minus_cnn_at_smallest", ">", 0.0),
        # the CNN gains more as the set grows: the small-data gap shrinks by the full set
        Check("gap_closed_by_all", ">", 0.0),
        # deep learning costs more compute: the CNN trains slower than every classical model
        Check("cnn_over_slowest_classical_seconds_at_all", ">", 1.0),
    ]
    method = (f"digits, 30% held out ({len(data.test)} images); stratified training subsets of "
              f"{sizes} images (one draw per seed; the seed also draws the split and the "
              f"CNN's initialisation); logistic regression, RBF SVM, random forest "
              f"({cfg['trees']} trees) from scikit-learn versus dlforge's CNN (channels "
              f"[16, 32], batch norm, Adam lr 3e-3, about {cfg['cnn_steps']} steps of batch "
              f"{BATCH_SIZE} at every size, so small sets are not under-trained), all on one "
              "thread; held-out accuracy and training time (perf_counter) at every size. The "
              "checks read the gap between the best classical model and the CNN at the "
              "smallest and the largest size, per seed.")
    where = (f"first came within {CATCH_UP_TOLERANCE} of the best classical model at {caught_up} samples"
             if caught_up is not None else f"stayed more than {CATCH_UP_TOLERANCE} behind at every size")
    notes = ("On a few dozen digits the best classical model (logistic regression there) is "
             "ahead of the CNN on most seeds but not on all: in the lab's quick runs (seeds 0 to "
             "4) the gap 'best classical minus CNN' at 30 samples ranged from -0.02 to +0.07 "
             "(mean 0.025), so its 95% interval reaches below the bound 0 and the small-data "
             "checks stay inconclusive; by 100 samples (a size the full budget measures) the two are level, and at the full set "
             "they stay within 0.01. On the first seed the CNN "
             f"{where}. The gap at every size, with its interval over seeds, is in the numbers "
             "(classical_minus_cnn_at_N). Digits is 8x8 pixels and easy, and a CNN's "
             "convolutions are a strong prior, so the CNN is about as sample-efficient as the "
             "best classical model, and an RBF SVM on raw pixels is a strong baseline at every "
             "size: the guide's 'classical ML wins on small data' is at most a tendency of a few "
             "points here, inside the spread between draws of 30 images. The cost side holds "
             "clearly: the CNN trains several times longer than the slowest classical model. "
             "Training times are wall-clock on a shared CPU and vary between runs; only their "
             "ratio within one run is checked.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[_figure(sizes, acc, secs)], notes=notes)
