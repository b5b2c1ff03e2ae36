"""The server's guard rails: body limits, content types, path names, request ids.

``install_security(app)`` adds one pure ASGI middleware (it never buffers a body, so
streaming and the tar.gz upload keep working) and the exception handlers, which send the
one error shape of :mod:`dlforge.serve.errors`::

    {"error": {"code": "not_found", "message": "...", "hint": "...", "fields": [...],
               "request_id": "3f2a..."}}

What the middleware refuses before the app sees the request:

- a body over ``settings.max_body_bytes`` (``max_upload_bytes`` on the upload route): 413,
  from ``Content-Length`` at once or, for chunked bodies, as soon as the count passes it;
- a POST/PUT/PATCH body that is not ``application/json`` (the upload route: only
  ``application/gzip``; V2 infer routes: also ``application/octet-stream`` or no type, for
  binary tensor data); pickled bytes in particular are refused unread: 415 (on ``/v2/``
  paths in the protocol's ``{"error": "..."}`` object);
- a ``/v1/models/...`` path whose segments, fully URL-decoded, hold ``..``, a slash, a
  backslash or a control character, or whose model name or alias fails
  ``validate_name``: 400. (Starlette decodes ``%2F`` before routing, so this looks at the
  raw path.)

and while the body is read: a body that has not fully arrived ``settings.body_timeout_s``
after the request head (the upload route: no bytes for that long) is answered 408 with
``Connection: close`` (header and idle timeouts are in ``serve/server.py``).

Every response carries ``X-Request-Id``: an id the server generates (uuid4 hex), the key of
any record kept about the request (quote it in feedback). A client's own ``X-Request-Id``
(1-64 of ``A-Za-z0-9._-``) is only a correlation id: echoed as ``X-Correlation-Id``, logged
with the server's id and stored beside the request's record, never used as a key.

Example:
    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> install_security(app)
    >>> error_body("not_found", "no model 'x'", request_id="r1")
    {'error': {'code': 'not_found', 'message': "no model 'x'", 'request_id': 'r1'}}
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from http import HTTPStatus
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dlforge.errors import DlforgeError
from dlforge.registry.names import validate_name
from dlforge.serve.batching import QueueFullError
from dlforge.serve.errors import MAX_FIELDS, ApiError, error_body, status_of
from dlforge.serve.settings import ServeSettings

logger = logging.getLogger("dlforge.serve")

JSON_TYPES = ("application/json",)
UPLOAD_TYPES = ("application/gzip", "application/x-gzip")
MODELS_PREFIX = "/v1/models/"
_UPLOAD_PATH = re.compile(r"^/v1/models/[^/]+/versions/?$")
# Open Inference Protocol (V2) bodies: JSON, or a JSON header plus binary tensor data (read by
# np.frombuffer, never unpickled); tritonclient sends them with no Content-Type at all.
_V2_INFER = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer/?$")
V2_TYPES = ("application/json", "application/octet-stream", "")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
          500: "internal", 503: "unavailable"}


# ----------------------------------------------------------------------------- request ids
def request_id(request: Request) -> str:
    """The id the server gave this request (a fresh one where the middleware is absent).

    Always a server-generated uuid4 hex, never the client's ``X-Request-Id``: records keyed
    by it (the A/B experiment's) cannot be overwritten by a client choosing the same id.
    """
    rid = request.scope.setdefault("state", {}).get("request_id")
    if rid is None:
        rid = request.scope["state"]["request_id"] = uuid.uuid4().hex
    return rid


def correlation_id(request: Request) -> str | None:
    """The client's own ``X-Request-Id`` when it is usable (1-64 of ``A-Za-z0-9._-``), else None.

    It is only echoed (``X-Correlation-Id``), logged and stored beside records; nothing is keyed by it.
    """
    return request.scope.get("state", {}).get("correlation_id")


def correlation_of(headers: Headers) -> str | None:
    """The correlation id in ``headers`` (REST's headers or gRPC's invocation metadata): the
    client's ``x-request-id`` when it is 1-64 of ``A-Za-z0-9._-``, else None.

    Example:
        >>> correlation_of(Headers({"x-request-id": "trace-1"})), correlation_of(Headers({"x-request-id": "a b"}))
        ('trace-1', None)
    """
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else None


def error_response(request: Request, status: int, code: str, message: str, *, hint: str | None = None,
                   fields: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSONResponse in the error shape, with this request's id in the body and headers (on
    ``/v2`` paths the Open Inference Protocol's ``{"error": "<message>"}``, the id in the header)."""
    rid = request_id(request)
    body = error_body(code, message, hint=hint, fields=fields, request_id=rid)
    if is_v2(request.url.path):
        body = v2_error_body(message, hint)
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Request-Id": rid})


def is_v2(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol (``/v2`` and below)."""
    return path == "/v2" or path.startswith("/v2/")


def v2_error_body(message: str, hint: str | None = None) -> dict[str, str]:
    """The protocol's error object: one message (the hint in parentheses).

    Example:
        >>> v2_error_body("model 'x' is not served here", "models: iris")
        {'error': "model 'x' is not served here (models: iris)"}
    """
    return {"error": message + (f" ({hint})" if hint else "")}


# ----------------------------------------------------------------------------- handlers
async def _dlforge_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DlforgeError)
    status, code = status_of(exc)
    return error_response(request, status, code, exc.message, hint=exc.hint)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # Only where and why: the offending input may be megabytes, or a secret.
    fields = [{"path": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))[:200],
               "type": str(e.get("type", ""))} for e in errors]
    more = f" (first {MAX_FIELDS} shown)" if len(fields) > MAX_FIELDS else ""
    return error_response(request, 422, "validation_error", f"{len(fields)} invalid field(s) in the request{more}",
                          hint="fix the fields listed and send the request again", fields=fields)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = getattr(exc, "code", None) or _CODES.get(status, "error")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    return error_response(request, status, code, message, hint=getattr(exc, "hint", None),
                          fields=getattr(exc, "fields", None), headers=exc.headers)


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFullError)
    retry = max(1, math.ceil(getattr(exc, "retry_after", 1.0)))
    return error_response(request, 429, "queue_full", "the model's request queue is full",
                          hint=f"retry after {retry} s", headers={"Retry-After": str(retry)})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error in request %s (correlation id %s)", request_id(request), correlation_id(request),
                 exc_info=exc)
    return error_response(request, 500, "internal", "internal error")


# ----------------------------------------------------------------------------- middleware
def _fully_decoded(segment: str) -> str:
    for _ in range(5):
        decoded = unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment


def _path_problem(raw_path: str) -> tuple[str, str, str | None] | None:
    """(code, message, hint) when a /v1/models/... path must be refused, else None."""
    if not raw_path.startswith(MODELS_PREFIX):
        return None
    segments = raw_path[len(MODELS_PREFIX):].split("/")
    for segment in segments:
        text = _fully_decoded(segment)
        if ".." in text or "/" in text or "\\" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
            # The segment is not echoed: it may be a traversal attempt or hold control characters.
            return ("invalid_path", "the URL path holds '..', an encoded slash, a backslash or a control character",
                    "model names and aliases use letters, digits, '.', '_' and '-' only")
    named = [(segments[0], "model name")]
    if len(segments) > 2 and segments[1] == "aliases":
        named.append((segments[2], "alias"))
    for raw, kind in named:
        if not raw:  # "/v1/models/" or "//": no name to check; routing answers
            continue
        try:
            validate_name(raw, kind)
        except DlforgeError as exc:
            return "invalid_name", exc.message, exc.hint
    return None


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


class SecurityMiddleware:
    """Request ids, body-size caps, the content-type rule and path checks (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid, correlation = uuid.uuid4().hex, correlation_of(headers)
        scope.setdefault("state", {}).update(request_id=rid, correlation_id=correlation)
        if correlation is not None:  # the only place the two ids meet: grep the log for either
            logger.info("request %s has correlation id %s (%s %s)", rid, correlation, scope["method"],
                        scope.get("path", ""))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-Id"] = rid
                if correlation is not None:
                    response_headers["X-Correlation-Id"] = correlation
            await send(message)

        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None) or ServeSettings()
        path = scope.get("path", "")
        upload = scope["method"] == "POST" and _UPLOAD_PATH.match(path) is not None
        limit = settings.max_upload_bytes if upload else settings.max_body_bytes
        problem = self._refusal(scope, headers, upload, limit)
        if problem is not None:
            status, code, message, hint = problem
            body = v2_error_body(message, hint) if is_v2(path) else error_body(code, message, hint=hint, request_id=rid)
            await JSONResponse(body, status_code=status)(scope, receive, send_with_id)
            return

        received, body_done = 0, False
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + settings.body_timeout_s

        async def capped_receive() -> Message:
            nonlocal received, body_done, body_deadline
            if body_done:  # after the body only http.disconnect comes: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:  # e.g. a Content-Length larger than the bytes sent
                raise ApiError(408, "request_timeout", "the request body did not arrive within "
                               f"{settings.body_timeout_s:g} s", hint="send the whole body, as many bytes as "
                               "Content-Length says", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # chunked bodies have no Content-Length to check up front
                    raise ApiError(413, "payload_too_large", f"the request body is over {limit} bytes",
                                   hint="send a smaller body")
                body_done = not message.get("more_body", False)
                if upload:  # an upload may take minutes: its timeout runs between reads, not over the body
                    body_deadline = loop.time() + settings.body_timeout_s
            else:
                body_done = True
            return message

        try:
            await self.app(scope, capped_receive, send_with_id)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error in request %s (correlation id %s)", rid, correlation)
            body = error_body("internal", "internal error", request_id=rid)
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)

    @staticmethod
    def _refusal(scope: Scope, headers: Headers, upload: bool,
                 limit: int) -> tuple[int, str, str, str | None] | None:
        raw = scope.get("raw_path") or scope.get("path", "").encode()
        root = scope.get("root_path", "")
        raw_path = raw.decode("latin-1").split("?")[0]
        if root and raw_path.startswith(root):
            raw_path = raw_path[len(root):]
        bad_path = _path_problem(raw_path)
        if bad_path is not None:
            return (400, *bad_path)
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, "bad_request", "the Content-Length header is not a number", None
            if int(length) > limit:
                return 413, "payload_too_large", f"the request body is over {limit} bytes", "send a smaller body"
        has_body = (length is not None and int(length) > 0) or "transfer-encoding" in headers
        if scope["method"] in ("POST", "PUT", "PATCH") and has_body:
            allowed = UPLOAD_TYPES if upload else JSON_TYPES
            if _V2_INFER.match(raw_path):
                allowed = V2_TYPES
            if _media_type(headers) not in allowed:
                return (415, "unsupported_media_type", "this route accepts only " + " or ".join(a for a in allowed if a) + " bodies",
                        f"send the body with Content-Type: {allowed[0]}")
        return None


def install_security(app: FastAPI) -> None:
    """Add the security middleware and the exception handlers to ``app``.

    Example:
        >>> from fastapi import FastAPI
        >>> app = FastAPI()
        >>> install_security(app)
        >>> DlforgeError in app.exception_handlers
        True
    """
    app.add_middleware(SecurityMiddleware)
    app.add_exception_handler(DlforgeError, _dlforge_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(Exception, _internal_error)
