"""Smoke run of benchmarks/tabular.py: ``--quick`` trains dlforge's default config and both
baselines on two small real sets and ends with the summary JSON the issue asks for."""

from __future__ import annotations

import math

import pytest

from tests.benchmarks.test_benchmarks_smoke import run_quick

SUMMARY_KEYS = {"worst_r2", "median_gap_to_best_baseline", "sets_where_dlforge_beats_both", "sets",
                "sets_with_errors", "seconds", "results"}
SET_KEYS = {"task", "rows", "features", "dlforge", "dlforge_run_metric", "hgb", "linear", "seconds"}


@pytest.mark.slow  # about 25 s: two trainings and four baselines
def test_quick_run_reports_every_set_and_the_summary() -> None:
    figures = run_quick("tabular.py")
    assert SUMMARY_KEYS <= set(figures)
    results = figures["results"]
    assert figures["sets"] == len(results) == 2
    assert {r["task"] for r in results.values()} == {"classification", "regression"}
    for name, row in results.items():
        assert SET_KEYS <= set(row), name
        for model in ("dlforge", "hgb", "linear"):
            assert isinstance(row[model], float) and math.isfinite(row[model]), (name, model, row[model])
        assert set(row["seconds"]) == {"dlforge", "hgb", "linear"}
    assert figures["sets_with_errors"] == []
