"""Admin routes: upload a version, delete one, move aliases, roll back, set A/B traffic.

Every route needs an admin key. Each change goes to the registry (in a worker thread: it
may be PostgreSQL) and then ``pool.refresh(force=True)`` runs before the reply, so a 2xx
answer means the change is live on this replica; other replicas notice it through the
registry's revision counter within their poll interval.

Example:
    >>> import httpx
    >>> def upload(base: str, key: str, archive: bytes) -> dict:  # doctest: +SKIP
    ...     r = httpx.post(f"{base}/v1/models/iris/versions?alias=candidate", content=archive,
    ...                    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/gzip"})
    ...     return r.json()
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from dlforge.errors import DlforgeError
from dlforge.registry.artifact import load_artifact
from dlforge.registry.disk import full_disk_as_storage_error
from dlforge.registry.names import validate_name
from dlforge.registry.store import ModelVersion, Registry
from dlforge.registry.validate import check_artifact
from dlforge.serve.dependencies import NAME_PATTERN, model_name, require_admin_key
from dlforge.serve.errors import ApiError, error_responses
from dlforge.serve.inputs import InputSpec
from dlforge.serve.routing import TrafficConfig
from dlforge.serve.schemas import VersionInfo
from dlforge.serve.upload import UploadError, extract_artifact_tar

MAX_VERSION = 2**31 - 1  # database integer columns; larger numbers are simply unknown versions
log = logging.getLogger("dlforge.serve")

router = APIRouter(prefix="/v1/models", tags=["admin"], dependencies=[Depends(require_admin_key)],
                   responses=error_responses(400, 401, 403, 404, 422))

Name = Annotated[str, Depends(model_name)]
AliasParam = Annotated[str, PathParam(description="an alias: letters, digits, '.', '_', '-'",
                                      pattern=NAME_PATTERN, max_length=128)]


class AdminVersion(VersionInfo):
    """A version as registered: VersionInfo plus its model's name."""

    name: str


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_VERSION, description="the version the alias should point at")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field(pattern=NAME_PATTERN, max_length=128, description="the alias to move back")


class AliasChange(BaseModel):
    """Where an alias points now, and where it pointed before (None: it is new)."""

    name: str
    alias: str
    version: int
    previous: int | None = None


class Deleted(BaseModel):
    name: str
    version: int
    deleted: bool = True


class TrafficState(BaseModel):
    """A model's A/B traffic split (None: no split; requests go to "production" or the latest version)."""

    name: str
    traffic: TrafficConfig | None = None


def _version_out(mv: ModelVersion, aliases: dict[str, int], loaded: bool) -> AdminVersion:
    meta: dict[str, Any] = mv.metadata or {}
    return AdminVersion(name=mv.name, version=mv.version, created=mv.created, sha256=mv.sha256,
                        task=meta.get("task"), arch=meta.get("arch"), class_names=meta.get("class_names"),
                        input_signature=meta.get("input_signature"), metrics=mv.metrics,
                        aliases=sorted(a for a, v in aliases.items() if v == mv.version), loaded=loaded,
                        run=mv.run)


def _check_loadable(folder: Path) -> None:
    """Refuse an artifact the server could not serve (check_artifact: sizes, finite weights and
    statistics, class names, a smoke prediction), before anything is registered."""
    try:
        check_artifact(folder)
        InputSpec.of(load_artifact(folder))
    except Exception as exc:  # any failure here means "not a usable artifact"
        def scrub(text: str) -> str:  # no host paths in the reply
            return text.replace(str(folder) + "/", "").replace(str(folder), "the archive")

        if not isinstance(exc, DlforgeError):  # the client gets no class name or traceback; the log does
            log.warning("an uploaded artifact failed to load", exc_info=exc)
        reason = exc.message if isinstance(exc, DlforgeError) else "its model.json or weights are malformed"
        hint = exc.hint if isinstance(exc, DlforgeError) and exc.hint else \
            "upload a folder written by save_artifact or `dlforge train` (its model/ folder)"
        raise UploadError(f"the uploaded artifact cannot be loaded: {scrub(reason)}", hint=scrub(hint)) from None


def _register(registry: Registry, archive: Path, work: Path, name: str, alias: str | None,
              max_bytes: int) -> tuple[ModelVersion, dict[str, int]]:
    """Extract, check, register and optionally alias (runs in a worker thread)."""
    with archive.open("rb") as f:
        folder = extract_artifact_tar(f, work, max_bytes=max_bytes)
    _check_loadable(folder)
    mv = registry.register(folder, name)
    if alias is not None:
        registry.set_alias(name, alias, mv.version)
    return mv, registry.aliases(name)


async def _receive(request: Request, archive: Path) -> Path:
    """Write the request body to ``archive``; 400 when it is empty."""
    size = 0
    with archive.open("wb") as f:
        async for chunk in request.stream():  # the middleware caps the total at max_upload_bytes
            size += len(chunk)
            f.write(chunk)
    if size == 0:
        raise ApiError(400, "empty_body", "the upload is empty",
                       hint="send the tar.gz as the request body with Content-Type: application/gzip")
    return archive


