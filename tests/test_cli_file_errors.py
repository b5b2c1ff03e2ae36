"""Every dlforge command that reads a file the user names, handed a bad one: not UTF-8,
empty, binary, a folder, unreadable, or YAML that is hostile or not a mapping. Each must
exit 2 with a message naming the problem, and never print a traceback."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.errors import DataError
from dlforge.pipeline.predict import read_texts

from .test_config_safety import billion_laughs

runner = CliRunner()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# name -> (bytes, or None for a folder; what the message must say)
BAD_YAML = {
    "latin-1": (b"name: caf\xe9\ndata: {source: xor}\nmodel: {arch: mlp}\n",
                "is not UTF-8 text (byte 0xe9 at offset 9"),
    "binary": (bytes(range(256)) * 4, "is not UTF-8 text (byte 0x80 at offset 128"),
    "empty": (b"", "is empty"),
    "folder": (None, "is a folder, not a file"),
    "a list": (b"- data\n- model\n", "holds a YAML list, not a mapping"),
    "a scalar": (b"just some words\n", "holds a YAML single value (str), not a mapping"),
    "billion laughs": (billion_laughs().encode(), "aliases expand to more than 10,000 values"),
    "deep nesting": (b"a: " + b"[" * 900 + b"]" * 900, "nests deeper than 50 levels"),
    "bad date": (b"seed: 2024-13-45\ndata: {source: xor}\nmodel: {arch: mlp}\n", "month must be in 1..12"),
}
BAD_CSV = {
    "latin-1": (b"x,label\n1,caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 13, line 2)"),
    "binary": (bytes(range(256)) * 4, "is not UTF-8 text (byte 0x80 at offset 128"),
    "empty": (b"", "is empty"),
    "folder": (None, "is a folder, not a file"),
}
CONFIG_COMMANDS = [["train"], ["cv"], ["tune"], ["augment-preview"], ["learning-curve", "--sizes", "10"]]


def invoke(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def assert_refused(args, *fragments: str) -> None:
    code, text = invoke(*args)
    assert code == 2 and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in: {text}"


def make(path: Path, content: bytes | None) -> Path:
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-epoch run on a small CSV (seconds)."""
    root = tmp_path_factory.mktemp("run")
    csv = root / "a.csv"
    csv.write_text("x,y,label\n" + "".join(f"{i % 7},{i % 5},{'ab'[i % 2]}\n" for i in range(40)))
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "g", "data": {"source": str(csv), "target": "label"},
                                      "model": {"arch": "mlp", "hidden": [4]}, "train": {"epochs": 1}}))
    code, text = invoke("train", config, "--runs-dir", root / "runs", "--json")
    assert code == 0, text
    return next((root / "runs").iterdir())


@pytest.mark.parametrize("bad", BAD_YAML)
@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
def test_config_commands_refuse_bad_config_files(tmp_path, command, bad):
    content, fragment = BAD_YAML[bad]
    path = make(tmp_path / "c.yaml", content)
    assert_refused([command[0], path, *command[1:]], str(path), fragment)


@pytest.mark.parametrize("value, fragment", [
    ("train.epochs=[1", "is not valid YAML"),
    ("seed=2024-13-45", "month must be in 1..12"),
    ("model.x=&a [*a]", "inside its own anchor"),
    ("name=caf\udce9", "is not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_set_overrides_are_refused_cleanly(tmp_path, value, fragment):
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: xor}\nmodel: {arch: mlp}\n")
    assert_refused(["train", config, "--set", value, "--runs-dir", tmp_path / "runs"], "--set", fragment)


@pytest.mark.parametrize("command, bad", [
    (command, bad) for command in ("resume", "report", "evaluate", "ensemble")
    for bad in ("latin-1", "empty", "folder", "billion laughs")
    if (command, bad) != ("ensemble", "folder")  # a run without a config.yaml file: a bare artifact, by design
])
def test_run_directory_commands_refuse_a_damaged_config_yaml(tmp_path, run_dir, command, bad):
    content, fragment = BAD_YAML[bad]
    damaged = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, damaged)
    (damaged / "config.yaml").unlink()
    make(damaged / "config.yaml", content)
    extra = [run_dir, "--out", tmp_path / "ensemble"] if command == "ensemble" else []
    expected = "not found: a report needs" if bad == "folder" and command == "report" else fragment
    assert_refused([command, damaged, *extra], "config.yaml", expected)


@pytest.mark.parametrize("bad", BAD_CSV)
def test_data_files_are_refused_cleanly(tmp_path, run_dir, bad):
    content, fragment = BAD_CSV[bad]
    csv = make(tmp_path / "data.csv", content)
    assert_refused(["predict", run_dir, csv], str(csv), fragment)
    assert_refused(["evaluate", run_dir, "--data", csv, "--target", "label"], str(csv), fragment)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(csv), "target": "label"}, "model": {"arch": "mlp"}}))
    # a folder as data.source is an image folder: train says what does not fit one
    expected = [] if content is None else [fragment]
    assert_refused(["train", config, "--runs-dir", tmp_path / "runs"], str(csv), *expected)
    if bad != "empty":  # an empty .jsonl says "is empty" with its own hint
        jsonl = make(tmp_path / "texts.jsonl", content)
        config.write_text(yaml.safe_dump({"data": {"source": str(jsonl)}, "model": {"arch": "mlp"}}))
        assert_refused(["train", config, "--runs-dir", tmp_path / "runs"], str(jsonl), fragment)


@pytest.mark.parametrize("bad", ["latin-1", "binary", "folder"])
def test_texts_to_predict_are_refused_cleanly(tmp_path, bad):
    content, fragment = BAD_CSV[bad]
    with pytest.raises(DataError, match=re.escape(fragment)):
        read_texts([make(tmp_path / "texts.txt", content)])


@pytest.mark.skipif(AS_ROOT, reason="root reads files without read permission")
def test_unreadable_files_are_refused_cleanly(tmp_path, run_dir):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y,label\n1,2,a\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(csv), "target": "label"}, "model": {"arch": "mlp"}}))
    for path in (csv, config):
        path.chmod(0)
    try:
        assert_refused(["train", config], "cannot read config file", "Permission denied")
        assert_refused(["predict", run_dir, csv], "cannot read CSV file", "Permission denied")
    finally:
        for path in (csv, config):
            path.chmod(0o644)


@pytest.mark.parametrize("bad", ["binary", "latin-1", "folder"])
def test_keys_refuse_a_registry_file_that_is_not_a_database(tmp_path, bad):
    """The damage check itself is the registry's (tests/registry/test_damaged_and_full.py)."""
    path = make(tmp_path / "registry.db", BAD_CSV[bad][0])
    assert_refused(["keys", "list", "--registry", path], "registry database")
