"""The CLI layer is one package, ``dlforge.cli``: the app in ``__init__``, one module per
command group, and no command wiring (Typer, rich, printing ``*_cli`` functions) left in
the library packages it calls."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import dlforge

SRC = Path(dlforge.__file__).parent
GROUPS = ("_common", "runs", "experiments", "registry", "serve", "lab")


def test_the_cli_is_a_package_with_one_small_module_per_group() -> None:
    cli = SRC / "cli"
    assert (cli / "__init__.py").is_file() and not (SRC / "cli.py").exists()
    for name in GROUPS:
        lines = len((cli / f"{name}.py").read_text(encoding="utf-8").splitlines())
        assert lines < 400, (name, lines)


def test_no_command_wiring_is_left_in_the_library() -> None:
    for gone in ("dlforge.registry.cli", "dlforge.serve.cli", "dlforge._console"):
        assert importlib.util.find_spec(gone) is None, gone
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("cli/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_cli"):
                offenders.append(f"{rel}: def {node.name}")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}: import {n}" for n in names if n.split(".")[0] in ("typer", "rich")]
    assert offenders == []


def test_the_groups_mount_every_command_in_the_old_order() -> None:
    import typer.main

    from dlforge.cli import app

    group = typer.main.get_group(app)
    assert list(group.commands) == [
        "train", "resume", "quickstart", "predict", "evaluate", "report", "cv", "tune", "augment-preview",
        "ensemble", "learning-curve", "datasets", "serve", "compress", "export", "variants", "registry", "keys", "lab",
        "runs"]


def test_docstring_examples() -> None:
    import doctest

    import dlforge.cli.experiments as experiments

    result = doctest.testmod(experiments)
    assert result.attempted > 0 and result.failed == 0
