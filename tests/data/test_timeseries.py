"""Time-series forecasting data: windows, time-ordered splits, train-only scaling, baselines.

References: scikit-learn's StandardScaler for the scale, pandas' ``shift`` for the
seasonal naive forecast, pandas' monthly resampling for co2, scikit-learn's error
metrics for the evaluation. The last test is the issue's check: a small seeded LSTM
trained with ``fit`` beats the seasonal naive forecast on sunspots' test span.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error
from sklearn.preprocessing import StandardScaler
from torch import nn

from dlforge.data.timeseries import (
    SERIES,
    Series,
    forecast_evaluation,
    load_series,
    make_windows,
    prepare_series,
    seasonal_naive,
)
from dlforge.errors import DataError
from dlforge.models import build
from dlforge.train import fit


def toy(n: int = 40, period: int = 4) -> Series:
    rng = np.random.default_rng(0)
    values = 10 + 3 * np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0, 0.5, n)
    return Series("toy", values, period, [f"t{i}" for i in range(n)], "m", "a noisy sine")


class LastValue(nn.Module):
    """Forecasts every horizon step with the window's last value: the last-value baseline."""

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.horizon = horizon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1, :].repeat(1, self.horizon)  # (B, T, 1) -> (B, horizon)


# ----------------------------------------------------------------------------- windows

def test_make_windows_exact_values():
    x, y = make_windows(np.arange(10), window=3, horizon=2)
    assert x.shape == (6, 3, 1) and y.shape == (6, 2)
    assert x.dtype == np.float32 and y.dtype == np.float32
    for i in range(6):  # sample i: values[i : i+3] -> values[i+3 : i+5]
        assert x[i, :, 0].tolist() == [i, i + 1, i + 2]
        assert y[i].tolist() == [i + 3, i + 4]
    x, y = make_windows(np.arange(5.0), window=4)
    assert x[:, :, 0].tolist() == [[0, 1, 2, 3]] and y.tolist() == [[4]]


@pytest.mark.parametrize("window, horizon", [(5, 1), (4, 2), (0, 1), (2, 0)])
def test_make_windows_rejects_bad_sizes(window, horizon):
    with pytest.raises(DataError, match="window|horizon"):
        make_windows(np.arange(5.0), window=window, horizon=horizon)


# ----------------------------------------------------------------------------- splits and scaling

def test_prepare_series_splits_in_time_order_and_scales_with_train_span():
    series = toy(40)
    prepared, ctx = prepare_series(series, window=6, horizon=1, val=0.2, test=0.2)
    # 34 target positions 6..39: 20 train, 7 val, 7 test, consecutive
    starts = ctx.target_starts
    assert starts["train"].tolist() == list(range(6, 26))
    assert starts["val"].tolist() == list(range(26, 33))
    assert starts["test"].tolist() == list(range(33, 40))
    # the scale is exactly that of the values the train windows touch: values[:26]
    reference = StandardScaler().fit(series.values[:26, None])
    torch.testing.assert_close(ctx.mean, float(reference.mean_[0]))
    torch.testing.assert_close(ctx.std, float(reference.scale_[0]))
    raw_x, raw_y = make_windows(series.values, 6, 1)
    for split, first in (("train", 0), ("val", 20), ("test", 27)):
        x, y = getattr(prepared, split).tensors
        n = len(starts[split])
        torch.testing.assert_close(x, torch.from_numpy((raw_x[first:first + n] - ctx.mean) / ctx.std).float())
        torch.testing.assert_close(y, torch.from_numpy((raw_y[first:first + n] - ctx.mean) / ctx.std).float())
    assert prepared.preprocessing == {
        "encoding": {"kind": "sequence", "length": 6, "features": 1},
        "standardize": None,
        "target_scale": {"mean": ctx.mean, "std": ctx.std},
        "forecast": {"series": "toy", "window": 6, "horizon": 1, "period": 4},
    }
    assert (prepared.name, prepared.task, prepared.kind) == ("toy", "regression", "sequence")
    assert prepared.class_names is None and prepared.feature_names == ["toy"]
    assert prepared.input_shape == (6, 1) and prepared.num_outputs == 1
    torch.testing.assert_close(ctx.unscale(ctx.scale(series.values)), series.values, rtol=1e-6, atol=1e-5)


