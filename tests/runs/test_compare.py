"""The compare page: only the config keys that differ, intervals over seeds equal to
evaluate.intervals.measure, a tuning study's parallel coordinates, and a real browser
that loads every figure without an error."""

from __future__ import annotations

import json

from dlforge.evaluate.intervals import measure
from dlforge.evaluate.report import format_number
from dlforge.runs.compare import differing_keys, expand, seed_intervals, write_compare
from dlforge.runs.index import RunIndex
from tests.evaluate.test_report import decode_png, parse
from tests.evaluate.test_report_browser import run_chromium
from tests.runs.conftest import make_run, raw_config


def test_only_the_differing_keys_of_two_real_runs(trained, tmp_path):
    index = RunIndex(trained["runs"])
    a, b = index.get(trained["a"].name), index.get(trained["b"].name)
    assert differing_keys([a, b]) == ["optim.lr", "seed"]
    page = parse(write_compare([a, b], tmp_path / "c.html").read_text())
    rows = page.table("diff")
    assert rows == [["key", a.name, b.name], ["optim.lr", "0.01", "0.05"], ["seed", "0", "1"]]
    assert page.table("metrics")[0] == ["metric", a.name, b.name]
    metric_rows = {r[0]: r[1:] for r in page.table("metrics")}
    assert metric_rows["val_accuracy"] == [format_number(a.metrics["val_accuracy"]), format_number(b.metrics["val_accuracy"])]
    assert metric_rows["status"] == ["finished", "finished"]
    assert "intervals" not in page.section_ids()  # lr differs too: not repeats of one config
    assert len(page.images) == 1  # the overlaid curves
    decode_png(page.images[0])


def test_seed_only_runs_get_intervals_equal_to_measure(tmp_path):
    values = {0: 0.91, 1: 0.86, 2: 0.88, 3: 0.93}
    for seed, acc in values.items():
        make_run(tmp_path, f"rep-{seed}", raw_config(seed=seed, name=f"rep{seed}"),
                 metrics={"val_accuracy": acc, "val_loss": 1 - acc})
    records = RunIndex(tmp_path).records()
    assert differing_keys(records) == ["name", "seed"]
    intervals = seed_intervals(records)
    assert intervals["val_accuracy"] == measure(list(values.values()))
    assert intervals["val_loss"] == measure([1 - v for v in values.values()])
    rows = parse(write_compare(records, tmp_path / "c.html").read_text()).table("intervals")
    want = measure(list(values.values()))
    assert ["val_accuracy", *map(format_number, (want.mean, want.low, want.high)), "4"] in rows
    # one more differing key and they are no longer repeats
    make_run(tmp_path, "other", raw_config(seed=9, **{"optim.lr": 0.5}), metrics={"val_accuracy": 0.5})
    assert seed_intervals(RunIndex(tmp_path).records()) is None


def test_a_tuning_study_shows_its_parallel_coordinates(tmp_path):
    trials = [{"number": i, "state": "complete" if i < 3 else "pruned", "value": 0.8 + i / 50 if i < 3 else None,
               "params": {"optim.lr": 10 ** -(i + 1), "model.arch": ["mlp", "cnn"][i % 2]}} for i in range(4)]
    for t in trials:
        make_run(tmp_path / "circles-trials", f"circles-2026010{t['number']}-000000",
                 raw_config(**{"optim.lr": t["params"]["optim.lr"]}), metrics={"val_accuracy": t["value"] or 0.5})
    (tmp_path / "circles-tune").mkdir()
    (tmp_path / "circles-tune" / "trials.json").write_text(json.dumps(trials))
    (tmp_path / "circles-tune" / "best_config.yaml").write_text("# Best trial 2 of study 'circles': "
                                                                 "val_accuracy = 0.84\n")
    records, study = expand(RunIndex(tmp_path), ["circles-tune"])
    assert study == "circles" and len(records) == 4
    page = parse(write_compare(records, tmp_path / "c.html", study=study).read_text())
    assert len(page.images) == 2 and any("study circles" in t for t in page.texts("figcaption"))
    assert [decode_png(src).size[0] > 0 for src in page.images] == [True, True]
    assert page.facts()["study"] == "circles"


def test_the_page_loads_in_chromium_without_errors(chromium, trained, tmp_path):
    index = RunIndex(trained["runs"])
    path = write_compare(index.records(), tmp_path / "compare.html")
    body = parse(run_chromium(chromium, path, tmp_path, "--dump-dom")).body
    assert body.get("data-figures") == "1" and body.get("data-figures-loaded") == "1"
    assert body.get("data-errors") == ""
    # negative control: a broken figure is seen by the same check
    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text().replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1))
    body = parse(run_chromium(chromium, broken, tmp_path, "--dump-dom")).body
    assert body.get("data-figures-loaded") == "0"
