"""Univariate time-series forecasting: real series, sliding windows, time-ordered splits.

:func:`load_series` reads one of statsmodels' bundled series (no download);
:func:`make_windows` cuts it into (past ``window`` values -> next ``horizon`` values)
samples; :func:`prepare_series` splits the windows in time order and scales them with
train-span statistics, giving the same :class:`~dlforge.data.Prepared` every other
source gives, so ``models.build`` and ``train.fit`` take it unchanged.
:func:`forecast_evaluation` scores a trained model in the series' own units against
two baselines any forecaster must beat: the seasonal naive forecast (the value one
period back) and the last observed value.

Splitting by target position, never at random, is the point: a shuffled split would let
a model train on the year after a test year, and its test error would say nothing about
forecasting. Scaling statistics come from the train span only, for the same reason.

Example:
    >>> series = load_series("sunspots")
    >>> prepared, context = prepare_series(series, window=22)
    >>> prepared.input_shape, prepared.num_outputs, len(prepared.test)
    ((22, 1), 1, 43)
    >>> int(context.target_starts["test"][0]) > int(context.target_starts["val"][-1])
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.data.preprocess import MIN_STD, Prepared
from dlforge.errors import DataError

SERIES = ("sunspots", "co2")
SPLITS = ("train", "val", "test")


@dataclass(repr=False)
class Series:
    """One univariate series in time order, with what a report needs to label it.

    ``values`` is float64 ``(N,)``; ``index[i]`` labels ``values[i]`` ("1700", "1958-03");
    ``period`` is the season length in steps (11 years, 12 months).

    Example:
        >>> s = Series("toy", np.arange(4.0), period=2, index=["a", "b", "c", "d"], unit="m",
        ...            description="a toy")
        >>> len(s), s
        (4, Series(name='toy', n=4, period=2, unit='m'))
    """

    name: str
    values: np.ndarray
    period: int
    index: list[str]
    unit: str
    description: str

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if len(self.index) != len(self.values):
            raise DataError(f"series {self.name!r} has {len(self.values)} values but "
                            f"{len(self.index)} index labels", hint="give one label per value")
        if not np.isfinite(self.values).all():
            raise DataError(f"series {self.name!r} holds NaN or infinite values",
                            hint="interpolate or drop the gaps before windowing")

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return (f"Series(name={self.name!r}, n={len(self)}, period={self.period}, "
                f"unit={self.unit!r})")


def load_series(name: str) -> Series:
    """Load a bundled series: ``"sunspots"`` (yearly) or ``"co2"`` (monthly).

    sunspots: yearly mean sunspot number, 1700-2008 (309 values), period 11 (the solar
    cycle). co2: Mauna Loa weekly CO2 (1958-2001) averaged to calendar months; the few
    months with no weekly reading are filled by linear interpolation; period 12.

    Example:
        >>> co2 = load_series("co2")
        >>> co2.index[:2], co2.period, co2.unit
        (['1958-03', '1958-04'], 12, 'ppm')
    """
    if name == "sunspots":
        from statsmodels.datasets import sunspots  # imported here: statsmodels is slow to import

        frame = sunspots.load_pandas().data
        return Series(
            name="sunspots", values=frame["SUNACTIVITY"].to_numpy(np.float64), period=11,
            index=[str(int(year)) for year in frame["YEAR"]], unit="sunspot number",
            description="Yearly mean sunspot number (Wolf number), 1700-2008.",
        )
    if name == "co2":
        from statsmodels.datasets import co2

        weekly = co2.load_pandas().data["co2"]
        # Month starts ("MS"); a month without any weekly reading is NaN until interpolated.
        monthly = weekly.resample("MS").mean().interpolate("linear", limit_direction="both")
        return Series(
            name="co2", values=monthly.to_numpy(np.float64), period=12,
            index=[stamp.strftime("%Y-%m") for stamp in monthly.index], unit="ppm",
            description="Mauna Loa atmospheric CO2, monthly means of weekly readings "
            "(gaps interpolated), 1958-2001.",
        )
    raise DataError(f"unknown series {name!r}", hint=f"use one of: {', '.join(SERIES)}")


def _check_int(value: object, name: str, minimum: int, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer of at least {minimum}, got {value!r}",
                        hint=f"pass e.g. {name}={example}")
    return int(value)


def make_windows(values: np.ndarray, window: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every (input, target) pair a series holds: ``x[i] = values[i : i+window]`` and
    ``y[i] = values[i+window : i+window+horizon]``.

    Returns x float32 ``(N, window, 1)`` and y float32 ``(N, horizon)``, with
    ``N = len(values) - window - horizon + 1``.

    Example:
        >>> x, y = make_windows(np.arange(6.0), window=3, horizon=2)
        >>> x[:, :, 0].tolist(), y.tolist()
        ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [[3.0, 4.0], [4.0, 5.0]])
    """
    window = _check_int(window, "window", 1, 12)
    horizon = _check_int(horizon, "horizon", 1, 1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(values) - window - horizon + 1
    if n < 1:
        raise DataError(f"window {window} + horizon {horizon} is longer than the series "
                        f"({len(values)} values)", hint="shorten the window or the horizon")
    span = np.lib.stride_tricks.sliding_window_view(values, window + horizon)[:n]  # (N, window+horizon)
    x = span[:, :window, None].astype(np.float32)  # (N, window, 1)
    y = span[:, window:].astype(np.float32)  # (N, horizon)
    return x, y


@dataclass
class ForecastContext:
    """How a :class:`Prepared` forecast set was cut from its series, to score it later.

    ``target_starts[split]`` holds, per window of that split (in dataset order), the series
    position of its first target value; a split left out (fraction 0) has none. ``mean``
    and ``std`` scale inputs and targets alike: ``scaled = (value - mean) / std``.

    Example:
        >>> ctx = ForecastContext("toy", window=3, horizon=1, period=2, mean=10.0, std=2.0,
        ...                       target_starts={"train": np.array([3, 4])})
        >>> ctx.unscale(np.array([0.0, 1.0])).tolist()
        [10.0, 12.0]
    """

    series: str
    window: int
    horizon: int
    period: int
    mean: float
    std: float
    target_starts: dict[str, np.ndarray]

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Series units -> the units the model sees (float32)."""
        return ((np.asarray(values, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def unscale(self, scaled: np.ndarray) -> np.ndarray:
        """Model units -> series units (float64)."""
        return np.asarray(scaled, dtype=np.float64) * self.std + self.mean


def _split_lengths(n_targets: int, val: float, test: float) -> tuple[int, int, int]:
    """Target positions per split, the first ``train`` of them going to train."""
    for name, fraction in (("val", val), ("test", test)):
        if not 0.0 <= fraction < 1.0:
            raise DataError(f"{name} must be a fraction in [0, 1), got {fraction!r}", hint=f"pass e.g. {name}=0.15")
    if val + test >= 1.0:
        raise DataError(f"val + test is {val + test:g}, leaving nothing to train on",
                        hint="keep val + test below 1, e.g. 0.15 each")
    n_val, n_test = round(val * n_targets), round(test * n_targets)
    return n_targets - n_val - n_test, n_val, n_test


def prepare_series(
    series: Series, *, window: int, horizon: int = 1, val: float = 0.15, test: float = 0.15,
) -> tuple[Prepared, ForecastContext]:
    """Window ``series``, split the windows in time order and scale them with train statistics.

    The positions that can be a target (``window`` .. end) are cut into three consecutive
    spans, train then val then test, of sizes ``1 - val - test``, ``val`` and ``test``. A
    window belongs to a split when all ``horizon`` of its targets fall in that split's span;
    with ``horizon > 1`` the few windows whose targets straddle a boundary are dropped, so
    no value that is a target of a later split is ever a target of an earlier one. Inputs
    may reach back into earlier spans: that is the past a forecaster is allowed to see.

    Scaling: ``mean`` and ``std`` (population std, ddof=0) are those of exactly the values
    that appear in the train windows' inputs and targets, i.e. ``values[: train_end]`` where
    ``train_end`` is the end of the train target span. Nothing later moves them. Inputs and
    targets are both scaled with them (one series, one scale).

    Example:
        >>> toy = Series("toy", np.arange(20.0), 2, [str(i) for i in range(20)], "m", "")
        >>> prepared, ctx = prepare_series(toy, window=4, val=0.25, test=0.25)
        >>> [ctx.target_starts[s].tolist() for s in ("train", "val", "test")]
        [[4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
        >>> ctx.mean, prepared.preprocessing["target_scale"]["mean"]  # mean of values[:12]
        (5.5, 5.5)
    """
    window = _check_int(window, "window", 1, 2 * series.period)
    horizon = _check_int(horizon, "horizon", 1, 1)
    values = series.values
    make_windows(values, window, horizon)  # fails early, naming both, when the series is too short
    n_train, n_val, n_test = _split_lengths(len(values) - window, val, test)
    bounds = np.cumsum([window, n_train, n_val, n_test])  # span edges in series positions
    starts = np.arange(len(values) - window - horizon + 1) + window  # (N,) first target of each window
    ends = starts + horizon  # one past the last target position

    keeps: dict[str, np.ndarray] = {}
    for i, (name, fraction) in enumerate(zip(SPLITS, (None, val, test))):
        if fraction == 0:
            continue
        keep = (starts >= bounds[i]) & (ends <= bounds[i + 1])  # (N,)
        if not keep.any():
            span = max(int(bounds[i + 1] - bounds[i]), 0)
            raise DataError(
                f"the {name} split of {series.name!r} holds {span} target positions, too few for "
                f"one window of horizon {horizon} ({len(values)} values, window {window})",
                hint=f"shorten the window or horizon, or give {name} a larger share",
            )
        keeps[name] = keep

    train_end = int(bounds[1])  # the train windows' inputs and targets are exactly values[:train_end]
    mean = float(values[:train_end].mean())
    std = float(values[:train_end].std())
    std = std if std >= MIN_STD else 1.0  # a flat train span: centre only
    x_all, y_all = make_windows((values - mean) / std, window, horizon)  # scaled in float64, then cast
    datasets = {name: TensorDataset(torch.from_numpy(x_all[keep]), torch.from_numpy(y_all[keep]))
                for name, keep in keeps.items()}
    target_starts = {name: starts[keep] for name, keep in keeps.items()}

    context = ForecastContext(series=series.name, window=window, horizon=horizon, period=series.period,
                              mean=mean, std=std, target_starts=target_starts)
    prepared = Prepared(
        name=series.name, task="regression", kind="sequence",
        train=datasets["train"], val=datasets.get("val"), test=datasets.get("test"),
        class_names=None, feature_names=[series.name], input_shape=(window, 1), num_outputs=horizon,
        preprocessing={
            "encoding": {"kind": "sequence", "length": window, "features": 1},
            # Standardizer takes (N, F) or images, not (N, T, 1) windows: inputs and targets
            # share target_scale instead.
            "standardize": None,
            "target_scale": {"mean": mean, "std": std},
            "forecast": {"series": series.name, "window": window, "horizon": horizon, "period": series.period},
        },
    )
    return prepared, context


def seasonal_naive(values: np.ndarray, period: int, targets_start: np.ndarray, horizon: int = 1) -> np.ndarray:
    """The seasonal naive forecast ``(N, horizon)`` for windows whose targets start at
    ``targets_start``: value ``t + k`` is forecast by the same season's value in the last
    season observed before ``t``, i.e. ``values[t + k - period * (k // period + 1)]``
    (one period back for ``k < period``).

    Example:
        >>> v = np.array([1.0, 2.0, 3.0, 11.0, 12.0, 13.0, 21.0])
        >>> seasonal_naive(v, period=3, targets_start=np.array([3, 5]), horizon=2).tolist()
        [[1.0, 2.0], [3.0, 11.0]]
    """
    period = _check_int(period, "period", 1, 12)
    horizon = _check_int(horizon, "horizon", 1, 1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    starts = np.asarray(targets_start, dtype=np.int64).reshape(-1)  # (N,)
    if starts.size and (starts.min() < period or starts.max() + horizon > len(values)):
        raise DataError(
            f"target starts must lie in [{period}, {len(values) - horizon}] for period {period} and "
            f"horizon {horizon}, got {starts.min()}..{starts.max()}",
            hint="a seasonal naive forecast needs one full season before the first target",
        )
    k = np.arange(horizon)  # (horizon,)
    lags = period * (k // period + 1)  # (horizon,) how far back the same season was last seen
    return values[starts[:, None] + k[None, :] - lags[None, :]]  # (N, horizon)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    weight = next(iter(model.parameters()), None)  # a parameter-free baseline runs on the CPU
    device = weight.device if weight is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()  # (N, horizon)


def forecast_evaluation(
    model: nn.Module, prepared: Prepared, context: ForecastContext, series: Series, split: str = "test",
) -> dict:
    """Score ``model`` on a split in the series' units, beside the two naive baselines.

    Errors average over every window and every horizon step. ``mae_ratio_vs_seasonal_naive``
    below 1 means the model beats the seasonal naive forecast. ``index``, ``actual``,
    ``predicted`` and ``seasonal_naive`` hold one value per window, the first step ahead,
    for plotting. The dict is JSON-able: the run directory's ``forecast.json``.

    Example:
        >>> ev = forecast_evaluation(model, prepared, context, series)  # doctest: +SKIP
        >>> ev["mae"] < ev["seasonal_naive_mae"]  # doctest: +SKIP
        True
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown", hint=f"use one of: {', '.join(SPLITS)}")
    data = getattr(prepared, split)
    if data is None or split not in context.target_starts:
        raise DataError(f"the {split} split is empty", hint=f"prepare the series with a non-zero {split} fraction")
    if series.name != context.series or len(data) != len(context.target_starts[split]):
        raise DataError(f"the context was made from {context.series!r}, not this {series.name!r} data",
                        hint="pass the series, Prepared and context that prepare_series returned together")
    starts = context.target_starts[split]  # (N,)
    steps = np.arange(context.horizon)
    actual = series.values[starts[:, None] + steps[None, :]]  # (N, horizon), exact, not via float32
    predicted = context.unscale(_predict(model, data.tensors[0]))  # (N, horizon)
    if predicted.shape != actual.shape:
        raise DataError(f"the model gives {predicted.shape[1:]} outputs per window, the forecast needs "
                        f"({context.horizon},)", hint="build the model with num_outputs = horizon")
    naive = seasonal_naive(series.values, context.period, starts, context.horizon)  # (N, horizon)
    last = np.repeat(series.values[starts - 1, None], context.horizon, axis=1)  # (N, horizon)

    def mae(forecast: np.ndarray) -> float:
        return float(np.abs(forecast - actual).mean())

    def rmse(forecast: np.ndarray) -> float:
        return float(np.sqrt(((forecast - actual) ** 2).mean()))

    naive_mae = mae(naive)
    return {
        "series": series.name, "unit": series.unit, "split": split,
        "window": context.window, "horizon": context.horizon, "period": context.period,
        "mae": mae(predicted), "rmse": rmse(predicted),
        "seasonal_naive_mae": naive_mae, "seasonal_naive_rmse": rmse(naive),
        "last_value_mae": mae(last),
        "mae_ratio_vs_seasonal_naive": mae(predicted) / naive_mae if naive_mae > 0 else None,
        "index": [series.index[t] for t in starts],
        "actual": actual[:, 0].tolist(), "predicted": predicted[:, 0].tolist(),
        "seasonal_naive": naive[:, 0].tolist(),
    }
