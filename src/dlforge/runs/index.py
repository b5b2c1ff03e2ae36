"""The run index: every run directory under a runs folder as one :class:`RunRecord`.

A record holds what a user compares runs by: name, start time, a hash of the config and
the config itself as dotted keys, the data fingerprint and code version (from ``run.json``,
see :mod:`dlforge.pipeline.run_meta`), status, the run's reported metrics (``metrics.json``),
the last epoch's and the best epoch's numbers (``history.jsonl``) and, when a registry is
configured, the registry versions made from it.

The index is a cache, ``<runs>/.index.json``: :meth:`RunIndex.refresh` re-reads only the runs
whose files changed (size or mtime), drops folders that are gone, and rebuilds everything
when the cache is missing or unreadable. Training never reads it.

Runs are the folders directly under the runs folder that hold ``config.yaml`` or
``run.json``, and the trial runs a tuning study keeps in ``<runs>/<study>-trials/`` (named
``<study>-trials/<run>``, with ``study`` set). ``<study>-tune/`` folders are a study's outputs
(``trials.json``, ``report.html``), not runs.

Example:
    >>> index = RunIndex("runs")  # doctest: +SKIP
    >>> [(r.name, r.status) for r in index.records()]  # doctest: +SKIP
    [('iris-20240101-120000', 'finished')]
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dlforge.config import flat_config
from dlforge.errors import ConfigError
from dlforge.pipeline.run_meta import read_run_file
from dlforge.train.callbacks import higher_is_better
from dlforge.train.state_io import atomic_write
from dlforge.user_files import read_yaml

INDEX_FILE = ".index.json"
CACHE_VERSION = 1
STALE_AFTER_S = 30 * 60  # a run whose files have not changed for this long, and whose process we cannot see, stopped
# The files a record is read from: any change in their size or mtime re-reads the run.
WATCHED = ("run.json", "config.yaml", "metrics.json", "history.jsonl", "nan_report.json", "diagnosis.json",
           "model/model.json", "checkpoints")
STATUSES = ("running", "finished", "diverged", "stopped")


@dataclass
class RunRecord:
    """One run directory, as the index sees it (``name`` is relative to the runs folder)."""

    name: str
    path: str
    started: str | None = None
    finished: str | None = None
    config_hash: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # dotted keys: {"optim.lr": 0.01, ...}
    data_fingerprint: str | None = None
    code_version: str | None = None
    status: str = "running"
    stop_reason: str | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None  # 1-based, as the progress bar and report print it
    metrics: dict[str, float] = field(default_factory=dict)  # metrics.json: val_* of the kept epoch, test_*
    final: dict[str, float] = field(default_factory=dict)  # the last epoch's train_*/val_* numbers
    best: dict[str, float] = field(default_factory=dict)  # each epoch metric's best value over the epochs
    study: str | None = None  # the tuning study whose trial this run is
    registry: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "version"}]: filled on request
    last_write: float = 0.0  # newest mtime of the watched files (status inference)
    host: str | None = None
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (values are shared, not copied: the fields are plain data)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def value(self, key: str) -> Any:
        """A metric (``metrics.json``, else the last epoch), ``best.<metric>``, ``final.<metric>``,
        a record field (``status``, ``name``...) or a dotted config key; KeyError when none."""
        if key in self.metrics:
            return self.metrics[key]
        if key in self.final:
            return self.final[key]
        head, _, rest = key.partition(".")
        if head in ("best", "final") and rest in getattr(self, head):
            return getattr(self, head)[rest]
        if key in self.config:
            return self.config[key]
        if key in _SCALAR_FIELDS:
            return getattr(self, key)
        raise KeyError(key)

    def keys(self) -> set[str]:
        """Every key :meth:`value` answers."""
        return ({*self.metrics, *self.final, *(f"best.{k}" for k in self.best), *(f"final.{k}" for k in self.final),
                 *self.config, *_SCALAR_FIELDS})


_SCALAR_FIELDS = ("name", "status", "started", "finished", "config_hash", "data_fingerprint", "code_version",
                  "stop_reason", "epochs_run", "best_epoch", "study")


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def epoch_records(path: Path) -> list[dict[str, Any]]:
    """The epoch records of ``history.jsonl``; a torn last line (a run killed mid-write) is skipped."""
    out = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if '"epoch"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("type") == "epoch":
                    out.append(record)
    except OSError:
        pass
    return out


def _signature(run_dir: Path) -> list[list[Any]]:
    sig, folder = [], str(run_dir)
    for name in WATCHED:
        try:
            st = os.stat(os.path.join(folder, name))
            sig.append([name, st.st_mtime_ns, st.st_size])
        except OSError:
            continue
    return sig


def read_record(run_dir: Path, name: str, study: str | None = None) -> RunRecord:
    """A :class:`RunRecord` from the files of ``run_dir`` (missing files leave fields empty)."""
    meta = read_run_file(run_dir)
    try:
        raw = read_yaml(run_dir / "config.yaml", "run config") if (run_dir / "config.yaml").is_file() else None
    except Exception:  # noqa: BLE001 (a hand-broken config.yaml: the run is still listed)
        raw = None
    metrics = _read_json(run_dir / "metrics.json")
    model_meta = _read_json(run_dir / "model" / "model.json") or {}
    training = model_meta.get("training") or {} if isinstance(model_meta, dict) else {}
    epochs = epoch_records(run_dir / "history.jsonl")
    numbers = [{k: n for k, v in e.items() if k not in ("epoch", "time", "type") and (n := _number(v)) is not None}
               for e in epochs]
    best: dict[str, float] = {}
    for record in numbers:
        for k, v in record.items():
            if k not in best or (v > best[k] if higher_is_better(k) else v < best[k]):
                best[k] = v
    best_epoch = training.get("best_epoch")
    stamps = [s[1] for s in _signature(run_dir)]
    rec = RunRecord(
        name=name, path=str(run_dir.resolve()), started=meta.get("started"), finished=meta.get("finished"),
        config_hash=config_hash(raw) if raw is not None else None,
        config=flat_config(raw) if isinstance(raw, dict) else {}, data_fingerprint=meta.get("data_fingerprint"),
        code_version=meta.get("code_version"), stop_reason=meta.get("stop_reason", training.get("stop_reason")),
        epochs_run=next((n for n in (meta.get("epochs_run"), training.get("epochs_run")) if n is not None),
                        len(epochs) or None),
        best_epoch=best_epoch + 1 if isinstance(best_epoch, int) else None,
        metrics={k: v for k, v in (metrics or {}).items() if _number(v) is not None},
        final=numbers[-1] if numbers else {}, best=best, study=study,
        last_write=max(stamps) / 1e9 if stamps else run_dir.stat().st_mtime, host=meta.get("host"), pid=meta.get("pid"),
    )
    if rec.started is None:  # an older run: the folder's time stamp
        rec.started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run_dir.stat().st_mtime))
    rec.status = _file_status(run_dir, meta, metrics is not None, training, epochs)
    return rec


def _file_status(run_dir: Path, meta: dict[str, Any], has_metrics: bool, training: dict[str, Any],
                 epochs: list[dict[str, Any]]) -> str:
    """What the files say, before the clock is asked (``running`` may turn into ``stopped``)."""
    if meta.get("status") in ("finished", "diverged", "stopped"):
        return meta["status"]
    if has_metrics:  # the last file a run writes; run.json may predate this index
        diverged = ((run_dir / "nan_report.json").is_file() or training.get("stop_reason") == "non_finite"
                    or meta.get("stop_reason") == "non_finite")
        return "diverged" if diverged else "finished"
    return "running"


def _alive(rec: RunRecord, now: float) -> bool:
    """Whether a run that has not finished is still being trained."""
    if rec.pid and rec.host == socket.gethostname():
        try:
            os.kill(int(rec.pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OSError, ValueError):
            pass
    return now - rec.last_write < STALE_AFTER_S


class RunIndex:
    """The runs under ``runs_dir``, cached in ``runs_dir/.index.json``.

    ``reads`` counts the runs read from their files by the last :meth:`refresh` (the rest
    came from the cache).

    Example:
        >>> import tempfile
        >>> RunIndex(tempfile.mkdtemp()).records()
        []
    """

    def __init__(self, runs_dir: str | Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.cache_path = self.runs_dir / INDEX_FILE
        self.reads = 0

    def _folders(self) -> list[tuple[str, Path, str | None]]:
        found = []
        for d in sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (d / "config.yaml").is_file() or (d / "run.json").is_file():
                found.append((d.name, d, None))
            elif d.name.endswith("-trials"):
                study = d.name[: -len("-trials")]
                found += [(f"{d.name}/{t.name}", t, study) for t in sorted(d.iterdir())
                          if t.is_dir() and ((t / "config.yaml").is_file() or (t / "run.json").is_file())]
        return found

    def _load_cache(self) -> dict[str, Any]:
        cache = _read_json(self.cache_path)
        if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION or not isinstance(cache.get("runs"), dict):
            return {}
        return cache["runs"]

    def refresh(self) -> list[RunRecord]:
        """Bring the cache up to date with the folders and return every record, oldest first."""
        self.reads = 0
        if not self.runs_dir.is_dir():
            return []
        cached, entries, records = self._load_cache(), {}, []
        for name, path, study in self._folders():
            sig = _signature(path)
            hit = cached.get(name)
            rec = None
            if hit and hit.get("signature") == sig:
                try:
                    rec = RunRecord(**hit["record"])
                    entries[name] = hit
                except TypeError:  # a cache from another version of the record
                    rec = None
            if rec is None:
                rec = read_record(path, name, study)
                self.reads += 1
                entries[name] = {"signature": sig, "record": rec.to_dict()}
            records.append(rec)
        if self.reads or set(entries) != set(cached):
            try:
                atomic_write(self.cache_path, json.dumps({"version": CACHE_VERSION, "runs": entries}).encode())
            except OSError:  # a read-only runs folder: list without caching
                pass
        now = time.time()
        for rec in records:
            if rec.status == "running" and not _alive(rec, now):
                rec.status = "stopped"
        return sorted(records, key=lambda r: (r.started or "", r.name))

    def records(self) -> list[RunRecord]:
        """Every run, oldest first (the cache refreshed first)."""
        return self.refresh()

    def get(self, run: str | Path, records: list[RunRecord] | None = None) -> RunRecord:
        """The run ``run`` names: its name under the runs folder, its folder's name, or its path."""
        records = self.records() if records is None else records
        text = str(run).rstrip("/")
        path = Path(text).resolve()
        for rec in records:
            if text in (rec.name, Path(rec.name).name) or Path(rec.path) == path:
                return rec
        if path.is_dir() and ((path / "config.yaml").is_file() or (path / "run.json").is_file()):
            rec = read_record(path, path.name)  # a run folder outside the runs folder
            if rec.status == "running" and not _alive(rec, time.time()):
                rec.status = "stopped"
            return rec
        names = [r.name for r in records]
        close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
        raise ConfigError(f"no run {text!r} in {self.runs_dir}",
                          hint=f"did you mean {', '.join(close)}?" if close else
                          ("`dlforge runs list` shows the runs there" if names else
                           f"{self.runs_dir} holds no runs: train one with `dlforge train CONFIG.yaml`, "
                           "or pass --runs-dir"))


