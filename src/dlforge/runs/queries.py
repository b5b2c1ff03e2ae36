"""What the ``dlforge runs`` commands do, without a terminal: list, show and compare runs.

Example:
    >>> import tempfile
    >>> list_runs(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    dlforge.errors.ConfigError: no runs in ... (train one with `dlforge train CONFIG.yaml`, or pass --runs-dir)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dlforge.errors import ConfigError
from dlforge.runs.compare import expand, write_compare
from dlforge.runs.filter import select, sort_records
from dlforge.runs.index import RunIndex, RunRecord, attach_registry


def _index(runs_dir: str | Path) -> tuple[RunIndex, list[RunRecord]]:
    index = RunIndex(runs_dir)
    records = index.records()
    if not records:
        raise ConfigError(f"no runs in {index.runs_dir}",
                          hint="train one with `dlforge train CONFIG.yaml`, or pass --runs-dir")
    return index, records


def list_runs(runs_dir: str | Path = "runs", *, where: str | None = None, sort: str | None = None,
              registry: str | None = None) -> list[RunRecord]:
    """The runs under ``runs_dir`` that match ``where`` (a :mod:`~dlforge.runs.filter`
    expression), sorted by ``sort`` (``-key``: descending; default: oldest first), with the
    registry versions made from each when a registry is configured."""
    _, records = _index(runs_dir)
    return attach_registry(sort_records(select(records, where), sort), registry)


def show_run(runs_dir: str | Path, run: str | Path, *, registry: str | None = None) -> RunRecord:
    """One run's record: ``run`` is its name under ``runs_dir``, its folder's name, or its path."""
    index = RunIndex(runs_dir)
    return attach_registry([index.get(run)], registry)[0]


def compare_runs(runs_dir: str | Path, runs: Sequence[str], out: str | Path) -> tuple[Path, list[RunRecord]]:
    """Write the compare page of ``runs`` (runs or a tuning study) to ``out``."""
    index = RunIndex(runs_dir)
    records, study = expand(index, runs)
    if len(records) < 2 and study is None:
        raise ConfigError(f"compare needs two or more runs, got {len(records)}",
                          hint="name more runs, or a tuning study (`dlforge runs list` shows them)")
    return write_compare(records, out, study=study, runs_dir=index.runs_dir), records
