"""The package table of ARCHITECTURE.md, as a test: tools/check_structure.py reads every
import under src/dlforge (function-level ones included) and holds it against the table.

The first tests check the real tree; the rest build a small fake dlforge under tmp_path and
show the check fails on an upward import, a cycle, an over-long file and the rest.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "check_structure.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_structure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


cs = _load_script()


# --- the real tree ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def real() -> object:
    return cs.check()


def test_every_import_follows_the_package_table(real) -> None:
    assert real.violations == [], "\n".join(real.violations)


def test_no_import_cycle_inside_a_package(real) -> None:
    assert real.cycles == [], "\n".join(real.cycles)


def test_no_source_file_over_the_line_limit(real) -> None:
    assert real.long_files == [], "\n".join(real.long_files)


def test_the_table_is_a_one_way_map() -> None:
    table = cs.TABLE
    for unit, allowed in table.items():  # every name in a row has a row of its own
        assert set(allowed) <= set(table), (unit, set(allowed) - set(table))
    assert not [u for u, allowed in table.items() if "cli" in allowed]  # nobody imports the CLI
    assert [u for u, allowed in table.items() if "lab" in allowed] == ["cli"]  # only `dlforge lab`
    for unit, forbidden in cs.NEVER.items():
        assert not set(forbidden) & set(table[unit]), unit
    done: set[str] = set()  # topological order exists <=> no cycle in the table
    while len(done) < len(table):
        ready = {u for u, allowed in table.items() if u not in done and set(allowed) <= done}
        assert ready, f"the table has a cycle among {sorted(set(table) - done)}"
        done |= ready


# --- a small fake tree -------------------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path under dlforge -> source) under root/src/dlforge; return that folder."""
    src = root / "src" / "dlforge"
    base = {
        "__init__.py": '__version__ = "0"\n',
        "errors.py": "class DlforgeError(Exception): ...\n",
        "models/__init__.py": "from dlforge.models.mlp import MLP\n",
        "models/mlp.py": "from dlforge.errors import DlforgeError\n\nclass MLP: ...\n",
        "train/__init__.py": "from .engine import fit\n",
        "train/engine.py": "from ..errors import DlforgeError\n\ndef fit(model): ...\n",
        "compress/__init__.py": "from dlforge.compress.quantize import quantize\n",
        "compress/quantize.py": "def quantize(model): ...\n",
        "serve/__init__.py": "",
        "serve/pool.py": "from dlforge.compress.quantize import quantize\nfrom dlforge import models\n",
        "lab/__init__.py": "from dlforge.train import fit\n",
    }
    for name, text in {**base, **files}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text, encoding="utf-8")
    return src


def test_a_healthy_fake_tree_passes(tmp_path: Path, capsys) -> None:
    src = _tree(tmp_path, {})
    report = cs.check(src)
    assert report.problems == []
    assert report.graph["serve"] == {"compress", "models"}
    assert cs.main(["--src", str(src)]) == 0
    out = capsys.readouterr().out
    assert "  serve -> compress, models" in out and "structure: ok" in out


def test_an_upward_import_fails_even_inside_a_function(tmp_path: Path, capsys) -> None:
    src = _tree(tmp_path, {"train/bagging.py": "def bag():\n    from ..models import mlp\n"})
    report = cs.check(src)
    assert report.violations == [
        "src/dlforge/train/bagging.py:2: train -> models (train may import: errors, targets)"]
    assert cs.main(["--src", str(src), "--quiet"]) == 1
    assert "train -> models" in capsys.readouterr().out


def test_importing_the_lab_or_the_cli_fails(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"cli.py": "import dlforge.lab\n",
                           "models/cnn.py": "import dlforge.lab\nfrom dlforge import cli\n"})
    found = [v.split(" (")[0] for v in cs.check(src).violations]
    assert found == ["src/dlforge/models/cnn.py:1: models -> lab", "src/dlforge/models/cnn.py:2: models -> cli"]


def test_a_package_without_a_row_fails(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"gadgets/__init__.py": "from dlforge.errors import DlforgeError\n"})
    (problem,) = cs.check(src).violations
    assert problem.startswith("gadgets has no row in the package table")


def test_a_cycle_inside_a_package_fails_but_type_hints_do_not_count(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "models/a.py": "from dlforge.models.b import helper\n",
        "models/b.py": "def helper():\n    from dlforge.models import a\n",
        # type-only imports never run, so they make no cycle
        "models/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dlforge.models.d import D\n",
        "models/d.py": "from dlforge.models.c import C\n",
    })
    report = cs.check(src)
    assert report.violations == []
    (cycle,) = report.cycles
    assert cycle.startswith("import cycle in models: dlforge.models.a <-> dlforge.models.b (")
    assert "src/dlforge/models/a.py:1" in cycle and "src/dlforge/models/b.py:2" in cycle


def test_serve_may_use_compress_only_while_that_loads_no_training_code(tmp_path: Path) -> None:
    # compress/__init__ runs whenever serve imports compress.quantize: an import of train there
    # (even one a function makes) drags the training code into the server
    src = _tree(tmp_path, {
        "compress/__init__.py": "from dlforge.compress.quantize import quantize\nfrom . import distill\n",
        "compress/distill.py": "def distill(model):\n    from dlforge.train import fit\n",
    })
    (problem,) = cs.check(src).violations
    assert problem == ("src/dlforge/serve/pool.py:1: serve loads train (serve must never load train, config, "
                       "pipeline, tune, runs, lab, cli): dlforge.serve.pool -> dlforge.compress.quantize -> "
                       "dlforge.compress -> dlforge.compress.distill -> dlforge.train")


def test_an_entry_module_may_hand_over_to_the_cli(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"cli.py": "from dlforge.train import fit\n",
                           "serve/__main__.py": "from dlforge.cli import app\n"})
    assert cs.check(src).problems == []


def test_an_over_long_file_fails_unless_its_reason_is_written_down(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"models/big.py": "x = 1\n" * 501, "models/fits.py": "x = 1\n" * 500})
    assert cs.check(src).long_files == [
        "src/dlforge/models/big.py: 501 lines (limit 500): split it by concern"]
    assert cs.check(src, exceptions={"models/big.py": "generated table"}).long_files == []