def registry_url(url: str | None = None) -> str | None:
    """The registry to link runs to: ``url``, else ``$DLFORGE_REGISTRY``, else the default
    ``registry/registry.db`` when that file exists; None when no registry is configured."""
    from dlforge.registry.store import DEFAULT_URL

    if url or os.environ.get("DLFORGE_REGISTRY"):
        return url or os.environ["DLFORGE_REGISTRY"]
    default = Path(DEFAULT_URL.removeprefix("sqlite:///"))
    return DEFAULT_URL if default.is_file() else None


def attach_registry(records: list[RunRecord], url: str | None = None) -> list[RunRecord]:
    """Fill each record's ``registry`` with the versions whose ``metadata["run"]`` is the run's
    folder name. No registry configured, or one that cannot be read: left empty, no error.

    Example:
        >>> attach_registry([RunRecord(name="a", path="/a")], url="sqlite://")[0].registry
        []
    """
    for rec in records:
        rec.registry = []
    url = registry_url(url)
    if url is None or not records:
        return records
    by_folder: dict[str, list[dict[str, Any]]] = {}
    try:
        from dlforge.registry.store import Registry

        with Registry(url) as reg:
            for model in reg.models():
                for v in reg.versions(model["name"]):
                    run = (v.metadata or {}).get("run")
                    if run:
                        by_folder.setdefault(Path(str(run)).name, []).append(
                            {"name": v.name, "version": v.version, "created": v.created})
    except Exception:  # noqa: BLE001 (an unreachable or foreign database: the runs list without links)
        return records
    for rec in records:
        rec.registry = by_folder.get(Path(rec.name).name, [])
    return records
