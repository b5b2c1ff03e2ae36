"""Every metric against scikit-learn (ECE against a hand-written reference), on random and
degenerate inputs, and evaluate() against the metrics of a model's own softmax outputs."""

from __future__ import annotations

import doctest
import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning as skm_warning
from sklearn.preprocessing import label_binarize
from torch import nn
from torchmetrics.functional.classification import multiclass_calibration_error

from dlforge.data import load_source, prepare
from dlforge.errors import DataError
from dlforge.evaluate import (
    Evaluation, classification_metrics, evaluate, expected_calibration_error, regression_metrics,
)
from dlforge.models import build
from dlforge.registry import load_artifact, save_artifact
from dlforge.train import fit

CLASSIFICATION_KEYS = {
    "accuracy", "balanced_accuracy", "precision_macro", "precision_micro", "precision_weighted",
    "recall_macro", "recall_micro", "recall_weighted", "f1_macro", "f1_micro", "f1_weighted",
    "roc_auc", "pr_auc", "log_loss", "ece", "n",
}
# torchmetrics divides counts in float32: agreement with sklearn is to ~1e-7, not bit-exact.
TOL = {"rel": 1e-6, "abs": 1e-7}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_probs(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (n,) and softmax probabilities (n, k) in float64, so rows sum to 1 for sklearn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    logits[torch.arange(n), y] += 1.0  # better than chance, so every metric is informative
    return y, logits.softmax(dim=1)


def ece_reference(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: 15 equal-width bins [i/15, (i+1)/15) of the top-class
    confidence, the last bin closed at 1; sum of |accuracy - confidence| weighted by bin share."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def sklearn_threshold_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The metrics of hard predictions, from scikit-learn (zero_division=0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" and the like
        ref = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred)}
        for average in ("macro", "micro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
            ref.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    return ref


def check_against_sklearn(ev: Evaluation, y_t: torch.Tensor, p_t: torch.Tensor) -> None:
    """Threshold metrics, log loss, ECE, per-class scores and the confusion matrix."""
    y, p = y_t.numpy(), p_t.numpy()
    k = p.shape[1]
    pred = p.argmax(axis=1)
    for key, value in sklearn_threshold_metrics(y, pred).items():
        assert ev.metrics[key] == pytest.approx(value, **TOL), key
    assert ev.metrics["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=list(range(k))), **TOL)
    assert ev.metrics["ece"] == pytest.approx(ece_reference(y, p), **TOL)
    assert ev.metrics["n"] == len(y)
    assert ev.confusion == skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=list(range(k)), average=None, zero_division=0)
    torch.testing.assert_close(torch.tensor([[c["precision"], c["recall"], c["f1"]] for c in ev.per_class], dtype=torch.float64),
                               torch.tensor(np.stack([prec, rec, f1], axis=1)), rtol=1e-6, atol=1e-7)
    assert [c["support"] for c in ev.per_class] == support.tolist()


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_inputs_match_sklearn(k: int, seed: int) -> None:
    y_t, p_t = random_probs(300, k, seed)
    ev = classification_metrics(y_t, p_t)
    assert set(ev.metrics) == CLASSIFICATION_KEYS
    check_against_sklearn(ev, y_t, p_t)
    y, p = y_t.numpy(), p_t.numpy()
    if k == 2:  # positive class 1
        assert ev.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), **TOL)
        assert ev.metrics["pr_auc"] == pytest.approx(skm.average_precision_score(y, p[:, 1]), **TOL)
    else:
        roc = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
        ap = skm.average_precision_score(label_binarize(y, classes=list(range(k))), p, average="macro")
        assert ev.metrics["roc_auc"] == pytest.approx(roc, **TOL)
        assert ev.metrics["pr_auc"] == pytest.approx(ap, **TOL)


def test_binary_curves_are_the_positive_class_and_match_sklearn() -> None:
    y_t, p_t = random_probs(80, 2, seed=3)
    p_t[:10] = p_t[10]  # tied scores
    ev = classification_metrics(y_t, p_t, ["neg", "pos"])
    y, score = y_t.numpy(), p_t[:, 1].numpy()
    assert list(ev.curves["roc"]) == ["pos"] and list(ev.curves["pr"]) == ["pos"]
    fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    precision, recall, _ = skm.precision_recall_curve(y, score)
    for curve, key, ref in [("roc", "fpr", fpr), ("roc", "tpr", tpr), ("pr", "precision", precision),
                            ("pr", "recall", recall)]:
        got = torch.tensor(ev.curves[curve]["pos"][key], dtype=torch.float64)
        torch.testing.assert_close(got, torch.from_numpy(ref), rtol=1e-6, atol=1e-7)
    assert ev.curves["roc"]["pos"]["auc"] == ev.metrics["roc_auc"]
    assert ev.curves["pr"]["pos"]["ap"] == ev.metrics["pr_auc"]


