"""Cross-validation: folds, class ratios, mean/std against numpy, one fold against a
by-hand reproduction, determinism and the error cases. Tiny models, few epochs."""

from __future__ import annotations

import doctest
import io
import math

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from dlforge.config import RunConfig, validate_config
from dlforge.data import DataBundle, Standardizer, load_source
from dlforge.errors import ConfigError, DataError
from dlforge.evaluate import CVResult, classification_metrics, evaluate, fold_indices
from dlforge.models import build
from dlforge.pipeline.crossval import cross_validate
from dlforge.train import fit, seed_everything


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_config(source: str = "iris", seed: int = 0, val: float = 0.0, **sections) -> RunConfig:
    raw = {
        "name": "cv", "seed": seed,
        "data": {"source": source, "split": {"val": val}},
        "model": {"arch": "mlp", "hidden": [8]},
        "optim": {"name": "adam", "lr": 0.02},
        "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
    }
    for key, value in sections.items():
        raw[key].update(value)
    return validate_config(raw)


@pytest.fixture(scope="module")
def iris_cv() -> CVResult:
    return cross_validate(make_config(), k=5)


def test_folds_cover_the_data_once(iris_cv: CVResult) -> None:
    assert iris_cv.k == 5 and len(iris_cv.folds) == 5 and iris_cv.stratified
    assert sum(fold["n"] for fold in iris_cv.folds) == 150
    assert all(fold["n"] == 30 for fold in iris_cv.folds)
    held_out = np.concatenate([h for _, h in fold_indices(load_source("iris"), 5, seed=0)])
    assert np.array_equal(np.sort(held_out), np.arange(150))
    assert set(iris_cv.folds[0]) == set(iris_cv.mean) == set(iris_cv.std)
    assert "roc_auc" in iris_cv.folds[0] and "accuracy" in iris_cv.folds[0]


def test_mean_and_std_are_numpy_over_folds(iris_cv: CVResult) -> None:
    for key in iris_cv.mean:
        values = np.array([fold[key] for fold in iris_cv.folds])
        assert iris_cv.mean[key] == pytest.approx(np.mean(values), rel=1e-12, nan_ok=True), key
        assert iris_cv.std[key] == pytest.approx(np.std(values, ddof=0), rel=1e-12, abs=1e-15, nan_ok=True), key
    assert iris_cv.mean["accuracy"] > 0.6  # three epochs already beat chance (1/3) on iris


def test_stratified_ratios_within_one_sample_plain_kfold_off(iris_cv: CVResult) -> None:
    """Iris is sorted by label, the case where fold composition matters."""
    bundle = load_source("iris")
    assert np.all(np.diff(bundle.y) >= 0)
    strat = iris_cv
    plain = cross_validate(make_config(), k=5, stratified=False)
    assert not plain.stratified
    overall = np.array(strat.overall_ratio)
    np.testing.assert_allclose(overall, np.bincount(bundle.y) / len(bundle))

    def worst_deviation(result: CVResult) -> float:
        """Largest |class count - expected count| over folds and classes, in samples."""
        return max(float(np.abs((np.array(r) - overall) * f["n"]).max())
                   for r, f in zip(result.class_ratios, result.folds))

    assert worst_deviation(strat) <= 1
    assert worst_deviation(plain) >= 2  # visibly off: at least two samples in some fold
    # The ratios are those of the held-out samples of each fold.
    for ratios, (_, held) in zip(plain.class_ratios, fold_indices(bundle, 5, stratified=False, seed=0)):
        np.testing.assert_allclose(ratios, np.bincount(bundle.y[held], minlength=3) / len(held))


def test_imbalanced_stratified_ratios() -> None:
    """breast_cancer (212 vs 357) keeps its ratio in every fold, to one sample."""
    bundle = load_source("breast_cancer")
    overall = np.bincount(bundle.y) / len(bundle)
    for _, held in fold_indices(bundle, 5, seed=3):
        counts = np.bincount(bundle.y[held], minlength=2)
        assert np.abs(counts - overall * len(held)).max() <= 1
    assert all(len(held) in (113, 114) for _, held in fold_indices(bundle, 5, seed=3))


def test_fold_indices_are_sklearn_stratified_kfold() -> None:
    bundle = load_source("wine")
    ours = fold_indices(bundle, 4, seed=7)
    ref = StratifiedKFold(n_splits=4, shuffle=True, random_state=7).split(bundle.x, bundle.y)
    for (train, held), (ref_train, ref_held) in zip(ours, ref):
        assert np.array_equal(train, ref_train) and np.array_equal(held, ref_held)


def test_a_fold_equals_training_it_by_hand() -> None:
    """Fold 2 of cross_validate = standardise on its training part, seeded build, fit, score."""
    cfg = make_config("xor", data={"n_samples": 120})
    result = cross_validate(cfg, k=3)
    bundle = load_source("xor", n_samples=120, seed=0)
    train_idx, held_idx = fold_indices(bundle, 3, seed=0)[2]
    scaler = Standardizer.fit(bundle.x[train_idx])
    train = bundle.subset(train_idx)
    train.x = scaler.transform(train.x)
    held = bundle.subset(held_idx)
    held.x = scaler.transform(held.x)
    seed_everything(0)
    model = build(cfg.model, input_shape=bundle.input_shape, num_outputs=bundle.num_outputs)
    fit(model, train.to_tensor_dataset(), epochs=3, batch_size=32, optim=cfg.optim, seed=0, device="cpu")
    x, y = held.to_tensor_dataset().tensors
    model.eval()
    with torch.no_grad():
        ref = classification_metrics(y, model(x).softmax(dim=1), bundle.class_names)
    assert result.folds[2] == pytest.approx(ref.metrics, nan_ok=True)


