"""The Python API trains on a pandas DataFrame and predicts on one, as on the same CSV."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes

from dlforge.config import validate_config
from dlforge.errors import ConfigError
from dlforge.pipeline import train_run
from dlforge.registry import load_artifact


def _config(source: str) -> dict:
    return {"seed": 0, "data": {"source": source, "target": "target"}, "model": {"arch": "mlp", "hidden": [16]},
            "train": {"epochs": 2}}


def test_a_dataframe_trains_like_its_csv(tmp_path):
    frame = load_diabetes(as_frame=True).frame.iloc[:200]
    frame.to_csv(tmp_path / "diabetes.csv", index=False)
    from_csv = train_run(validate_config(_config(str(tmp_path / "diabetes.csv"))), runs_dir=tmp_path / "a")
    from_frame = train_run(validate_config(_config("diabetes")), runs_dir=tmp_path / "b", data=frame)

    assert from_frame.metrics["test_r2"] == pytest.approx(from_csv.metrics["test_r2"], abs=1e-6)
    art = load_artifact(from_frame.artifact_dir)
    rows = frame.iloc[:5]
    by_frame = art.predict(art.encode(rows))["values"]
    by_dicts = art.predict(art.encode(rows.to_dict("records")))["values"]
    torch.testing.assert_close(by_frame, by_dicts)
    assert by_frame.abs().mean() > 10  # answers in the target's units (disease progression, ~150)


def test_a_dataframe_with_a_text_or_series_source_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="DataFrame is a table"):
        train_run(validate_config(_config("sunspots") | {"data": {"source": "sunspots"}}), runs_dir=tmp_path,
                  data=pd.DataFrame({"a": [1, 2]}))
    assert not any(tmp_path.iterdir())
