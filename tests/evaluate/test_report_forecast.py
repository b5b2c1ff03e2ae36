"""The report's Forecast section: present with ``forecast.json``, absent without it.

The forecast dict is real: :func:`forecast_evaluation` of a last-value model on co2's
test span (no training needed), written into a minimal run directory (config.yaml and
history.jsonl, as ``dlforge train`` leaves them).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from dlforge.data.timeseries import forecast_evaluation, load_series, prepare_series  # noqa: E402
from dlforge.evaluate import plots  # noqa: E402
from dlforge.evaluate.report import format_number, render_report, write_report  # noqa: E402
from tests.evaluate.test_report import decode_png, parse  # noqa: E402

CONFIG = {"name": "co2-forecast", "seed": 0, "data": {"source": "co2"}, "model": {"arch": "rnn", "kind": "lstm"}}
HISTORY = [{"type": "epoch", "epoch": 0, "train_loss": 0.9, "val_loss": 1.0},
           {"type": "epoch", "epoch": 1, "train_loss": 0.5, "val_loss": 0.6}]


class LastValue(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1, :]  # (B, T, 1) -> (B, 1)


@pytest.fixture(scope="module")
def forecast() -> dict:
    series = load_series("co2")
    prepared, context = prepare_series(series, window=24)
    return forecast_evaluation(LastValue(), prepared, context, series)


def make_run_dir(root: Path, forecast: dict | None) -> Path:
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY))
    if forecast is not None:
        (run_dir / "forecast.json").write_text(json.dumps(forecast))
    return run_dir


def test_forecast_section_shown_when_forecast_json_exists(tmp_path, forecast):
    page = parse(write_report(make_run_dir(tmp_path, forecast)).read_text(encoding="utf-8"))
    assert "forecast" in page.section_ids() and "Forecast" in page.texts("h2")
    assert "forecast" in page.texts("a")  # the table of contents links to it
    rows = page.table("forecast")
    f = {k: format_number(v) for k, v in forecast.items() if not isinstance(v, list)}
    assert rows == [
        ["forecast", "MAE", "RMSE"],
        ["model", f["mae"], f["rmse"]],
        ["seasonal naive (period 12)", f["seasonal_naive_mae"], f["seasonal_naive_rmse"]],
        ["last value", f["last_value_mae"], "n/a"],
    ]
    # the model is the last-value baseline itself, so those two rows must agree
    assert rows[1][1] == rows[3][1]
    ratio = forecast["mae_ratio_vs_seasonal_naive"]
    verdict = "beats" if ratio < 1 else "does not beat"
    assert page.texts("p", "ratio") == [
        f"Model MAE / seasonal naive MAE: {format_number(ratio)} (the model {verdict} the seasonal naive forecast)."]
    assert any("co2, test split: window 24, horizon 1, season 12 steps. Errors in ppm" in t
               for t in page.texts("p", "note"))
    assert len(page.images) == 2  # training curves and the forecast plot
    image = decode_png(page.images[1])
    assert image.width >= 600 and len(np.unique(np.asarray(image.convert("L")))) > 10


def test_no_forecast_json_no_section(tmp_path):
    page = parse(write_report(make_run_dir(tmp_path, None)).read_text(encoding="utf-8"))
    assert "forecast" not in page.section_ids() and "Forecast" not in page.texts("h2")
    assert not [c for c, _ in page.tables if c == "forecast"]
    assert "forecast" not in page.texts("a")
    assert len(page.images) == 1


def test_render_report_keyword(forecast):
    without = parse(render_report(config=CONFIG, history=HISTORY))
    assert "forecast" not in without.section_ids()
    worse = {**forecast, "mae": 9.0, "mae_ratio_vs_seasonal_naive": 9.0 / forecast["seasonal_naive_mae"]}
    page = parse(render_report(config=CONFIG, history=HISTORY, forecast=worse))
    assert page.table("forecast")[1] == ["model", "9", format_number(forecast["rmse"])]
    assert "does not beat" in page.texts("p", "ratio")[0]


def test_forecast_plot_draws_and_skips_empty(forecast):
    png = plots.forecast_vs_actual(forecast["index"], forecast["actual"], forecast["predicted"],
                                   forecast["seasonal_naive"], unit=forecast["unit"])
    image = decode_png("data:image/png;base64," + png)
    assert image.width >= 600 and image.height >= 250
    assert plots.forecast_vs_actual([], [], []) is None