def test_deterministic_by_seed() -> None:
    a = cross_validate(make_config("xor", seed=1, data={"n_samples": 90}), k=3)
    b = cross_validate(make_config("xor", seed=1, data={"n_samples": 90}), k=3)
    c = cross_validate(make_config("xor", seed=2, data={"n_samples": 90}), k=3)
    assert a.to_dict() == b.to_dict()
    assert a.folds != c.folds


def test_validation_part_with_early_stopping_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_config(val=0.2, train={"epochs": 30, "early_stopping": {"patience": 1}})
    stream = io.StringIO()
    result = cross_validate(cfg, k=3, progress=stream)
    assert sum(f["n"] for f in result.folds) == 150
    assert list(tmp_path.iterdir()) == []  # no run directory, no checkpoints
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("fold 1/3: accuracy")


def test_regression_is_never_stratified() -> None:
    result = cross_validate(make_config("diabetes", train={"epochs": 2}), k=3, stratified=True)
    assert not result.stratified
    assert set(result.folds[0]) == {"mse", "rmse", "mae", "r2", "n"}
    assert sum(f["n"] for f in result.folds) == 442
    assert result.class_ratios == [] and result.overall_ratio == []
    assert all(math.isfinite(f["mse"]) for f in result.folds)


def test_to_dict_round_trips_the_fields(iris_cv: CVResult) -> None:
    d = iris_cv.to_dict()
    assert d["k"] == 5 and d["folds"] == iris_cv.folds and d["class_ratios"] == iris_cv.class_ratios


def small_bundle(counts: list[int]) -> DataBundle:
    y = np.repeat(np.arange(len(counts)), counts)
    x = np.random.default_rng(0).normal(size=(len(y), 2)).astype(np.float32)
    return DataBundle("tiny", x, y, "classification", "tabular", ["common", "rare"], ["a", "b"], {})


@pytest.mark.parametrize("k", [1, 0, -3])
def test_k_below_two_is_a_config_error(k: int) -> None:
    with pytest.raises(ConfigError, match="k >= 2"):
        cross_validate(make_config(), k=k)


def test_more_folds_than_the_rarest_class_has_members() -> None:
    bundle = small_bundle([20, 3])
    with pytest.raises(DataError, match="class 'rare' has only 3 samples"):
        fold_indices(bundle, 4)
    assert len(fold_indices(bundle, 4, stratified=False)) == 4  # plain k-fold does not need it
    with pytest.raises(DataError, match="stratif"):
        cross_validate(make_config(), k=51)  # iris: 50 samples per class


def test_more_folds_than_samples() -> None:
    with pytest.raises(DataError, match="cannot make 24 folds of 23 samples"):
        fold_indices(small_bundle([20, 3]), 24, stratified=False)


def test_early_stopping_on_val_without_a_val_part() -> None:
    cfg = make_config(val=0.0, train={"early_stopping": {"monitor": "val_loss"}})
    with pytest.raises(ConfigError, match="data.split.val"):
        cross_validate(cfg, k=3)


def test_evaluate_is_what_scores_a_fold() -> None:
    """The held-out metrics are exactly evaluate()'s keys (the Evaluation.metrics keys)."""
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    keys = set(evaluate(torch.nn.Linear(4, 3), (x, y)).metrics)
    cfg = make_config(train={"epochs": 1})
    assert set(cross_validate(cfg, k=2).folds[0]) == keys


def test_docstring_examples_run() -> None:
    import dlforge.pipeline.crossval as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_regression_trains_on_a_standardised_target_and_scores_in_its_units() -> None:
    # diabetes' target runs 25..346: unscaled, 10 epochs of Adam 1e-3 stay far below the mean
    on = cross_validate(make_config("diabetes", train={"epochs": 10}), k=3)
    off = cross_validate(make_config("diabetes", data={"standardize_target": False}, train={"epochs": 10}), k=3)
    assert on.mean["r2"] > 0.3 and off.mean["r2"] < 0
    for fold in on.folds:
        assert 40 < fold["rmse"] < 80  # the target's units (its std is 77), not standard deviations
        assert fold["rmse"] == pytest.approx(fold["mse"] ** 0.5)


def test_the_data_section_means_what_it_means_for_train(tmp_path) -> None:
    """cv reads a table with the same data keys train does (here id_column; cv once ignored
    drop, keep, id_column, missing and unknown_category and refused this table)."""
    rng = np.random.default_rng(0)
    rows = ["customer_id,a,b,label"] + [f"C{i:04d},{rng.normal():.3f},{rng.normal():.3f},{'yes' if i % 3 else 'no'}"
                                        for i in range(60)]
    (tmp_path / "ids.csv").write_text("\n".join(rows) + "\n")
    cfg = make_config(str(tmp_path / "ids.csv"), data={"target": "label", "id_column": "customer_id"},
                      train={"epochs": 1})
    result = cross_validate(cfg, k=2)
    assert [f["n"] for f in result.folds] == [30, 30]


@pytest.mark.parametrize("source, why", [("sunspots", "train a forecaster on windows after"),
                                         ("stdlib_docs", "its own vocabulary")])
def test_series_and_text_are_refused_with_the_reason(source: str, why: str) -> None:
    raw = {"data": {"source": source}, "model": {"arch": "rnn"}}
    with pytest.raises(ConfigError, match=why):
        cross_validate(validate_config(raw), k=3)
