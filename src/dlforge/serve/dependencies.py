"""Shared FastAPI dependencies: the app's registry, pool, metrics and prediction service, and the API-key checks.

Keys travel as ``Authorization: Bearer dlf_...``. ``HTTPBearer`` makes the OpenAPI document
declare the scheme; ``auto_error=False`` lets us answer in the server's own error shape.
A key is checked against the registry (which stores only its sha256) and the answer is
cached for a few seconds, so a busy predict route does not hit the database per request;
a revoked key therefore stops working within ``KEY_CACHE_SECONDS``. When the cached answer
expires under load, the requests that arrive before the database answers share one lookup
(:meth:`KeyCache.role`), instead of one lookup each.

Example:
    >>> from fastapi import APIRouter, Depends
    >>> router = APIRouter(dependencies=[Depends(require_admin_key)])
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Path, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dlforge.registry.names import validate_name
from dlforge.serve.errors import ApiError
from dlforge.serve.service import PredictionService

if TYPE_CHECKING:  # imported for annotations only: the app wires the real objects in its lifespan
    from dlforge.registry.store import Registry
    from dlforge.serve.monitor import Metrics
    from dlforge.serve.pool import ModelPool

KEY_CACHE_SECONDS = 5.0
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

bearer = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="An API key from `dlforge keys create` (predict) or `--admin`.")


async def get_registry(request: Request) -> Registry:
    """The app's Registry (``app.state.registry``)."""
    return request.app.state.registry


async def get_pool(request: Request) -> ModelPool:
    """The app's ModelPool (``app.state.pool``)."""
    return request.app.state.pool


async def get_metrics(request: Request) -> Metrics:
    """The app's Metrics (``app.state.metrics``)."""
    return request.app.state.metrics


async def get_service(request: Request) -> PredictionService:
    """The app's PredictionService over its pool (made on first use, and again for a new pool)."""
    state = request.app.state
    service = getattr(state, "service", None)
    if service is None or service.pool is not state.pool:  # each lifespan makes a new pool
        service = state.service = PredictionService(state.pool)
    return service


async def model_name(name: Annotated[str, Path(description="A model name: letters, digits, '.', '_', '-'.",
                                         pattern=NAME_PATTERN, max_length=128)]) -> str:
    """The ``{name}`` path parameter, URL-decoded and validated (RegistryError -> 400).

    The dependencies here are ``async def``: FastAPI runs a plain ``def`` dependency in
    its thread pool, a thread hop per request that cost a quarter of the throughput of a
    small model (benchmarks/serving.py).

    Example:
        >>> import asyncio
        >>> asyncio.run(model_name("iris%2Dmlp"))
        'iris-mlp'
    """
    return validate_name(name, "model name")


class KeyCache:
    """Roles of recently seen keys for ``ttl`` seconds, keyed by the key's sha256.

    Example:
        >>> cache = KeyCache(ttl=5.0)
        >>> cache.put("dlf_x", "admin", now=0.0); cache.get("dlf_x", now=1.0)
        'admin'
        >>> cache.get("dlf_x", now=6.0) is None
        True
    """

    def __init__(self, ttl: float = KEY_CACHE_SECONDS, max_entries: int = 4096) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._roles: dict[str, tuple[str, float]] = {}  # digest -> (role or "", expiry)
        self._lookups: dict[str, asyncio.Future] = {}  # digest -> the lookup in flight
        self._generation = 0  # bumped by clear(): a lookup begun before a change is not cached

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str, now: float | None = None) -> str | None:
        """The cached role ("admin", "predict", "" for unknown), or None when not cached."""
        hit = self._roles.get(self._digest(key))
        if hit is None or hit[1] <= (time.monotonic() if now is None else now):
            return None
        return hit[0]

    def put(self, key: str, role: str | None, now: float | None = None) -> None:
        if len(self._roles) >= self.max_entries:  # bounded: random keys from a scanner must not grow it
            self._roles.clear()
        self._roles[self._digest(key)] = (role or "", (time.monotonic() if now is None else now) + self.ttl)

    def clear(self) -> None:
        self._roles.clear()
        self._lookups = {}  # requests from now on look up afresh
        self._generation += 1

    async def role(self, key: str, lookup: Callable[[str], Awaitable[str | None]]) -> str:
        """The role of ``key``: cached, else ``await lookup(key)`` once for every request asking meanwhile.

        Example:
            >>> async def check(key):
            ...     return "predict"
            >>> asyncio.run(KeyCache().role("dlf_x", check))
            'predict'
        """
        role = self.get(key)
        if role is not None:
            return role
        digest = self._digest(key)
        pending = self._lookups.get(digest)
        if pending is None:
            pending = self._lookups[digest] = asyncio.ensure_future(
                self._lookup(key, lookup, self._generation, self._lookups, digest))
        return await asyncio.shield(pending)  # one caller going away does not cancel the others' lookup

    async def _lookup(self, key: str, lookup: Callable[[str], Awaitable[str | None]], generation: int,
                      lookups: dict[str, asyncio.Future], digest: str) -> str:
        try:
            role = await lookup(key) or ""
            if generation == self._generation:
                self.put(key, role)
            return role
        finally:
            lookups.pop(digest, None)


def key_cache_of(app: Any) -> KeyCache:
    """``app``'s KeyCache (created on first use; one per app, so test apps never share one)."""
    cache = getattr(app.state, "key_cache", None)
    if cache is None:
        cache = app.state.key_cache = KeyCache()
    return cache


def key_cache(request: Request) -> KeyCache:
    """The KeyCache of the app serving ``request``."""
    return key_cache_of(request.app)


def _auth_required(request: Request) -> bool:
    settings = getattr(request.app.state, "settings", None)
    return True if settings is None else settings.require_keys


async def _role(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The role of the request's key; ApiError 401 when it has none or an unknown one."""
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "this route needs an API key",
                       hint="send the header 'Authorization: Bearer <key>'; create a key with `dlforge keys create`",
                       headers={"WWW-Authenticate": 'Bearer realm="dlforge"'})
    role = await key_cache(request).role(
        credentials.credentials, lambda key: run_in_threadpool(request.app.state.registry.check_key, key))
    if not role:  # the key itself is never echoed back
        raise ApiError(401, "unauthorized", "the API key is not valid (unknown or revoked)",
                       hint="check the key, or ask an admin for a new one",
                       headers={"WWW-Authenticate": 'Bearer realm="dlforge", error="invalid_token"'})
    return role


async def require_predict_key(request: Request,
                              credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> str:
    """Dependency: a predict or admin key (returns the role; "open" when keys are off).

    Example:
        >>> from fastapi import Depends
        >>> def predict(role: str = Depends(require_predict_key)): ...
    """
    if not _auth_required(request):
        return "open"
    return await _role(request, credentials)


async def require_admin_key(request: Request,
                            credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> str:
    """Dependency: an admin key; 401 without a valid key, 403 for a predict-only key."""
    if not _auth_required(request):
        return "open"
    role = await _role(request, credentials)
    if role != "admin":
        raise ApiError(403, "forbidden", "this route needs an admin key; the key given may only predict",
                       hint="use a key created with `dlforge keys create --admin`")
    return role
