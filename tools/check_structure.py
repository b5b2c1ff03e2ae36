"""Check dlforge's structure: the package table, import cycles and file lengths.

Every ``import`` under ``src/dlforge`` is read with ``ast`` (function-level and
``TYPE_CHECKING`` imports included, relative imports resolved) and held against the
package table below, the one the architecture map draws. Cycles and what a unit loads
count every import that runs (``TYPE_CHECKING`` ones never do). A lazy import that gets
around the table is a function in the wrong room: move the function, don't widen
the table without a reason written next to the row.

Run it from the repository root (CI does, before the tests); it prints the package
graph and every problem, and exits 1 if there is any:

    $ python tools/check_structure.py
    $ python tools/check_structure.py --quiet      # problems only
    $ python tools/check_structure.py --src path/to/src/dlforge

From Python (tests/test_layering.py does):

    >>> report = check(Path("src/dlforge"))
    >>> report.problems        # [] on a healthy tree
    []
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = "dlforge"
SRC = Path(__file__).resolve().parents[1] / "src" / ROOT

# The package table: unit -> the dlforge units it may import directly. A unit is a
# subpackage of dlforge or one of its top-level modules; imports inside a unit are free
# (but must not form a cycle). Every unit may import the root `dlforge` (the version).
# Nobody imports `cli`; only `cli` imports `lab` (the `dlforge lab` commands).
BASE = ("errors", "targets")  # errors users can fix; target conventions (IGNORE_INDEX)
TABLE: dict[str, tuple[str, ...]] = {
    ROOT: (),                                      # dlforge/__init__.py: the version
    "errors": (),
    "targets": (),
    "nn": (*BASE,),                                # blocks shared by three or more models
    "user_files": (*BASE,),                        # the one reader of user files (size caps, YAML budgets)
    "data": (*BASE, "user_files"),
    "models": (*BASE, "nn"),
    "train": (*BASE,),                             # never models: a model is passed in
    # The YAML schema: it validates the data, model and train sections with the configs
    # those packages own, so it sits above them and below everything that reads a run.
    "config": (*BASE, "user_files", "data", "models", "train"),
    "evaluate": (*BASE, "user_files", "data", "train"),
    "registry": (*BASE, "user_files", "data", "models"),
    "compress": (*BASE, "nn", "user_files", "data", "models", "train", "evaluate", "registry"),
    "pipeline": (*BASE, "nn", "user_files", "data", "models", "train", "config", "evaluate",
                 "registry", "compress"),
    "tune": (*BASE, "nn", "user_files", "data", "models", "train", "config", "evaluate",
             "registry", "compress", "pipeline"),
    "runs": (*BASE, "nn", "user_files", "data", "models", "train", "config", "evaluate",
             "registry", "compress", "pipeline"),
    # The server quantizes at load with compress.quantize (torch only); NEVER below keeps
    # whatever the server loads free of training code.
    "serve": (*BASE, "user_files", "data", "models", "registry", "compress"),
    "lab": (*BASE, "nn", "user_files", "data", "models", "train", "config", "evaluate",
            "registry", "compress", "pipeline", "tune", "runs", "serve"),
    "cli": (*BASE, "nn", "user_files", "data", "models", "train", "config",
            "evaluate", "registry", "compress", "pipeline", "tune", "runs", "serve", "lab"),
}

# Units that must stay out of everything a unit loads: its imports, their imports, and so
# on, module by module (importing a.b.c runs a/__init__ and a/b/__init__ too).
NEVER: dict[str, tuple[str, ...]] = {
    "serve": ("train", "config", "pipeline", "tune", "runs", "lab", "cli"),
}

# `python -m dlforge.x` entry modules: nothing imports a __main__, so one may hand over
# to the CLI layer (e.g. serve/__main__.py -> cli) without the library depending on it.
ENTRY_MODULE = "__main__"
ENTRY_MAY_IMPORT = ("cli",)

LINE_LIMIT = 500
# path relative to src/dlforge -> why it may be longer. Empty: no file needs more.
LONG_FILE_EXCEPTIONS: dict[str, str] = {}


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` module imports ``target`` module at ``path:line``."""

    source: str
    target: str
    path: str
    line: int
    typing_only: bool = False  # under `if TYPE_CHECKING:`: never runs, so no cycle and nothing loaded


