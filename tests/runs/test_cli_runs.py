"""``dlforge runs list | show | compare`` through Typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlforge.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_list_json_filter_and_sort(trained):
    result = invoke("runs", "list", "--runs-dir", trained["runs"], "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert {r["name"] for r in listed} == {trained[k].name for k in ("a", "b", "diverged")}
    assert {r["name"]: r["status"] for r in listed}[trained["diverged"].name] == "diverged"
    result = invoke("runs", "list", "--runs-dir", trained["runs"], "--json", "--filter",
                    "status=finished and optim.lr>0.02")
    assert [r["name"] for r in json.loads(result.stdout)] == [trained["b"].name]
    result = invoke("runs", "list", "--runs-dir", trained["runs"], "--json", "--filter", "status=finished",
                    "--sort", "-optim.lr")
    assert [r["name"] for r in json.loads(result.stdout)] == [trained["b"].name, trained["a"].name]


def test_list_table_shows_the_differing_keys(trained):
    result = runner.invoke(app, ["runs", "list", "--runs-dir", str(trained["runs"])], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert trained["a"].name in result.output and "finished" in result.output and "diverged" in result.output
    assert "optim.lr=0.05" in result.output and "seed=1" in result.output and "optim.name=sgd" in result.output


def test_show_json_has_the_whole_record(trained):
    result = invoke("runs", "show", trained["a"].name, "--runs-dir", trained["runs"], "--json")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["status"] == "finished" and rec["config"]["optim.lr"] == 0.01 and "val_accuracy" in rec["metrics"]
    assert {"config_hash", "data_fingerprint", "code_version", "registry", "best", "final"} <= set(rec)
    by_path = invoke("runs", "show", trained["a"], "--runs-dir", "/nonexistent", "--json")  # a path works anywhere
    assert by_path.exit_code == 0 and json.loads(by_path.stdout)["config_hash"] == rec["config_hash"]


def test_compare_writes_the_page(trained, tmp_path):
    out = tmp_path / "cmp.html"
    result = invoke("runs", "compare", trained["a"].name, trained["b"].name, "--runs-dir", trained["runs"], "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "optim.lr" in out.read_text() and str(out) in " ".join(result.output.split())


def test_errors_exit_2_with_a_hint(trained, tmp_path):
    cases = [
        (("runs", "show", trained["a"].name[:-1] + "x", "--runs-dir", trained["runs"]), "no run", "did you mean"),
        (("runs", "list", "--runs-dir", trained["runs"], "--filter", "val_accuracy>"), "position 14", "hint:"),
        (("runs", "list", "--runs-dir", trained["runs"], "--filter", "val_acc>1"), "val_acc", "val_accuracy"),
        (("runs", "list", "--runs-dir", tmp_path / "empty"), "no runs in", "dlforge train"),
        (("runs", "compare", trained["a"].name, "--runs-dir", trained["runs"]), "two or more runs", "hint:"),
    ]
    for args, message, hint in cases:
        result = invoke(*args)
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (args, result.output)
        assert message in text and hint in text and "Traceback" not in text, (args, text)
