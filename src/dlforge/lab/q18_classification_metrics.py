"""Topic 18, classification metrics: each one answers a different question.

Claim, in our words: accuracy asks how often the model is right; precision how often its
positive calls are right; recall how many real positives it finds; F1 balances the two;
ROC-AUC asks how well its scores rank positives above negatives at every threshold; the
confusion matrix shows which classes it mixes up; cross-validation asks how much all
of that moves when the data is split differently. On imbalanced data accuracy alone
misleads: always predicting the majority class scores high and finds no minority case.

Method: (1) an MLP on breast cancer (binary) and one on wine (three classes), scored on
a held-out split with ``dlforge.evaluate.classification_metrics``; every metric is recomputed with
scikit-learn and the largest absolute difference reported. (2) The majority-class trap:
breast cancer cut down to 1 malignant case per 19 benign ones; a predictor that always
says "benign" against an MLP trained on the same data. (3) 5-fold stratified
cross-validation of the breast-cancer run with ``dlforge.pipeline.cross_validate``: mean
and spread of the fold scores, and where the single split of (1) falls in that spread.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

from dlforge.config import validate_config
from dlforge.data import load_source, prepare
from dlforge.evaluate import classification_metrics, evaluate, predict_outputs
from dlforge.pipeline.crossval import cross_validate
from dlforge.lab.finding import Check, Finding, plot
from dlforge.lab.finding import significant as _r
from dlforge.models import build
from dlforge.train import fit, seed_everything

TOPIC = 18
TITLE = "Classification metrics"
CLAIM = ("Accuracy, precision, recall, F1, ROC-AUC, the confusion matrix and cross-validation "
         "each answer a different question; on imbalanced data a majority-class predictor has "
         "high accuracy and a minority-class F1 of 0, and cross-validation shows how much a "
         "single split's score can move.")
BUDGETS = {
    "quick": {"epochs": 20, "folds": 5},
    "full": {"epochs": 60, "folds": 10},
}
SEEDS = {"quick": 5, "full": 5}  # the z of one split against CV is spread out: 3 seeds give a t interval too wide to read
MODEL = {"arch": "mlp", "hidden": [32]}
OPTIM = {"name": "adam", "lr": 3e-3}
BATCH_SIZE = 32
TEST = 0.2               # the same held-out share as one fold of 5-fold CV
MINORITY_PER_MAJORITY = 1 / 19   # 5% malignant


class MajorityClass(nn.Module):
    """Always predicts ``label`` with probability 1 (logit 0 against -1e4 for the others).

    Example:
        >>> MajorityClass(1, 2)(torch.zeros(3, 5)).softmax(dim=1)[:, 1].tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, label: int, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.full((n_classes,), -1e4).index_fill(0, torch.tensor([label]), 0.0))
        self.anchor = nn.Parameter(torch.zeros(()))  # evaluate() looks up the device from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)  # (B, K)


def _train(data, epochs: int, seed: int) -> nn.Module:
    seed_everything(seed)
    model = build(MODEL, input_shape=data.input_shape, num_outputs=data.num_outputs)
    fit(model, data.train, epochs=epochs, batch_size=BATCH_SIZE, optim=OPTIM, device="cpu", seed=seed)
    return model


def sklearn_differences(ev, y: np.ndarray, probs: np.ndarray) -> tuple[float, bool]:
    """Largest |dlforge - scikit-learn| over the metrics both compute, and whether the
    confusion matrices are identical.

    Example:
        >>> probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
        >>> y = np.array([0, 1, 1, 1])
        >>> ev = classification_metrics(torch.from_numpy(y), torch.from_numpy(probs))
        >>> diff, same = sklearn_differences(ev, y, probs)
        >>> diff < 1e-6, same
        (True, True)
    """
    pred = probs.argmax(1)
    binary = probs.shape[1] == 2
    ref = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
           "log_loss": skm.log_loss(y, probs, labels=range(probs.shape[1]))}
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        for average in ("macro", "micro", "weighted"):
            ref[f"{name}_{average}"] = fn(y, pred, average=average, zero_division=0)
    if binary:
        ref["roc_auc"] = skm.roc_auc_score(y, probs[:, 1])
        ref["pr_auc"] = skm.average_precision_score(y, probs[:, 1])
    else:
        ref["roc_auc"] = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
        onehot = np.eye(probs.shape[1])[y]  # (N, K)
        ref["pr_auc"] = skm.average_precision_score(onehot, probs, average="macro")
    diff = max(abs(ev.metrics[k] - float(v)) for k, v in ref.items())
    same_confusion = ev.confusion == skm.confusion_matrix(y, pred, labels=range(probs.shape[1])).tolist()
    return diff, same_confusion


