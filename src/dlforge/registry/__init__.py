"""Model artifacts and the versioned model store.

The names load on first use, so ``dlforge registry ...`` and ``dlforge keys ...`` do not
pay for importing torch unless they need it.

Example:
    >>> from dlforge.registry import Registry, check_artifact, load_artifact, save_artifact
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Artifact": "dlforge.registry.artifact",
    "check_artifact": "dlforge.registry.validate",
    "load_artifact": "dlforge.registry.artifact",
    "save_artifact": "dlforge.registry.artifact",
    "ModelVersion": "dlforge.registry.versions",
    "Registry": "dlforge.registry.store",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
