"""Reading a run directory for its report: the history, the optional JSON files, and the
training facts an artifact's ``model.json`` records. Every reader names the file and the fix
when it is missing or unreadable (a run cut off mid-write, a hand-edited file).

Example:
    >>> read_json(Path("no/such/evaluation.json")) is None
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlforge.errors import ConfigError
from dlforge.user_files import read_text_file


def required(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path} not found: a report needs the run's {what}",
                          hint="point write_report at a run directory written by `dlforge train` (or train_run)")
    return path


def read_text(path: Path, what: str) -> str:
    return read_text_file(required(path, what), what)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``history.jsonl`` file, in order.

    Example:
        >>> read_history("runs/demo/history.jsonl")[0]["type"]  # doctest: +SKIP
        'step'
    """
    path = Path(path)
    records = []
    for i, line in enumerate(read_text(path, "training history").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} line {i} is not valid JSON ({err.msg})",
                              hint="the run may have been cut off mid-write; resume or retrain it") from err
    return records


def read_json(path: Path) -> Any | None:
    """An optional JSON file: ``None`` when absent, a clear error when unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(read_text_file(path, "run file"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})",
                          hint="rewrite or delete the file and render the report again") from err


def run_info_from_artifact(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    training = meta.get("training") or {}
    info = {k: training[k] for k in ("epochs_run", "stop_reason", "best_epoch", "steps", "class_counts",
                                      "resampling", "imbalance_note") if k in training}
    if "data" in training:
        info["data"] = training["data"]
    for key in ("task", "arch", "metrics"):
        if key in meta:
            info[key] = meta[key]
    return info
