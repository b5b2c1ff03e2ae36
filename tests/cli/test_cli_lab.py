"""dlforge lab list / run / report."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.lab.finding import verdict_of

runner = CliRunner()


def test_lab_list_names_every_topic_with_its_level():
    result = runner.invoke(app, ["lab", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["topic"] for r in rows} >= {1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 18, 20, 21}
    assert {r["level"] for r in rows if r["topic"] <= 10} == {"basic"}
    assert all(r["claim"] for r in rows)


def test_lab_run_json_gives_topic_verdict_numbers_rule(tmp_path):
    result = runner.invoke(app, ["lab", "run", "4", "--json"])
    assert result.exit_code == 0, result.output
    (finding,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert finding["topic"] == 4 and finding["budget"] == "quick"
    assert {"verdict", "numbers", "rule", "checks"} <= set(finding)
    held = [c["holds"] for c in finding["checks"]]
    expected = "supported" if all(held) else ("partly supported" if any(held) else "not supported")
    assert finding["verdict"] == expected
    assert finding["numbers"]["max_rel_error_vs_autograd"] < 1e-8


def test_lab_report_writes_one_page(tmp_path):
    out = tmp_path / "lab.html"
    result = runner.invoke(app, ["lab", "report", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "Backpropagation" in html and "data:image/png;base64," in html


def test_lab_errors_are_explained():
    result = runner.invoke(app, ["lab", "run", "99"])
    assert result.exit_code == 2 and "topic 99" in result.output and "available topics" in result.output
    result = runner.invoke(app, ["lab", "run", "4", "--budget", "huge"])
    assert result.exit_code == 2 and "quick" in result.output


def test_verdict_rule_is_the_documented_one():
    from dlforge.lab.finding import Check

    numbers = {"a": 1.0, "b": 2.0}
    assert verdict_of([Check("a", "<", 2), Check("b", ">", "a")], numbers) == "supported"
    assert verdict_of([Check("a", ">", 2), Check("b", ">", "a")], numbers) == "partly supported"
    assert verdict_of([Check("a", ">", 2), Check("b", "<", "a")], numbers) == "not supported"


def test_a_saved_run_renders_without_running_and_bad_files_are_refused(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for topic, path in (("4", first), ("3", second)):
        result = runner.invoke(app, ["lab", "run", topic, "--workers", "1", "--save", str(path)])
        assert result.exit_code == 0, result.output
    saved = json.loads(second.read_text())
    assert saved[0]["topic"] == 3 and saved[0]["figures"][0]["png_base64"]  # figures travel with it
    out = tmp_path / "lab.html"
    result = runner.invoke(app, ["lab", "report", "--from", str(first), "--from", str(second), "-o", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    from dlforge.lab import experiment

    assert experiment(3).TITLE in html and experiment(4).TITLE in html
    assert html.count("data:image/png;base64,") >= 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"not": "a list"}')
    for args, message in ((["--from", str(tmp_path / "none.json")], "no findings file"),
                          (["--from", str(broken)], "does not hold findings saved by dlforge lab run --save"),
                          (["7", "--from", str(first)], "hold no topic 7")):
        result = runner.invoke(app, ["lab", "report", *args, "-o", str(tmp_path / "x.html")])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.html").exists()