def test_later_values_never_move_the_scale_or_the_train_set():
    series = toy(60)
    prepared, ctx = prepare_series(series, window=8, horizon=3)
    changed = series.values.copy()
    first_val_target = int(ctx.target_starts["val"][0])
    changed[first_val_target:] += 1000.0  # every val and test value
    prepared2, ctx2 = prepare_series(Series("toy", changed, 4, series.index, "m", ""), window=8, horizon=3)
    assert (ctx2.mean, ctx2.std) == (ctx.mean, ctx.std)
    for a, b in zip(prepared.train.tensors, prepared2.train.tensors):
        assert torch.equal(a, b)
    assert not torch.equal(prepared.test.tensors[1], prepared2.test.tensors[1])


@pytest.mark.parametrize("horizon", [1, 3])
def test_every_train_target_precedes_val_precedes_test(horizon):
    series = load_series("sunspots")
    prepared, ctx = prepare_series(series, window=11, horizon=horizon)
    spans = {s: (ctx.target_starts[s].min(), ctx.target_starts[s].max() + horizon - 1)
             for s in ("train", "val", "test")}
    assert spans["train"][1] < spans["val"][0] and spans["val"][1] < spans["test"][0]
    assert all(np.all(np.diff(ctx.target_starts[s]) == 1) for s in spans)  # dataset order is time order
    # targets of one split are never targets of another (horizon > 1 drops straddling windows)
    covered = [set(range(t, t + horizon)) for t in ctx.target_starts["train"]]
    later = set(range(ctx.target_starts["val"][0], len(series)))
    assert not set().union(*covered) & later
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == len(series) - 11 - 3 * (horizon - 1)


def test_zero_fraction_leaves_the_split_out():
    prepared, ctx = prepare_series(toy(30), window=4, val=0.0, test=0.2)
    assert prepared.val is None and "val" not in ctx.target_starts
    assert len(prepared.train) + len(prepared.test) == 26


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 40}, "longer than the series"),
    ({"window": 35, "horizon": 6}, "longer than the series"),
    ({"window": 30, "val": 0.05}, "val split .* too few"),
    ({"window": 4, "horizon": 5, "test": 0.1}, "test split .* too few"),
    ({"window": 4, "val": 0.6, "test": 0.5}, "val \\+ test"),
    ({"window": 4, "test": -0.1}, "fraction"),
    ({"window": 2.5}, "integer"),
])
def test_prepare_series_errors(kwargs, match):
    with pytest.raises(DataError, match=match) as info:
        prepare_series(toy(40), **kwargs)
    assert info.value.hint


# ----------------------------------------------------------------------------- baselines

def test_seasonal_naive_hand_example():
    values = np.array([1.0, 2.0, 3.0, 11.0, 12.0, 13.0, 21.0, 22.0])
    # period 3, targets from t=3: one step -> value 3 back
    assert seasonal_naive(values, 3, np.array([3, 4, 7])).tolist() == [[1.0], [2.0], [12.0]]
    # horizon 4 > period 3: the 4th step reuses the last observed season, 6 back
    assert seasonal_naive(values, 3, np.array([3]), horizon=4).tolist() == [[1.0, 2.0, 3.0, 1.0]]
    series = load_series("sunspots")
    starts = np.arange(11, len(series))
    shifted = pd.Series(series.values).shift(11).to_numpy()  # pandas' one-season lag
    np.testing.assert_array_equal(seasonal_naive(series.values, 11, starts)[:, 0], shifted[starts])


def test_seasonal_naive_needs_one_season_before_the_target():
    with pytest.raises(DataError, match="target starts") as info:
        seasonal_naive(np.arange(10.0), 4, np.array([3, 5]))
    assert "season" in info.value.hint


def test_forecast_evaluation_of_the_last_value_model_equals_the_last_value_baseline():
    series = load_series("co2")
    prepared, ctx = prepare_series(series, window=24, horizon=3)
    ev = forecast_evaluation(LastValue(horizon=3), prepared, ctx, series)
    starts = ctx.target_starts["test"]
    actual = np.stack([series.values[starts + k] for k in range(3)], axis=1)  # (N, 3)
    last = np.repeat(series.values[starts - 1, None], 3, axis=1)
    naive = seasonal_naive(series.values, 12, starts, 3)
    torch.testing.assert_close(ev["mae"], mean_absolute_error(actual, last), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ev["mae"], ev["last_value_mae"], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ev["rmse"], mean_squared_error(actual, last) ** 0.5, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ev["seasonal_naive_mae"], mean_absolute_error(actual, naive))
    torch.testing.assert_close(ev["seasonal_naive_rmse"], mean_squared_error(actual, naive) ** 0.5)
    torch.testing.assert_close(ev["mae_ratio_vs_seasonal_naive"], ev["mae"] / ev["seasonal_naive_mae"])
    assert ev["index"] == [series.index[t] for t in starts] and ev["index"][-1] == "2001-10"  # 3 steps: to 2001-12
    assert ev["actual"] == actual[:, 0].tolist() and ev["seasonal_naive"] == naive[:, 0].tolist()
    assert (ev["split"], ev["window"], ev["horizon"], ev["period"], ev["unit"]) == ("test", 24, 3, 12, "ppm")
    assert json.loads(json.dumps(ev)) == ev


