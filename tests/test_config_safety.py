"""Config files are read safely: UTF-8 only, bounded in size, nesting and alias expansion,
and every refusal is a ConfigError that names the file and says what to do."""

from __future__ import annotations

import doctest
import os
import re
import time
import tracemalloc

import pytest

import dlforge.config as config_module
from dlforge import user_files
from dlforge.config import load_config, parse_override
from dlforge.errors import ConfigError, DataError
from dlforge.user_files import MAX_ALIAS_NODES, MAX_CONFIG_BYTES, MAX_DEPTH, parse_yaml, read_text_file, read_yaml

GOOD = "data: {source: xor}\nmodel: {arch: mlp, hidden: [4]}\n"


def billion_laughs(levels: int = 9) -> str:
    """A run config of a few hundred bytes whose aliases expand to 9**levels strings, one
    of them where validation would print it (``name``) and the rest where it is kept (``model``)."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "model:\n  arch: mlp\n" + "\n".join(lines) + f"\nname: *l{levels - 1}\ndata: {{source: xor}}\n"


def write(tmp_path, content: str | bytes, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_non_utf8_config_names_the_byte_and_its_offset(tmp_path):
    path = write(tmp_path, b"name: caf\xe9\n" + GOOD.encode())
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"config file {path} is not UTF-8 text (byte 0xe9 at offset 9, line 1)" in err.value.message
    assert "UTF-8" in err.value.hint


def test_a_byte_order_mark_is_fine(tmp_path):
    assert load_config(write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())).data.source == "xor"


def test_billion_laughs_is_refused_fast_and_small(tmp_path):
    path = write(tmp_path, billion_laughs())
    assert path.stat().st_size < 1024
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        read_yaml(path)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="aliases expand to more than") as err:
            load_config(path)
        seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 1.0 and peak < 5 * 2**20, (seconds, peak)
    assert "anchors" in err.value.hint


def test_small_anchors_still_share_sections(tmp_path):
    dry = "base: &opt {name: adam, lr: 0.01}\ndata: {source: xor}\nmodel: &m {arch: mlp, hidden: [4]}\n"
    raw = read_yaml(write(tmp_path, dry + "optim: *opt\ntune: {space: {}, note: *m}\n"))
    assert raw["optim"] == {"name": "adam", "lr": 0.01} and raw["tune"]["note"]["arch"] == "mlp"
    # the budget: three levels (1,729 values from aliases) pass, four (15,670) do not
    assert len(parse_yaml(billion_laughs(3), "three levels")["name"]) == 9
    with pytest.raises(ConfigError, match=f"more than {MAX_ALIAS_NODES:,} values"):
        parse_yaml(billion_laughs(4), "four levels")


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(ConfigError, match=r"alias \*a on line 2 is inside its own anchor"):
        parse_yaml("model: &a\n  x: *a\n", "c.yaml")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5000])
def test_deep_nesting_is_refused(tmp_path, levels):
    path = write(tmp_path, "a: " + "[" * levels + "]" * levels)
    with pytest.raises(ConfigError, match="nest|nesting") as err:
        read_yaml(path)
    assert str(path) in err.value.message


def test_nesting_through_aliases_counts_too():
    half = MAX_DEPTH // 2 + 1
    text = f"a: &a {'[' * half}1{']' * half}\nb: {'[' * half}*a{']' * half}\n"
    with pytest.raises(ConfigError, match=f"deeper than {MAX_DEPTH} levels"):
        parse_yaml(text, "c.yaml")


@pytest.mark.parametrize("content, kind", [
    ("42\n", "single value (int)"), ("just words\n", "single value (str)"),
    ("- data\n- model\n", "list"), ('["a", "b"]', "list"),
])
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path, content, kind):
    with pytest.raises(ConfigError, match=re.escape(f"holds a YAML {kind}, not a mapping of sections")) as err:
        load_config(write(tmp_path, content))
    assert "key: value" in err.value.hint


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_says_so(tmp_path, content):
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, content))


def test_the_file_size_is_capped_before_parsing(tmp_path):
    path = write(tmp_path, GOOD + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES:,} bytes"):
        read_yaml(path)


@pytest.mark.parametrize("content, fragment", [
    (bytes(range(1, 128)) * 4, "not YAML text: character U+0001"),  # ASCII control bytes: valid UTF-8
    (b"a: \x00\n", "not YAML text: character U+0000"),
    (b"seed: 2024-13-45\n", "month must be in 1..12"),  # SafeConstructor raises a plain ValueError
    (b"a: [1\n", "did not find expected ',' or ']' (line 2, column 1)"),
    (b"a: 1\n---\nb: 2\n", "expected a single document"),
    (b"a: *nowhere\n", "found undefined alias"),
])
def test_garbage_and_bad_yaml_are_config_errors(tmp_path, content, fragment):
    with pytest.raises(ConfigError) as err:
        read_yaml(write(tmp_path, content))
    assert fragment in err.value.message


@pytest.mark.parametrize("value, fragment", [
    ("[1", "is not valid YAML"), ("2024-13-45", "month must be in 1..12"),
    ("&a [*a]", "inside its own anchor"),
    ("caf\udce9", "is not UTF-8 text (byte 0xe9 at offset 3)"),  # how Python passes on a Latin-1 byte in argv
])
def test_set_values_go_through_the_same_parser(value, fragment):
    with pytest.raises(ConfigError, match="--set") as err:
        parse_override(f"train.epochs={value}")
    assert fragment in err.value.message


def test_folders_missing_and_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        read_yaml(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    path = write(tmp_path, GOOD)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", refuse)
    with pytest.raises(DataError, match=r"cannot read CSV file .*: Permission denied") as err:
        read_text_file(path, "CSV file", error=DataError)
    assert "permissions" in err.value.hint


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission(tmp_path):
    path = write(tmp_path, GOOD)
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            load_config(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("module", [user_files, config_module], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
