"""What the registry holds and what this server has loaded: GET /v1/models and /v1/models/{name}.

Storage paths are never shown; a version is named by its number and content hash.

Example::

    GET /v1/models       -> [{"name": "iris", "latest_version": 2, "versions": 2,
                              "aliases": {"production": 1, "candidate": 2}, "loaded_versions": [1, 2],
                              "unhealthy": [], ...}]
    GET /v1/models/iris  -> {"name": "iris", "served_version": 1, "served_run": "iris-20240101-120000",
                             "versions": [{"version": 1, "sha256": "...", "metrics": {...},
                              "input_signature": {"shape": [null, 4], "dtype": "float32"},
                              "inputs": {"kind": "table", "columns": [...], "example": {"inputs": [...]}},
                              "loaded": true, "run": "iris-20240101-120000"}, ...]}
    GET /v1/models/iris/versions/1 -> the first of those versions
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from dlforge.errors import NotFoundError
from dlforge.registry.artifact import META_FILE
from dlforge.registry.store import ModelVersion, Registry
from dlforge.serve.dependencies import get_pool, get_registry, model_name, require_predict_key
from dlforge.serve.describe import describe_inputs
from dlforge.serve.pool import LoadedModel, ModelPool
from dlforge.serve.routing import TrafficConfig
from dlforge.serve.schemas import ModelDetail, ModelSummary, VersionInfo, error_responses

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_predict_key)])


class UnhealthyVersion(BaseModel):
    """A version this server could not load: requests routed to it answer 503 with ``reason``."""

    version: int
    reason: str


class ServedModel(ModelSummary):
    """ModelSummary plus the versions that failed to load here."""

    unhealthy: list[UnhealthyVersion] = Field(default_factory=list)


@router.get("", response_model=list[ServedModel], responses=error_responses(401))
def list_models(registry: Registry = Depends(get_registry), pool: ModelPool = Depends(get_pool)) -> list[ServedModel]:
    """Every registered model with its latest version, aliases, the versions loaded here and
    those that failed to load (``unhealthy``, with the reason)."""
    return [
        ServedModel(name=m["name"], latest_version=m["latest_version"], versions=m["versions"],
                    aliases=m["aliases"], created=m.get("created"), loaded_versions=sorted(pool.loaded(m["name"])),
                    unhealthy=[UnhealthyVersion(version=v, reason=why)
                               for v, why in sorted(pool.unhealthy(m["name"]).items())])
        for m in registry.models()
    ]


@router.get("/{name}", response_model=ModelDetail, responses=error_responses(400, 401, 404))
def model_detail(name: str = Depends(model_name), registry: Registry = Depends(get_registry),
                 pool: ModelPool = Depends(get_pool)) -> ModelDetail:
    """One model's versions (metrics, creation time, hash, task, input signature, the inputs a client
    sends with an example body, the run that wrote it), aliases, traffic split and the version
    (and run) that answers a request naming none."""
    versions = registry.versions(name)  # NotFoundError -> 404
    aliases = registry.aliases(name)
    traffic = registry.traffic(name)
    loaded = pool.loaded(name)
    served = None if traffic is not None else registry.get(name)  # production, else the latest
    return ModelDetail(
        name=name,
        latest_version=versions[-1].version,
        aliases=aliases,
        traffic=None if traffic is None else TrafficConfig.model_validate(traffic),
        served_version=None if served is None else served.version,
        served_run=None if served is None else served.run,
        versions=[_version_info(mv, aliases, loaded) for mv in versions],
    )


@router.get("/{name}/versions/{version}", response_model=VersionInfo, responses=error_responses(400, 401, 404))
def version_detail(name: str = Depends(model_name), version: int = Path(ge=1),
                   registry: Registry = Depends(get_registry), pool: ModelPool = Depends(get_pool)) -> VersionInfo:
    """One version: metrics, hash, task, input signature and the inputs a client sends, with an example body."""
    for mv in registry.versions(name):  # NotFoundError -> 404
        if mv.version == version:
            return _version_info(mv, registry.aliases(name), pool.loaded(name))
    raise NotFoundError(f"model {name!r} has no version {version}", hint=f"GET /v1/models/{name} lists its versions")


def _version_info(mv: ModelVersion, aliases: dict[str, int], loaded: dict[int, LoadedModel]) -> VersionInfo:
    return VersionInfo(version=mv.version, created=mv.created, sha256=mv.sha256, task=mv.metadata.get("task"),
                       arch=mv.metadata.get("arch"), class_names=mv.metadata.get("class_names"),
                       input_signature=mv.metadata.get("input_signature"), inputs=_inputs(mv, loaded),
                       metrics={k: float(v) for k, v in mv.metrics.items() if isinstance(v, (int, float))},
                       aliases=sorted(a for a, v in aliases.items() if v == mv.version),
                       loaded=mv.version in loaded, run=mv.run)


def _inputs(mv: ModelVersion, loaded: dict[int, LoadedModel]) -> dict[str, Any] | None:
    """The inputs description from the loaded artifact, else from the stored model.json (None if unreadable)."""
    if mv.version in loaded:
        return describe_inputs(loaded[mv.version].artifact.meta)
    try:
        return describe_inputs(json.loads((mv.path / META_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