def test_forecast_evaluation_errors():
    series = toy(40)
    prepared, ctx = prepare_series(series, window=4, val=0.0)
    with pytest.raises(DataError, match="val split is empty"):
        forecast_evaluation(LastValue(1), prepared, ctx, series, split="val")
    with pytest.raises(DataError, match="unknown"):
        forecast_evaluation(LastValue(1), prepared, ctx, series, split="holdout")
    with pytest.raises(DataError, match="not this 'sunspots'"):
        forecast_evaluation(LastValue(1), prepared, ctx, load_series("sunspots"))
    with pytest.raises(DataError, match="num_outputs = horizon"):
        forecast_evaluation(LastValue(2), prepared, ctx, series)


# ----------------------------------------------------------------------------- the real series

def test_load_sunspots():
    from statsmodels.datasets import sunspots

    series = load_series("sunspots")
    assert len(series) == 309 and series.period == 11
    assert series.index[0] == "1700" and series.index[-1] == "2008"
    assert series.values.dtype == np.float64
    np.testing.assert_array_equal(series.values, sunspots.load_pandas().data["SUNACTIVITY"].to_numpy())


def test_load_co2_monthly_without_gaps():
    from statsmodels.datasets import co2

    series = load_series("co2")
    weekly = co2.load_pandas().data["co2"]
    assert not np.isnan(series.values).any() and series.period == 12
    months = pd.period_range("1958-03", "2001-12", freq="M").strftime("%Y-%m").tolist()
    assert series.index == months  # every month once, in order
    by_month = weekly.groupby(weekly.index.strftime("%Y-%m")).mean()  # NaN where a month has no reading
    observed = by_month.dropna()
    assert len(observed) < len(months)  # the raw data has empty months, filled here
    np.testing.assert_allclose(series.values[[months.index(m) for m in observed.index]], observed.to_numpy())
    empty = [i for i, m in enumerate(months) if np.isnan(by_month.get(m, np.nan))]
    for i in empty:  # filled between its neighbours
        lo, hi = sorted((series.values[i - 1], series.values[i + 1]))
        assert lo <= series.values[i] <= hi


def test_unknown_series_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown series 'nile'") as info:
        load_series("nile")
    assert all(name in info.value.hint for name in SERIES)


# ----------------------------------------------------------------------------- the check

def test_lstm_beats_the_seasonal_naive_forecast_on_sunspots():
    series = load_series("sunspots")
    prepared, ctx = prepare_series(series, window=11)  # one solar cycle of history
    torch.manual_seed(0)
    model = build({"arch": "rnn", "kind": "lstm", "hidden_size": 16},
                  input_shape=prepared.input_shape, num_outputs=prepared.num_outputs)
    start = time.perf_counter()
    fit(model, prepared.train, prepared.val, epochs=30, batch_size=64, optim={"name": "adam", "lr": 0.02}, seed=0)
    ev = forecast_evaluation(model, prepared, ctx, series)
    print(f"\nsunspots test ({len(prepared.test)} years, {ev['index'][0]}-{ev['index'][-1]}): "
          f"LSTM MAE {ev['mae']:.2f}, seasonal naive MAE {ev['seasonal_naive_mae']:.2f}, "
          f"last value MAE {ev['last_value_mae']:.2f} ({time.perf_counter() - start:.1f} s)")
    predicted = np.asarray(ev["predicted"])
    torch.testing.assert_close(ev["mae"], mean_absolute_error(ev["actual"], predicted))
    assert ev["mae"] < ev["seasonal_naive_mae"]
    assert ev["mae"] < ev["last_value_mae"]  # and the stronger baseline on this series, too