@dataclass
class Report:
    """What ``check`` found: the unit graph and every problem, each one printable line."""

    graph: dict[str, set[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    cycles: list[str] = field(default_factory=list)
    long_files: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [*self.violations, *self.cycles, *self.long_files]


def _modules(src: Path) -> dict[str, Path]:
    """Module name -> file for every .py under ``src`` (``src`` is the dlforge folder)."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = [ROOT, *path.relative_to(src).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the tree (None if outside)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return None


class _Imports(ast.NodeVisitor):
    """Collects (target module, line, typing_only) for every dlforge import, at any depth."""

    def __init__(self, package: str, known: Mapping[str, Path]) -> None:
        self.package, self.known = package, known
        self.found: list[tuple[str, int, bool]] = []
        self.typing_only = False

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        if not guarded:
            self.generic_visit(node)
            return
        outer, self.typing_only = self.typing_only, True
        for child in node.body:
            self.visit(child)
        self.typing_only = outer
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(_resolve(alias.name, self.known), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        origin = node.module or ""
        if node.level:  # relative: level 1 is this package, 2 its parent, ...
            parts = self.package.split(".")
            origin = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
        for alias in node.names:  # `from pkg import submodule` imports the submodule
            self._add(_resolve(f"{origin}.{alias.name}", self.known) or _resolve(origin, self.known), node.lineno)

    def _add(self, target: str | None, line: int) -> None:
        if target and (target, line, self.typing_only) not in self.found:
            self.found.append((target, line, self.typing_only))


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ROOT


def _edges(src: Path) -> tuple[dict[str, Path], list[Edge]]:
    known = _modules(src)
    edges = []
    for module, path in known.items():
        rel = path.relative_to(src.parent.parent).as_posix()  # src/dlforge/...
        visitor = _Imports(module if path.name == "__init__.py" else module.rpartition(".")[0], known)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges += [Edge(module, target, rel, line, typing_only) for target, line, typing_only in visitor.found
                  if target != module]
    return known, edges


def _check_table(known: Mapping[str, Path], edges: list[Edge], table: Mapping[str, tuple[str, ...]],
                 report: Report) -> None:
    for unit in sorted({_unit(m) for m in known} - set(table) - {ROOT}):
        report.violations.append(f"{unit} has no row in the package table: add one to TABLE in "
                                 "tools/check_structure.py and to the table in ARCHITECTURE.md")
    for edge in edges:
        source, target = _unit(edge.source), _unit(edge.target)
        if source == target or target == ROOT:
            continue
        report.graph.setdefault(source, set()).add(target)
        if edge.source.rpartition(".")[2] == ENTRY_MODULE and target in ENTRY_MAY_IMPORT:
            continue
        if source not in table or target in table[source]:
            continue
        allowed = ", ".join(table[source]) or "nothing"
        problem = f"{edge.path}:{edge.line}: {source} -> {target} ({source} may import: {allowed})"
        if problem not in report.violations:  # one line per import statement
            report.violations.append(problem)


def _check_never(edges: list[Edge], never: Mapping[str, tuple[str, ...]], report: Report) -> None:
    """Walk everything each guarded unit loads; name one chain per forbidden unit it reaches."""
    outgoing: dict[str, list[Edge]] = {}
    for edge in edges:
        if not edge.typing_only:
            outgoing.setdefault(edge.source, []).append(edge)
    for unit, forbidden in never.items():
        # An entry module (__main__) is run, never imported: it is not part of what the unit loads.
        starts = sorted(m for m in outgoing if _unit(m) == unit and not m.endswith(f".{ENTRY_MODULE}"))
        via: dict[str, Edge | None] = dict.fromkeys(starts)
        queue, reported = list(starts), set()
        while queue:
            module = queue.pop(0)
            parts = module.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
            parents = [Edge(module, ".".join(parts[:i]), "", 0) for i in range(2, len(parts))]
            for edge in [*outgoing.get(module, []), *parents]:
                if edge.target in via:
                    continue
                via[edge.target] = edge
                hit = _unit(edge.target)
                if hit not in forbidden:
                    queue.append(edge.target)
                    continue
                if hit in reported:
                    continue
                reported.add(hit)
                chain, step = [], edge
                while step is not None:
                    chain.append(step)
                    step = via[step.source]
                chain.reverse()
                hops = " -> ".join([chain[0].source, *(e.target for e in chain)])
                first = next(e for e in chain if e.path)
                report.violations.append(f"{first.path}:{first.line}: {unit} loads {hit} ({unit} must never "
                                         f"load {', '.join(forbidden)}): {hops}")


def _check_cycles(edges: list[Edge], report: Report) -> None:
    """Cycles between modules of one unit (Tarjan's strongly connected components)."""
    inside: dict[str, list[Edge]] = {}
    for edge in edges:
        if _unit(edge.source) == _unit(edge.target) and not edge.typing_only:
            inside.setdefault(edge.source, []).append(edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:  # recursion depth is bounded by a unit's module count
        index[module] = low[module] = len(index)
        stack.append(module)
        for edge in inside.get(module, []):
            if edge.target not in index:
                visit(edge.target)
                low[module] = min(low[module], low[edge.target])
            elif edge.target in stack:
                low[module] = min(low[module], index[edge.target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                members = set(component)
                where = sorted({f"{e.path}:{e.line}" for m in members for e in inside.get(m, [])
                               if e.target in members})
                report.cycles.append(f"import cycle in {_unit(module)}: {' <-> '.join(sorted(members))} "
                                     f"({', '.join(where)}): move the shared piece so one imports the other")

    for module in sorted(inside):
        if module not in index:
            visit(module)


def _check_lengths(src: Path, known: Mapping[str, Path], limit: int,
                   exceptions: Mapping[str, str], report: Report) -> None:
    for path in sorted(known.values()):
        rel = path.relative_to(src).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit and rel not in exceptions:
            report.long_files.append(f"{path.relative_to(src.parent.parent).as_posix()}: {lines} lines (limit {limit}): split it by concern")


def check(src: Path = SRC, table: Mapping[str, tuple[str, ...]] = TABLE,
          never: Mapping[str, tuple[str, ...]] = NEVER, line_limit: int = LINE_LIMIT,
          exceptions: Mapping[str, str] = LONG_FILE_EXCEPTIONS) -> Report:
    """Check the dlforge tree at ``src``; the arguments default to this script's rules.

    Example:
        >>> check(Path("src/dlforge")).violations
        []
    """
    if not (src / "__init__.py").is_file():
        raise FileNotFoundError(f"{src} is not the dlforge package folder (no __init__.py); "
                                "pass the path of src/dlforge")
    known, edges = _edges(src)
    report = Report()
    _check_table(known, edges, table, report)
    _check_never(edges, never, report)
    _check_cycles(edges, report)
    _check_lengths(src, known, line_limit, exceptions, report)
    return report


def main(argv: list[str]) -> int:
    """Print the graph (unless ``--quiet``) and every problem; 1 if there is any, else 0.

    ``--src PATH`` checks another dlforge folder (tests point it at a small fake tree).
    """
    src = Path(argv[argv.index("--src") + 1]) if "--src" in argv else SRC
    report = check(src)
    if "--quiet" not in argv:
        print("dlforge package graph (unit -> the units it imports):")
        for unit in sorted(report.graph):
            print(f"  {unit} -> {', '.join(sorted(report.graph[unit]))}")
    for title, lines in (("layering violations", report.violations), ("import cycles", report.cycles),
                         (f"files over {LINE_LIMIT} lines", report.long_files)):
        if lines:
            print(f"{title} ({len(lines)}):")
            print("\n".join(f"  {line}" for line in lines))
    print("structure: ok" if not report.problems else f"structure: {len(report.problems)} problem(s)")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
