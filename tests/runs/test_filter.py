"""--filter and --sort: what they select and how they refuse a bad expression."""

from __future__ import annotations

import pytest

from dlforge.errors import ConfigError
from dlforge.runs.filter import parse_filter, select, sort_records, tokenize
from dlforge.runs.index import RunRecord


def table() -> list[RunRecord]:
    rows = [("a", "cnn", 0.95, 0.001, "finished", True), ("b", "mlp", 0.80, 0.01, "finished", False),
            ("c", "cnn", 0.85, 0.1, "diverged", True), ("d", "rnn", 0.91, 0.01, "stopped", False)]
    return [RunRecord(name, f"/runs/{name}", status=status, started=f"2026-01-0{i + 1}T00:00:00",
                      config={"model.arch": arch, "optim.lr": lr, "data.standardize": std, "model.hidden": [8, 8]},
                      metrics={"val_accuracy": acc}, best={"val_accuracy": acc + 0.01}, final={"train_loss": 1 - acc})
            for i, (name, arch, acc, lr, status, std) in enumerate(rows)]


@pytest.mark.parametrize("expr, names", [
    ("val_accuracy>0.9", "ad"),
    ("val_accuracy>=0.85 and model.arch=cnn", "ac"),
    ("model.arch = cnn or model.arch='rnn'", "acd"),
    ("not model.arch=cnn", "bd"),
    ("not (model.arch=cnn or status=stopped)", "b"),
    ("model.arch!=cnn and val_accuracy<0.9", "b"),
    ("(optim.lr<=0.01 and val_accuracy>0.9) or status=diverged", "acd"),
    ("optim.lr=0.01", "bd"),
    ("optim.lr=1e-2", "bd"),
    ("data.standardize=true", "ac"),
    ("best.val_accuracy>0.95", "a"),
    ("final.train_loss<0.06", "a"),
    ("train_loss<0.06", "a"),
    ("started>=2026-01-03", "cd"),
    ('name="b" OR name=c', "bc"),
    ("model.hidden='[8, 8]'", "abcd"),
    ("val_accuracy > 0.9 and not not status = finished", "a"),
])
def test_selects(expr, names):
    assert "".join(r.name for r in select(table(), expr)) == names


@pytest.mark.parametrize("expr, position, expected", [
    ("val_accuracy>", 14, "a value after val_accuracy>"),
    ("val_accuracy>>0.9", 14, "a value"),
    ("val_accuracy 0.9", 14, "a comparison"),
    ("(val_accuracy>0.9", 18, "')'"),
    ("val_accuracy>0.9 and", 21, "a key"),
    ("val_accuracy>0.9 model.arch=cnn", 18, "'and', 'or'"),
    ("model.arch='cnn", 12, "a closing '"),
    ("val_accuracy=>0.9", 14, "a value"),
    ("val_accuracy!0.9", 13, "a comparison"),
    ("", 1, "a key"),
])
def test_refuses_bad_expressions_naming_the_position(expr, position, expected):
    with pytest.raises(ConfigError) as err:
        parse_filter(expr)
    assert f"expected {expected}" in err.value.message and f"at position {position}," in err.value.message
    assert err.value.hint


def test_unknown_key_names_the_nearest_known_keys():
    with pytest.raises(ConfigError) as err:
        select(table(), "val_acuracy>0.9")
    assert "'val_acuracy'" in err.value.message and "val_accuracy" in err.value.hint
    with pytest.raises(ConfigError) as err:
        select(table(), "model.arc=cnn")
    assert "model.arch" in err.value.hint


def test_nothing_is_evaluated_as_python():
    with pytest.raises(ConfigError):
        select(table(), "__import__('os').system('true')")
    assert [t.kind for t in tokenize("a=b")] == ["word", "op", "word", "end"]


def test_a_run_without_the_key_does_not_match():
    rows = table() + [RunRecord("e", "/runs/e", config={"model.arch": "cnn"})]
    assert [r.name for r in select(rows, "val_accuracy<2")] == ["a", "b", "c", "d"]
    assert [r.name for r in select(rows, "not val_accuracy<2")] == ["e"]


@pytest.mark.parametrize("key, names", [
    ("val_accuracy", "bcda"), ("-val_accuracy", "adcb"), ("model.arch", "acbd"), ("-optim.lr", "cbda"),
    ("started", "abcd"),
])
def test_sort(key, names):
    assert "".join(r.name for r in sort_records(table(), key)) == names


def test_sort_puts_runs_without_the_key_last_and_refuses_unknown_keys():
    rows = [RunRecord("e", "/runs/e")] + table()
    assert [r.name for r in sort_records(rows, "-val_accuracy")][-1] == "e"
    with pytest.raises(ConfigError) as err:
        sort_records(rows, "val_acc")
    assert "--sort" in err.value.message and "val_accuracy" in err.value.hint