def _scored(source: str, epochs: int, seed: int):
    data = prepare(load_source(source), val=0.0, test=TEST, seed=seed)
    model = _train(data, epochs, seed)
    x, y = data.test.tensors
    # Softmax in float64, so both libraries score the very same probabilities and rows sum to 1.
    probs = predict_outputs(model, x).double().softmax(dim=1)  # (N, K)
    ev = classification_metrics(y, probs, data.class_names)
    return ev, sklearn_differences(ev, y.numpy(), probs.numpy())


def _imbalanced(seed: int):
    bundle = load_source("breast_cancer")  # class 0 malignant (212), class 1 benign (357)
    rng = np.random.default_rng(seed)
    benign, malignant = np.flatnonzero(bundle.y == 1), np.flatnonzero(bundle.y == 0)
    keep = rng.choice(malignant, size=round(len(benign) * MINORITY_PER_MAJORITY), replace=False)
    return prepare(bundle.subset(np.sort(np.concatenate([benign, keep]))), val=0.0, test=0.3, seed=seed)


def _figure(trap, trained, folds: list[dict]):
    with plot("The majority-class trap and CV folds", 1, 2, figsize=(10, 3.8)) as drawn:
        a, b = drawn.axes
        keys = ["accuracy", "balanced_accuracy", "minority_recall", "minority_f1", "roc_auc"]
        xs = np.arange(len(keys))
        for offset, (label, vals) in ((-0.2, ("always benign", trap)), (0.2, ("trained MLP", trained))):
            a.bar(xs + offset, [vals[k] for k in keys], width=0.4, label=label)
        a.set_xticks(xs, [k.replace("_", "\n") for k in keys], fontsize=8)
        a.set(ylim=(0, 1.05), title="5% malignant: the majority-class trap")
        a.legend(fontsize=8)
        for key in ("accuracy", "f1_macro", "roc_auc"):
            b.plot(range(1, len(folds) + 1), [f[key] for f in folds], marker="o", label=key)
        b.set(xlabel="fold", ylabel="held-out score", title="Cross-validation: one score per fold")
        b.legend(fontsize=8)
    return drawn.figure


def _trap_numbers(ev) -> dict:
    minority = ev.per_class[0]  # malignant
    return {"accuracy": ev.metrics["accuracy"], "balanced_accuracy": ev.metrics["balanced_accuracy"],
            "minority_recall": minority["recall"], "minority_f1": minority["f1"], "roc_auc": ev.metrics["roc_auc"]}


