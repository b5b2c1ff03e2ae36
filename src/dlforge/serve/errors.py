"""What the server's errors look like and which status each one gets.

Every error the server sends has one shape (:class:`ErrorBody`) and never carries a stack
trace, a file-system path, a URL, SQL or a Python class name (:func:`scrub`, behind
messages written clean at their source). :func:`status_of` maps a dlforge error to its
status and code; :func:`error_status` does it for any exception, and request metrics count
under it. The handlers that send these bodies are installed by :mod:`dlforge.serve.security`.

Example:
    >>> error_body("not_found", "no model 'x'", request_id="r1")
    {'error': {'code': 'not_found', 'message': "no model 'x'", 'request_id': 'r1'}}
    >>> status_of(NotFoundError("no model 'x'"))
    (404, 'not_found')
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from dlforge.errors import (
    ConflictError,
    DlforgeError,
    NotFoundError,
    StorageError,
    UnavailableError,
)
from dlforge.serve.batching import QueueFullError

MAX_FIELDS = 20  # field errors shown in one body

class ErrorField(BaseModel):
    """One invalid field of a request: where it is and what is wrong with it."""

    path: str
    message: str
    type: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    hint: str | None = None
    fields: list[ErrorField] | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    """The body of every error response (documented in OpenAPI via ``error_responses``)."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses a route can answer.

    Example:
        >>> sorted(error_responses(401, 404))
        [401, 404]
    """
    return {s: {"model": ErrorBody, "description": HTTPStatus(s).phrase} for s in statuses}


class ApiError(HTTPException):
    """An HTTP error with the server's error code, hint and fields.

    It is an ``HTTPException`` so FastAPI lets it through body parsing unchanged.

    Example:
        >>> ApiError(422, "validation_error", "unknown alias 'b'", hint="create it first").code
        'validation_error'
    """

    def __init__(self, status_code: int, code: str, message: str, *, hint: str | None = None,
                 fields: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail=message, headers=headers)
        self.code, self.hint, self.fields = code, hint, fields


_ABS_PATH = re.compile(r"(?<![\w.~:/}-])/[^\s'\"`<>|;,(){}\[\]]+|\b[A-Za-z]:\\[^\s'\"`<>|;,(){}]+")
_KEEP = re.compile(r"^/(v1/[^\s]*|healthz|readyz|metrics|docs|openapi\.json)?$")


def scrub_paths(text: str) -> str:
    """``text`` with absolute file-system paths cut to their last part (API routes are kept).

    Error messages from deeper layers may name a host folder; clients must not see it.

    Example:
        >>> scrub_paths("cannot read /srv/registry/artifacts/x/model.json; see /v1/models")
        'cannot read model.json; see /v1/models'
    """
    def short(match: re.Match[str]) -> str:
        found = match.group(0)
        if _KEEP.match(found):
            return found
        parts = [p for p in re.split(r"[/\\]", found) if p]
        return parts[-1] if parts else "<path>"

    return _ABS_PATH.sub(short, text)


# What a database driver or a stack trace may put in a message, in the order it is cut.
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)
_FRAME = re.compile(r"^[ \t]*File \".*$\n?", re.MULTILINE)
_SQL_ECHO = re.compile(r"\[(?:SQL|parameters):.*?\]|\(Background on this error at:[^)]*\)", re.DOTALL)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>()\[\]{}]*")
_SQL = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)\b"
                  r"(?=[^\n]*\b(?:FROM|INTO|SET|TABLE|WHERE|VALUES)\b)[^\n]*")
_MODULE_PATH = re.compile(r"\b(?:[a-z_][a-z0-9_]*\.){2,}[A-Z]\w*"  # package.module.Class
                          r"|\b(?:[a-z_][a-z0-9_]*\.)+[A-Z]\w*(?:Error|Exception|Warning)\b"  # module.SomeError
                          r"|\b(?:dlforge|sqlalchemy|sqlite3|psycopg2?)(?:\.\w+)+")
_EXCEPTION = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception)\b")
_PY_FILE = re.compile(r"[\w.\\/~-]*[\\/][\w.-]+\.pyc?\b")


def scrub(text: str) -> str:
    """``text`` with everything internal cut out: what a client may see of an error.

    Tracebacks, URLs with a scheme (database URLs and their credentials), SQL echoed by a
    database driver, Python module paths and exception class names, source files and
    absolute paths (see :func:`scrub_paths`). The messages are meant to be clean where they
    are written; this is the second line of defence.

    Example:
        >>> scrub("(sqlalchemy.exc.OperationalError) the registry at sqlite:////srv/r.db failed "
        ...       "[SQL: SELECT id FROM models]")
        '(<internal>) the registry at <url> failed'
        >>> scrub("not a valid archive (ReadError); see /v1/models")
        'not a valid archive (error); see /v1/models'
    """
    text = _TRACEBACK.sub("", text)
    text = _FRAME.sub("", text)
    text = _SQL_ECHO.sub("", text)
    text = _URL.sub("<url>", text)
    text = _SQL.sub("<sql>", text)
    text = _MODULE_PATH.sub("<internal>", text)
    text = _EXCEPTION.sub("error", text)
    text = _PY_FILE.sub("<path>", text)
    return scrub_paths(text).strip()


def error_body(code: str, message: str, *, hint: str | None = None, fields: list[dict[str, str]] | None = None,
               request_id: str | None = None) -> dict[str, Any]:
    """The JSON error body (internals cut out with :func:`scrub`; empty keys left out).

    Example:
        >>> error_body("conflict", "alias 'production' points at version 2", hint="move it first")["error"]["hint"]
        'move it first'
    """
    detail: dict[str, Any] = {"code": code, "message": scrub(message)}
    if hint:
        detail["hint"] = scrub(hint)
    if fields:
        detail["fields"] = [{k: scrub(v) for k, v in f.items()} for f in fields[:MAX_FIELDS]]
    if request_id:
        detail["request_id"] = request_id
    return {"error": detail}


_ERROR_STATUS: tuple[tuple[type[DlforgeError], int, str], ...] = (
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (StorageError, 507, "insufficient_storage"),
    (UnavailableError, 503, "unavailable"),
)


def status_of(exc: DlforgeError) -> tuple[int, str]:
    """The HTTP status and error code of a dlforge error (the one mapping; metrics use it too).

    Example:
        >>> from dlforge.errors import ArtifactError, NotFoundError
        >>> status_of(NotFoundError("no model 'x'")), status_of(ArtifactError("bad"))
        ((404, 'not_found'), (400, 'artifact_error'))
    """
    for kind, status, code in _ERROR_STATUS:
        if isinstance(exc, kind):
            return status, code
    # e.g. RegistryError -> "registry_error", ArtifactError -> "artifact_error"
    return 400, re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def error_status(err: BaseException) -> int:
    """The HTTP status a request that raised ``err`` is answered with, and counted under.

    It follows this module's exception handlers: dlforge errors through :func:`status_of`
    (the one mapping), anything unexpected is a 500. Request metrics count under it.

    Example:
        >>> from dlforge.errors import NotFoundError
        >>> error_status(NotFoundError("no model 'x'")), error_status(RuntimeError("boom"))
        (404, 500)
    """
    if isinstance(err, ApiError):
        return err.status_code
    if isinstance(err, RequestValidationError):
        return 422
    if isinstance(err, QueueFullError):
        return 429
    if isinstance(err, DlforgeError):
        return status_of(err)[0]
    return 500