@router.post(
    "/{name}/versions", status_code=201, response_model=AdminVersion,
    summary="Upload a model artifact (tar.gz) as a new version",
    responses=error_responses(413, 415, 507),
    openapi_extra={"requestBody": {"required": True, "description": (
        "a gzip tar of an artifact folder (model.json + model.safetensors, at the top level or inside one "
        "folder), e.g. `tar -czf model.tar.gz -C runs/iris model`"),
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def upload_version(
    request: Request, name: Name,
    alias: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=128,
                                       description="also point this alias at the new version")] = None,
) -> AdminVersion:
    """Register the uploaded artifact as the next version of ``name``; 201 with the version."""
    if alias is not None:
        alias = validate_name(alias, "alias")  # before the upload is read: a bad alias registers nothing
    registry, settings = request.app.state.registry, request.app.state.settings
    # 507 on a full disk; the scratch folder is under the artifacts folder, so a restart after
    # a crash mid-upload removes it (see dlforge.registry.disk)
    with full_disk_as_storage_error("receiving the upload", hint="free some space on the server's artifacts disk "
                                                                 "(or raise its quota) and upload again"):
        scratch = await run_in_threadpool(registry.upload_folder)
        try:
            archive = await _receive(request, scratch.path / "upload.tar.gz")
            mv, aliases = await run_in_threadpool(_register, registry, archive, scratch.path / "artifact", name,
                                                  alias, settings.max_upload_bytes)
        finally:
            await run_in_threadpool(scratch.remove)
    pool = request.app.state.pool
    await pool.refresh(force=True)
    return _version_out(mv, aliases, loaded=mv.version in pool.loaded(name))


@router.delete("/{name}/versions/{version}", response_model=Deleted, responses=error_responses(409),
               summary="Delete a version no alias points at")
async def delete_version(request: Request, name: Name,
                         version: Annotated[int, PathParam(ge=1, le=MAX_VERSION)]) -> Deleted:
    """Delete version ``version`` of ``name`` (409 while an alias points at it)."""
    await run_in_threadpool(request.app.state.registry.delete, name, version)
    await request.app.state.pool.refresh(force=True)
    return Deleted(name=name, version=version)


@router.put("/{name}/aliases/{alias}", response_model=AliasChange, responses=error_responses(409),
            summary="Point an alias at a version")
async def set_alias(request: Request, name: Name, alias: AliasParam, body: AliasRequest) -> AliasChange:
    """Create or move ``alias``; the reply says where it pointed before."""
    alias = validate_name(alias, "alias")
    previous = await run_in_threadpool(request.app.state.registry.set_alias, name, alias, body.version)
    await request.app.state.pool.refresh(force=True)
    return AliasChange(name=name, alias=alias, version=body.version, previous=previous)


@router.post("/{name}/rollback", response_model=AliasChange, responses=error_responses(409),
             summary="Move an alias back to its previous version")
async def rollback(request: Request, name: Name, body: RollbackRequest) -> AliasChange:
    """Undo the last move of ``body.alias``."""
    alias, registry = validate_name(body.alias, "alias"), request.app.state.registry

    def apply() -> tuple[int | None, int]:
        before = registry.aliases(name).get(alias)
        return before, registry.rollback(name, alias)

    before, version = await run_in_threadpool(apply)
    await request.app.state.pool.refresh(force=True)
    return AliasChange(name=name, alias=alias, version=version, previous=before)


def _store_traffic(registry: Registry, name: str, config: TrafficConfig) -> None:
    """Store ``config`` once every alias in it (the shadow too) exists (runs in a worker thread)."""
    registry.versions(name)  # NotFoundError (404) for an unknown model
    aliases = registry.aliases(name)
    named = [(f"body.variants.{i}.alias", v.alias) for i, v in enumerate(config.variants)]
    named += [("body.shadow", config.shadow)] if config.shadow else []
    missing = [(path, alias) for path, alias in named if alias not in aliases]
    if missing:
        raise ApiError(422, "validation_error",
                       f"model {name!r} has no alias " + ", ".join(repr(a) for _, a in missing),
                       hint=f"set it first with PUT /v1/models/{name}/aliases/<alias>; "
                            f"existing aliases: {', '.join(sorted(aliases)) or 'none'}",
                       fields=[{"path": path, "message": f"unknown alias {alias!r}", "type": "unknown_alias"}
                               for path, alias in missing])
    registry.set_traffic(name, config.model_dump(mode="json"))


@router.put("/{name}/traffic", response_model=TrafficState, summary="Split traffic between aliases (A/B test)")
async def set_traffic(request: Request, name: Name, config: TrafficConfig) -> TrafficState:
    """Store the traffic split; every alias in it (the shadow too) must exist (422 otherwise)."""
    await run_in_threadpool(_store_traffic, request.app.state.registry, name, config)
    await request.app.state.pool.refresh(force=True)
    return TrafficState(name=name, traffic=config)


@router.delete("/{name}/traffic", response_model=TrafficState, summary="Stop splitting traffic")
async def clear_traffic(request: Request, name: Name) -> TrafficState:
    """Remove the traffic split of ``name``."""
    registry = request.app.state.registry

    def apply() -> None:
        registry.versions(name)  # NotFoundError (404) for an unknown model
        registry.set_traffic(name, None)

    await run_in_threadpool(apply)
    await request.app.state.pool.refresh(force=True)
    return TrafficState(name=name)
