"""Save and load nested training state as one safetensors file, atomically.

A checkpoint holds tensors (weights, optimizer moments, RNG states) inside nested dicts
and lists of plain values (step counters, the history, scheduler settings). The tensors go
into the safetensors payload; the nesting and plain values go into its JSON metadata with
``{"__tensor__": key}`` placeholders. Loading never unpickles anything.

Example:
    >>> import torch, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.safetensors"
    >>> save_state(path, {"step": 3, "w": torch.ones(2), "groups": {0: {"lr": 0.1}}})
    >>> load_state(path)["groups"][0]["lr"]
    0.1
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

_META_KEY = "dlforge_state"
_PLAIN = (int, float, bool, str, type(None))


def _split(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in ``obj`` by a placeholder and collect it in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(type(k) is str and type(v) in _PLAIN for k, v in obj.items()):
            return dict(obj)  # fast path: history records are flat dicts of numbers
        # Optimizer state is keyed by int parameter ids; JSON keys are strings, so tag them.
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        body = {str(k): _split(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {"__intkeys__": body} if int_keys else body
    if isinstance(obj, (list, tuple)):
        if all(type(v) in _PLAIN for v in obj):
            return list(obj)  # fast path: RNG states are lists of hundreds of ints
        return [_split(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__intkeys__"}:
            return {int(k): _join(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def pack_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Copy ``state`` into (CPU tensors, JSON skeleton): a snapshot later training steps
    cannot change, cheap enough to take on the training thread."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors, "s")
    return tensors, json.dumps(skeleton)


def packed_to_bytes(tensors: dict[str, torch.Tensor], skeleton: str) -> bytes:
    """Safetensors bytes of a packed state (safe to run on a background thread)."""
    return st_save(tensors, metadata={_META_KEY: skeleton})


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise nested state to safetensors bytes (tensors + JSON skeleton)."""
    return packed_to_bytes(*pack_state(state))


def state_from_bytes(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`state_to_bytes`; tensors come back on the CPU."""
    tensors = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    if _META_KEY not in meta:
        raise ValueError("not a dlforge state file (no dlforge_state metadata)")
    return _join(json.loads(meta[_META_KEY]), tensors)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either the old file or the complete new one.

    Temp file in the same directory, fsync, rename, then fsync the directory so the
    rename itself survives a crash.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write nested ``state`` to ``path`` as safetensors."""
    atomic_write(path, state_to_bytes(state))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state`."""
    return state_from_bytes(Path(path).read_bytes())