def run(cfg: dict, seed: int) -> Finding:
    binary, (diff_b, conf_b) = _scored("breast_cancer", cfg["epochs"], seed)
    multi, (diff_m, conf_m) = _scored("wine", cfg["epochs"], seed)

    data = _imbalanced(seed)
    trap = _trap_numbers(evaluate(MajorityClass(1, 2), data.test, class_names=data.class_names))
    trained = _trap_numbers(evaluate(_train(data, cfg["epochs"], seed), data.test, class_names=data.class_names))

    run_cfg = validate_config({
        "seed": seed, "data": {"source": "breast_cancer", "split": {"val": 0.0}}, "model": MODEL,
        "optim": OPTIM, "train": {"epochs": cfg["epochs"], "batch_size": BATCH_SIZE, "device": "cpu"}})
    cv = cross_validate(run_cfg, k=cfg["folds"])
    fold_acc = [f["accuracy"] for f in cv.folds]
    single = binary.metrics["accuracy"]

    numbers = {f"binary_{k}": _r(binary.metrics[k]) for k in ("accuracy", "precision_macro", "recall_macro",
                                                               "f1_macro", "roc_auc", "pr_auc")}
    numbers |= {
        "binary_confusion": binary.confusion,
        "multiclass_accuracy": _r(multi.metrics["accuracy"]),
        "multiclass_roc_auc": _r(multi.metrics["roc_auc"]),
        "metrics_max_abs_diff_vs_sklearn": _r(max(diff_b, diff_m)),
        "confusion_matches_sklearn": int(conf_b and conf_m),
        "imbalanced_test_size": len(data.test),
        "imbalanced_minority_in_test": int((data.test.tensors[1] == 0).sum()),
        **{f"trap_{k}": _r(v) for k, v in trap.items()},
        **{f"trained_{k}": _r(v) for k, v in trained.items()},
        "cv_folds": cfg["folds"],
        "cv_accuracy_per_fold": [_r(a) for a in fold_acc],
        "cv_accuracy_mean": _r(cv.mean["accuracy"]),
        "cv_accuracy_std": _r(cv.std["accuracy"]),
        "cv_f1_macro_mean": _r(cv.mean["f1_macro"]),
        "cv_f1_macro_std": _r(cv.std["f1_macro"]),
        "cv_roc_auc_mean": _r(cv.mean["roc_auc"]),
        "cv_roc_auc_std": _r(cv.std["roc_auc"]),
        "single_split_accuracy": _r(single),
        "single_split_gap_to_cv_mean": _r(abs(single - cv.mean["accuracy"])),
        "cv_accuracy_two_std": _r(2 * cv.std["accuracy"]),
        # The same comparison on one scale per seed: the single split's distance from the CV
        # mean in fold standard deviations (within two stds <=> at most 2).
        "single_split_gap_in_cv_stds": _r(abs(single - cv.mean["accuracy"]) / max(cv.std["accuracy"], 1e-12)),
    }
    # Fixed before running: dlforge agrees with scikit-learn to 1e-6 and exactly on the
    # confusion matrix; the always-benign predictor scores at least 0.9 accuracy with a
    # malignant F1 of 0 and a balanced accuracy of 0.5 at best, while the trained model
    # reaches a malignant F1 of at least 0.5; the single split lies within two fold stds.
    checks = [
        Check("metrics_max_abs_diff_vs_sklearn", "<=", 1e-6),
        Check("confusion_matches_sklearn", ">=", 1),
        Check("trap_accuracy", ">=", 0.9),
        Check("trap_minority_f1", "<=", 0.0),
        Check("trap_balanced_accuracy", "<=", 0.5),
        Check("trained_minority_f1", ">=", 0.5),
        Check("single_split_gap_in_cv_stds", "<=", 2.0),
    ]
    notes = ("ROC-AUC of a constant predictor is 0.5 whatever the class balance, so it exposes the "
             "trap as clearly as F1 does; accuracy alone separates the trained model from the "
             f"always-benign one by only {_r(trained['accuracy'] - trap['accuracy'])}. With "
             f"{numbers['imbalanced_minority_in_test']} malignant cases in the test split the trained "
             "model's minority F1 is itself a coarse number (each case moves it a lot), which is the "
             "case for cross-validation on small imbalanced sets.")
    return Finding(
        topic=TOPIC, title=TITLE, claim=CLAIM,
        method=(f"MLP {MODEL['hidden']} (Adam lr {OPTIM['lr']}, {cfg['epochs']} epochs) on breast cancer and "
                f"wine, held-out {TEST:.0%}, dlforge.evaluate.classification_metrics versus scikit-learn; "
                "breast cancer cut to 5% malignant, always-benign predictor versus a trained MLP; "
                f"{cfg['folds']}-fold stratified cross_validate of the breast-cancer run."),
        numbers=numbers, checks=checks,
        figures=[_figure(trap, trained, cv.folds)],
        notes=notes,
    )