def test_multiclass_curves_cover_every_class() -> None:
    y_t, p_t = random_probs(120, 3, seed=4)
    ev = classification_metrics(y_t, p_t, ["a", "b", "c"])
    y, p = y_t.numpy(), p_t.numpy()
    for c, name in enumerate("abc"):
        assert ev.curves["roc"][name]["auc"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]), **TOL)
        assert ev.curves["pr"][name]["ap"] == pytest.approx(skm.average_precision_score(y == c, p[:, c]), **TOL)
    assert [c["class"] for c in ev.per_class] == ["a", "b", "c"]
    assert ev.class_names == ["a", "b", "c"]


def test_ece_bins_confidence_one_with_the_last_bin() -> None:
    # Saturated softmax outputs give a confidence of exactly 1.0; one is a confident mistake.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.95, 0.05], [0.7, 0.3], [0.3, 0.7]],
                     dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 1])
    ev = classification_metrics(y, p)
    assert ev.metrics["ece"] == pytest.approx(ece_reference(y.numpy(), p.numpy()), rel=1e-12)
    assert ev.metrics["ece"] > 0


@pytest.mark.parametrize("k", [2, 4])
def test_ece_agrees_with_torchmetrics_below_confidence_one(k: int) -> None:
    y, p = random_probs(500, k, seed=k)
    assert p.max() < 1  # torchmetrics differs only at a confidence of exactly 1.0
    ours = expected_calibration_error(y, p)
    theirs = multiclass_calibration_error(p, y, num_classes=k, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(theirs), abs=1e-6)  # torchmetrics bins in float32
    assert ours == pytest.approx(ece_reference(y.numpy(), p.numpy()), rel=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_one_class_in_y_true(k: int) -> None:
    y_t, p_t = random_probs(50, k, seed=5)
    y_t = torch.zeros_like(y_t)  # only class 0 present
    ev = classification_metrics(y_t, p_t)
    check_against_sklearn(ev, y_t, p_t)
    y, p = y_t.numpy(), p_t.numpy()
    # ROC-AUC is undefined: sklearn warns and gives NaN (binary) or raises (multiclass); ours is NaN.
    if k == 2:
        with pytest.warns(skm_warning, match="Only one class"):
            assert math.isnan(skm.roc_auc_score(y, p[:, 1]))
    else:
        with pytest.raises(ValueError, match="Number of classes"):
            skm.roc_auc_score(y, p, multi_class="ovr")
    assert math.isnan(ev.metrics["roc_auc"]) and ev.curves["roc"] == {}
    # Average precision without a positive sample: sklearn warns and returns 0, ours is NaN.
    with pytest.warns(UserWarning, match="No positive class"):
        skm.average_precision_score(y == 1, p[:, 1])
    assert math.isnan(ev.metrics["pr_auc"])
    assert "1" not in ev.curves["pr"]


def test_only_the_positive_class_in_y_true() -> None:
    y_t, p_t = random_probs(40, 2, seed=6)
    y_t = torch.ones_like(y_t)
    ev = classification_metrics(y_t, p_t)
    check_against_sklearn(ev, y_t, p_t)
    with pytest.warns(skm_warning, match="Only one class"):
        assert math.isnan(skm.roc_auc_score(y_t.numpy(), p_t[:, 1].numpy()))
    assert math.isnan(ev.metrics["roc_auc"])
    # With positives only, precision is 1 at every threshold: AP is defined and equals 1.
    assert ev.metrics["pr_auc"] == pytest.approx(skm.average_precision_score(y_t.numpy(), p_t[:, 1].numpy()))


@pytest.mark.parametrize("k", [2, 4])
def test_all_predictions_the_same_class(k: int) -> None:
    y_t, _ = random_probs(60, k, seed=7)
    g = torch.Generator().manual_seed(7)
    p_t = torch.rand(60, k, generator=g, dtype=torch.float64) * 0.1
    p_t[:, 0] += 1.0  # class 0 always wins, with varying scores
    p_t = p_t / p_t.sum(dim=1, keepdim=True)
    ev = classification_metrics(y_t, p_t)
    check_against_sklearn(ev, y_t, p_t)  # zero_division=0 for the never-predicted classes
    assert all(c["precision"] == 0.0 for c in ev.per_class[1:])
    y, p = y_t.numpy(), p_t.numpy()
    roc = skm.roc_auc_score(y, p[:, 1]) if k == 2 else skm.roc_auc_score(y, p, multi_class="ovr")
    assert ev.metrics["roc_auc"] == pytest.approx(roc, **TOL)


@pytest.mark.parametrize("k", [2, 3])
def test_perfect_predictions(k: int) -> None:
    y_t = torch.arange(30) % k
    p_t = torch.nn.functional.one_hot(y_t, k).double()
    ev = classification_metrics(y_t, p_t)
    check_against_sklearn(ev, y_t, p_t)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc"):
        assert ev.metrics[key] == pytest.approx(1.0), key
    assert ev.metrics["ece"] == pytest.approx(0.0, abs=1e-12)
    assert ev.confusion == (torch.eye(k, dtype=torch.long) * (30 // k)).tolist()


def test_classes_absent_from_y_true_and_predictions() -> None:
    """A K-class model scored on data that holds only two of its classes."""
    y_t, p_t = random_probs(40, 2, seed=8)
    p_t = torch.cat([p_t * 0.9, torch.full((40, 2), 0.05, dtype=torch.float64)], dim=1)  # (40, 4)
    ev = classification_metrics(y_t, p_t)
    check_against_sklearn(ev, y_t, p_t)
    assert len(ev.per_class) == 4 and ev.per_class[3]["support"] == 0
    assert math.isnan(ev.metrics["roc_auc"])  # classes 2 and 3 have no positives


def test_float32_probabilities_are_accepted() -> None:
    y_t, p_t = random_probs(100, 3, seed=9)
    ev32, ev64 = classification_metrics(y_t, p_t.float()), classification_metrics(y_t, p_t)
    for key in CLASSIFICATION_KEYS:
        assert ev32.metrics[key] == pytest.approx(ev64.metrics[key], rel=1e-5, abs=1e-6), key


def test_bad_inputs_are_explained() -> None:
    y, p = random_probs(10, 3, seed=0)
    with pytest.raises(DataError, match="softmax"):
        classification_metrics(y, torch.log(p))  # logits, not probabilities
    with pytest.raises(DataError, match="0..2"):
        classification_metrics(torch.full((10,), 3), p)
    with pytest.raises(DataError, match="class names"):
        classification_metrics(y, p, ["a", "b"])
    with pytest.raises(DataError, match="integer"):
        classification_metrics(y.double(), p)
    with pytest.raises(DataError, match=r"\(N,\)"):
        regression_metrics(torch.zeros(5), torch.zeros(4))


@pytest.mark.parametrize("shape", [(200,), (200, 1), (200, 3)])
def test_regression_matches_sklearn(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    y_pred = y + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    ev = regression_metrics(y, y_pred)
    yn, pn = y.numpy(), y_pred.numpy()
    assert set(ev.metrics) == {"mse", "rmse", "mae", "r2", "n"}
    assert ev.metrics["mse"] == pytest.approx(skm.mean_squared_error(yn, pn), rel=1e-12)
    assert ev.metrics["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(yn, pn)), rel=1e-12)
    assert ev.metrics["mae"] == pytest.approx(skm.mean_absolute_error(yn, pn), rel=1e-12)
    assert ev.metrics["r2"] == pytest.approx(skm.r2_score(yn, pn), rel=1e-10)
    assert ev.metrics["n"] == 200
    assert ev.per_class == [] and ev.confusion is None and ev.class_names is None
    assert ev.curves["residuals"]["y_true"] == yn.flatten().tolist()


def test_regression_constant_target_r2_is_nan() -> None:
    y, y_pred = torch.full((20,), 3.0), torch.linspace(2, 4, 20)
    ev = regression_metrics(y, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not math.isfinite(skm.r2_score(y.numpy(), y_pred.numpy(), force_finite=False))
    assert math.isnan(ev.metrics["r2"])
    assert ev.metrics["mse"] == pytest.approx(skm.mean_squared_error(y.numpy(), y_pred.numpy()))


def test_residuals_are_subsampled_pairs() -> None:
    y = torch.arange(5000, dtype=torch.float64)
    ev = regression_metrics(y, 2 * y)
    res = ev.curves["residuals"]
    assert len(res["y_true"]) == len(res["y_pred"]) == 2000
    assert res["y_pred"] == [2 * v for v in res["y_true"]]  # pairs stay aligned
    assert res["y_true"][0] == 0 and res["y_true"][-1] == 4999 and len(set(res["y_true"])) == 2000


def test_to_dict_is_json_able_with_nan() -> None:
    y_t, p_t = random_probs(20, 3, seed=1)
    ev = classification_metrics(torch.zeros_like(y_t), p_t)
    back = json.loads(json.dumps(ev.to_dict()))
    assert math.isnan(back["metrics"]["roc_auc"])
    assert back["metrics"]["accuracy"] == ev.metrics["accuracy"]
    assert back["confusion"] == ev.confusion and back["task"] == "classification"


@pytest.fixture(scope="module")
def trained_iris() -> tuple[nn.Module, object]:
    data = prepare(load_source("iris"), val=0.0, test=0.3, seed=0)
    model = build({"arch": "mlp", "hidden": [16], "dropout": 0.2},
                  input_shape=data.input_shape, num_outputs=data.num_outputs)
    fit(model, data.train, epochs=15, batch_size=16, optim={"name": "adam", "lr": 0.01}, device="cpu")
    return model, data


def test_evaluate_equals_metrics_of_own_softmax(trained_iris) -> None:
    model, data = trained_iris
    x, y = data.test.tensors
    model.train()
    ev = evaluate(model, data.test, class_names=data.class_names, batch_size=7)  # several batches
    assert model.training  # the caller's mode comes back
    model.eval()
    with torch.no_grad():
        ref = classification_metrics(y, model(x).softmax(dim=1), data.class_names)
    assert ev.metrics.keys() == ref.metrics.keys()
    for key, value in ref.metrics.items():
        assert ev.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert ev.confusion == ref.confusion and ev.per_class == ref.per_class
    assert ev.metrics["accuracy"] > 0.8  # it learned something, so the comparison is not vacuous


def test_evaluate_on_an_artifact(trained_iris, tmp_path) -> None:
    model, data = trained_iris
    folder = save_artifact(model, tmp_path / "model", task=data.task, class_names=data.class_names,
                           preprocessing=data.preprocessing)
    art = load_artifact(folder)
    x, y = data.test.tensors
    ev = evaluate(art, (x, y))
    assert ev.task == "classification" and ev.class_names == data.class_names
    ref = evaluate(model, data.test, class_names=data.class_names)
    assert ev.metrics == pytest.approx(ref.metrics, rel=1e-6)
    assert [c["class"] for c in ev.per_class] == data.class_names
    # The artifact's own predict gives the same probabilities evaluate scored.
    probs = art.predict(x)["probabilities"]
    assert ev.metrics == pytest.approx(classification_metrics(y, probs, data.class_names).metrics, rel=1e-6)


def test_evaluate_regression_model() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x, y = torch.randn(50, 4), torch.randn(50, 1)
    ev = evaluate(model, (x, y))  # float targets: regression
    assert ev.task == "regression"
    with torch.no_grad():
        ref = regression_metrics(y, model(x))
    assert ev.metrics == pytest.approx(ref.metrics)


def test_evaluate_rejects_what_it_cannot_score() -> None:
    with pytest.raises(DataError, match="TensorDataset"):
        evaluate(nn.Linear(2, 2), [torch.zeros(3, 2)])
    with pytest.raises(DataError, match="Module or an Artifact"):
        evaluate("model.pt", (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)))


def test_docstring_examples_run() -> None:
    import dlforge.evaluate.metrics as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_evaluate_scores_standardised_outputs_in_the_targets_units() -> None:
    from sklearn.metrics import mean_squared_error, r2_score
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(40, 3)
    stats = {"mean": [1000.0, -5.0], "std": [250.0, 0.5]}
    y = torch.randn(40, 2).double() * torch.tensor([250.0, 0.5]) + torch.tensor([1000.0, -5.0])
    with torch.no_grad():
        pred = (model(x).double() * torch.tensor(stats["std"]) + torch.tensor(stats["mean"])).numpy()
    ev = evaluate(model, (x, y), target_standardize=stats)
    assert ev.metrics["r2"] == pytest.approx(r2_score(y.numpy(), pred), rel=1e-9)
    assert ev.metrics["mse"] == pytest.approx(mean_squared_error(y.numpy(), pred), rel=1e-9)
    # an artifact supplies the statistics itself (what `dlforge evaluate --data` relies on)
    art = SimpleNamespace(model=model, task="regression", class_names=None,
                          preprocessing={"target_standardize": stats})
    assert evaluate(art, (x, y)).metrics == ev.metrics
