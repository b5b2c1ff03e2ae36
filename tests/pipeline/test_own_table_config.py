"""The data section for own tables: where a relative source is read from, table-only keys,
and the table options reaching the loader (fill values from the run's own train split)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from dlforge.config import load_config, resolve_source, validate_config
from dlforge.errors import ConfigError, DataError
from dlforge.pipeline.data import load_data

MLP = {"arch": "mlp", "hidden": [8]}


def survey(path, n: int = 80):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"person": [f"P{i:04d}" for i in rng.permutation(n)],
                       "age": rng.normal(40, 12, n).round(1), "notes": rng.choice(["a", "b"], n),
                       "label": rng.choice(["yes", "no"], n)})
    df.loc[[3, 9, 20, 50], "age"] = np.nan
    df.to_csv(path, index=False)
    return df


def write_config(path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"seed": 1, "data": data, "model": MLP}))
    return path


def test_a_relative_source_is_read_from_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    survey(tmp_path / "project" / "survey.csv")
    cfg_path = write_config(tmp_path / "project" / "c.yaml",
                            {"source": "survey.csv", "target": "label", "id_column": "person"})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(cfg_path)
    assert cfg.data.source == str(tmp_path / "project" / "survey.csv") and cfg.source_notes == []
    assert load_data(cfg).name == "survey"


def test_the_current_folder_is_a_fallback_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    survey(tmp_path / "survey.csv")
    cfg_path = write_config(tmp_path / "configs" / "c.yaml",
                            {"source": "survey.csv", "target": "label", "id_column": "person"})
    cfg = load_config(cfg_path)
    assert cfg.data.source == "survey.csv"
    prepared = load_data(cfg)
    assert prepared.notes[0] == cfg.source_notes[0]
    assert "not in the config's folder" in prepared.notes[0] and "current folder" in prepared.notes[0]


def test_built_in_names_win_over_a_folder_beside_the_config(tmp_path):
    (tmp_path / "iris").mkdir()
    assert resolve_source(tmp_path, "iris") == ("iris", None)
    assert resolve_source(tmp_path, "./iris") == (str(tmp_path / "iris"), None)


def test_table_options_reach_the_loader_and_fill_from_the_train_split(tmp_path):
    df = survey(tmp_path / "survey.csv")
    cfg = validate_config({"seed": 2, "model": MLP, "data": {
        "source": str(tmp_path / "survey.csv"), "target": "label", "id_column": "person", "drop": ["notes"]}})
    prepared = load_data(cfg)
    encoding = prepared.preprocessing["encoding"]
    assert encoding["columns"] == ["age"] and encoding["id_column"] == "person"
    assert prepared.feature_names == ["age", "age_missing"]
    train = prepared.split_indices["train"]
    ages = df["age"].to_numpy()[train]
    assert encoding["fill"]["age"] == np.median(ages[~np.isnan(ages)])
    assert any(n.startswith("filled 4 missing cells: age 4") for n in prepared.notes)
    with pytest.raises(DataError, match="'person' looks like an identifier"):
        load_data(validate_config({"model": MLP, "data": {"source": str(tmp_path / "survey.csv"),
                                                          "target": "label", "drop": ["notes"]}}))
    refused = validate_config({"model": MLP, "data": {"source": str(tmp_path / "survey.csv"),
                                                      "target": "label", "id_column": "person",
                                                      "missing": "error"}})
    with pytest.raises(DataError, match="'age' has"):
        load_data(refused)


@pytest.mark.parametrize("source, data", [
    ("sunspots", {"drop": ["x"]}),
    ("sunspots", {"missing": "error"}),
    ("pydoc_topics", {"id_column": "id"}),
    ("pydoc_topics", {"unknown_category": "ignore"}),
    ("pydoc_topics", {"standardize_target": False}),
])
def test_table_keys_are_refused_for_series_and_text(source, data):
    cfg = validate_config({"model": MLP, "data": {"source": source, **data}})
    with pytest.raises(ConfigError, match=f"data.{next(iter(data))} does not apply"):
        load_data(cfg)


def test_table_keys_are_refused_for_built_in_and_image_sets():
    with pytest.raises(DataError, match="data.drop does not apply"):
        load_data(validate_config({"model": MLP, "data": {"source": "iris", "drop": ["x"]}}))
