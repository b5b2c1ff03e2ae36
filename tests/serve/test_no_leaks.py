"""No error body, on any route, shows the server's insides.

Every route of the app (walked from ``app.routes``, so a new route fails
``test_every_route_has_an_error_case`` until it gets one) is sent its error cases on an empty
registry and on ``serve_env``'s full one, with no key, a wrong key and (admin routes) a
predict key. Each body is searched for host paths (the registry lives in ``tmp_path``, whose
name is a marker), URLs (``sqlite://``, ``postgresql://``), SQL, tracebacks, Python files,
database libraries, ``dlforge.`` module paths and exception class names.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dlforge.errors import RegistryError
from dlforge.registry.store import Registry
from tests.serve.conftest import save_tiny_classifier

FULL, EMPTY = "full", "empty"
LEAKS = {
    "a URL": r"://",
    "SQL": r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b[^\n]*\b(?:FROM|INTO|SET|WHERE|VALUES)\b|\[SQL",
    "a traceback": r"Traceback|File \"",
    "a Python file": r"\.pyc?\b",
    "a database library": r"(?i)sqlalchemy|sqlite3|psycopg",
    "a dlforge module path": r"\bdlforge\.[a-z_]",
    "an exception class name": r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception)\b",
    "a host path": r"(?:^|[\s'\"(=:])/(?:tmp|home|root|usr|etc|var|srv|work|proc|opt)\b|[A-Za-z]:\\\\",
}
TRAFFIC_A = {"variants": [{"alias": "production", "weight": 1.0}]}


@dataclass(frozen=True)
class Case:
    """One request that must fail: ``route`` is the "METHOD /template" it exercises."""

    route: str
    path: str
    status: int  # on the full registry; on the empty one any 4xx
    method: str = ""  # "" : the route's own method
    key: str = "predict"  # predict, admin, none or bad
    json: Any = None
    content: bytes | Callable[[], bytes] | None = None  # a callable builds the body when it is sent
    content_type: str | None = None


def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@functools.cache
def odd_artifact() -> bytes:
    """A real artifact whose model.json has ``"preprocessing": 5`` (it once answered "AttributeError while ...")."""
    folder = save_tiny_classifier(Path(tempfile.mkdtemp(prefix="odd-artifact-")) / "model", seed=3)
    meta = json.loads((folder / "model.json").read_text()) | {"preprocessing": 5}
    files = {"model.json": json.dumps(meta).encode(), "model.safetensors": (folder / "model.safetensors").read_bytes()}
    shutil.rmtree(folder.parent)
    return tar_gz(files)


GZ = "application/gzip"
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
ROW = [1, 2, 3, 4]
CASES = [
    Case("POST /v1/models/{name}/predict", "/v1/models/nope/predict", 404, json={"inputs": [ROW]}),
    Case("POST /v1/models/{name}/predict", "/v1/models/iris/predict", 404, json={"inputs": [ROW], "version": 9}),
    Case("POST /v1/models/{name}/predict", "/v1/models/iris/predict", 404, json={"inputs": [ROW], "alias": "nope"}),
    Case("POST /v1/models/{name}/predict", "/v1/models/iris/predict", 422, json={"inputs": [[1, 2]]}),
    Case("POST /v1/models/{name}/predict", "/v1/models/iris/predict", 422, json={"rows": 1}),
    Case("POST /v1/models/{name}/predict", "/v1/models/iris/predict", 415, content=b"\x80\x04K\x01.",
         content_type="application/octet-stream"),
    Case("POST /v1/models/{name}/predict", "/v1/models/%2e%2e/predict", 400, json={"inputs": []}),
    Case("POST /v1/models/{name}/feedback", "/v1/models/iris/feedback", 404, json={"request_id": "x1", "label": 0}),
    Case("POST /v1/models/{name}/feedback", "/v1/models/nope/feedback", 404, json={"request_id": "x1", "label": 0}),
    Case("POST /v1/models/{name}/feedback", "/v1/models/iris/feedback", 422, json={"request_id": "", "label": [None]}),
    Case("GET /v1/models/{name}/experiment", "/v1/models/nope/experiment", 404),
    Case("GET /v1/models/{name}/drift", "/v1/models/nope/drift", 404),
    Case("GET /v1/models", "/v1/models", 401, key="none"),
    Case("GET /v1/models/{name}", "/v1/models/nope", 404),
    Case("GET /v1/models/{name}", "/v1/models/bad%20name", 400),
    Case("GET /v1/models/{name}/versions/{version}", "/v1/models/iris/versions/9", 404),
    Case("GET /v1/models/{name}/versions/{version}", "/v1/models/nope/versions/1", 404),
    Case("GET /v1/models/{name}/versions/{version}", "/v1/models/iris/versions/0", 422),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 400, key="admin", content=b"not gzip",
         content_type=GZ),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 400, key="admin",
         content=gzip.compress(b"not a tar archive" * 40), content_type=GZ),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 400, key="admin",
         content=tar_gz({"../model.json": b"{}"}), content_type=GZ),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 400, key="admin",
         content=tar_gz({"model.json": b"{not json", "model.safetensors": b"xx"}), content_type=GZ),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 400, key="admin",
         content=tar_gz({"model.json": json.dumps({"arch": "mlp"}).encode(), "model.safetensors": b"\0" * 16}),
         content_type=GZ),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 400, key="admin", content=odd_artifact,
         content_type=GZ),
    Case("POST /v1/models/{name}/versions", "/v1/models/iris/versions", 415, key="admin", json={"a": 1}),
    Case("DELETE /v1/models/{name}/versions/{version}", "/v1/models/iris/versions/1", 409, key="admin"),
    Case("DELETE /v1/models/{name}/versions/{version}", "/v1/models/iris/versions/9", 404, key="admin"),
    Case("DELETE /v1/models/{name}/versions/{version}", "/v1/models/nope/versions/1", 404, key="admin"),
    Case("PUT /v1/models/{name}/aliases/{alias}", "/v1/models/iris/aliases/staging", 404, key="admin",
         json={"version": 9}),
    Case("PUT /v1/models/{name}/aliases/{alias}", "/v1/models/iris/aliases/123", 400, key="admin", json={"version": 1}),
    Case("PUT /v1/models/{name}/aliases/{alias}", "/v1/models/nope/aliases/staging", 404, key="admin",
         json={"version": 1}),
    Case("PUT /v1/models/{name}/aliases/{alias}", "/v1/models/iris/aliases/staging", 422, key="admin", json=[1]),
    Case("POST /v1/models/{name}/rollback", "/v1/models/iris/rollback", 404, key="admin", json={"alias": "nope"}),
    Case("POST /v1/models/{name}/rollback", "/v1/models/iris/rollback", 400, key="admin", json={"alias": "production"}),
    Case("POST /v1/models/{name}/rollback", "/v1/models/nope/rollback", 404, key="admin", json={"alias": "production"}),
    Case("PUT /v1/models/{name}/traffic", "/v1/models/iris/traffic", 422, key="admin",
         json={"variants": [{"alias": "nope", "weight": 1}]}),
    Case("PUT /v1/models/{name}/traffic", "/v1/models/iris/traffic", 422, key="admin",
         json={"variants": [{"alias": "production", "weight": 0}]}),
    Case("PUT /v1/models/{name}/traffic", "/v1/models/nope/traffic", 404, key="admin", json=TRAFFIC_A),
    Case("DELETE /v1/models/{name}/traffic", "/v1/models/nope/traffic", 404, key="admin"),
    Case("GET /healthz", "/healthz", 405, method="POST", key="none"),
    Case("GET /readyz", "/readyz", 405, method="DELETE", key="none"),
    Case("GET /metrics", "/metrics", 405, method="PUT", key="none"),
    Case("GET /", "/", 405, method="POST", key="none"),
    Case("GET /openapi.json", "/openapi.json", 405, method="POST", key="none"),
    Case("GET /docs", "/docs", 405, method="POST", key="none"),
    Case("GET /docs/oauth2-redirect", "/docs/oauth2-redirect", 405, method="POST", key="none"),
    Case("GET /redoc", "/redoc", 405, method="POST", key="none"),
    # The Open Inference Protocol answers with its own error object, {"error": "<message>"}.
    Case("GET /v2", "/v2", 405, method="POST", key="none"),
    Case("GET /v2/health/live", "/v2/health/live", 405, method="POST", key="none"),
    Case("GET /v2/health/ready", "/v2/health/ready", 405, method="POST", key="none"),
    Case("GET /v2/models/{name}", "/v2/models/nope", 404),
    Case("GET /v2/models/{name}/versions/{version}", "/v2/models/iris/versions/9", 404),
    Case("GET /v2/models/{name}/ready", "/v2/models/nope/ready", 404),
    Case("GET /v2/models/{name}/versions/{version}/ready", "/v2/models/iris/versions/nope/ready", 404),
    Case("POST /v2/models/{name}/infer", "/v2/models/nope/infer", 404, json=V2_BODY),
    Case("POST /v2/models/{name}/infer", "/v2/models/iris/infer", 400,
         json={"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
    Case("POST /v2/models/{name}/infer", "/v2/models/iris/infer", 400, json={"rows": 1}),
    Case("POST /v2/models/{name}/versions/{version}/infer", "/v2/models/iris/versions/9/infer", 404, json=V2_BODY),
    Case("POST /v2/models/{name}/versions/{version}/infer", "/v2/models/iris/versions/1/infer", 400,
         content=b"{not json", content_type="application/json"),
]


def app_routes(app: Any) -> dict[str, list[str]]:
    """``{"METHOD /path": tags}`` of every route, routers included (eagerly or, as in newer FastAPI, lazily)."""
    found: dict[str, list[str]] = {}

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif hasattr(route, "methods") and route.methods:
                for method in route.methods - {"HEAD"}:
                    found[f"{method} {prefix}{route.path}"] = list(getattr(route, "tags", []))
            elif hasattr(route, "routes"):
                walk(route.routes, prefix + getattr(route, "path", ""))

    walk(app.routes, "")
    return found


def auth_cases(routes: dict[str, list[str]]) -> list[Case]:
    """No key and a wrong key on every API route (401); a predict key on every admin route (403)."""
    cases = []
    for route, tags in routes.items():
        if " /v1/" not in route and " /v2/models" not in route:
            continue
        path = route.split(" ", 1)[1].format(name="iris", version=1, alias="production")
        cases += [Case(route, path, 401, key="none"), Case(route, path, 401, key="bad")]
        if "admin" in tags:
            cases.append(Case(route, path, 403, key="predict"))
    return cases


def leaks(text: str, forbidden: list[str]) -> list[str]:
    """What of the server's insides ``text`` shows (empty: nothing)."""
    found = [repr(marker) for marker in forbidden if marker in text]
    return found + [name for name, pattern in LEAKS.items() if re.search(pattern, text)]


def assert_clean(text: str, forbidden: list[str], what: str) -> None:
    shown = leaks(text, forbidden)
    assert not shown, f"{what} shows {', '.join(shown)}: {text}"


def send(client: Any, case: Case, keys: dict[str, str]) -> Any:
    method = case.method or case.route.split(" ")[0]
    headers = {"Authorization": f"Bearer {keys[case.key]}"} if case.key in keys else {}
    if case.content_type:
        headers["Content-Type"] = case.content_type
    content = case.content() if callable(case.content) else case.content
    body = {"content": content} if content is not None else {"json": case.json}
    if method in ("GET", "DELETE") and case.json is None:
        body = {}
    return client.request(method, case.path, headers=headers, **body)


@pytest.fixture
def clients(serve_env, make_client, tmp_path: Path) -> dict[str, tuple[Any, dict[str, str]]]:
    """The full registry (serve_env) and an empty one beside it, each with its keys."""
    empty_url = f"sqlite:///{tmp_path / 'empty' / 'registry.db'}"
    with Registry(empty_url, tmp_path / "empty" / "artifacts") as empty:
        empty_keys = {"predict": empty.create_key(), "admin": empty.create_key(admin=True)}
    full_keys = {"predict": serve_env.predict_key, "admin": serve_env.admin_key}
    return {
        FULL: (make_client(), {**full_keys, "bad": "dlf_" + "x" * 32}),
        EMPTY: (make_client(registry=empty_url, artifacts=str(tmp_path / "empty" / "artifacts")),
                {**empty_keys, "bad": "dlf_" + "x" * 32}),
    }


def forbidden_markers(tmp_path: Path) -> list[str]:
    return [tmp_path.name, "pytest-of-", str(tmp_path)]


def test_every_route_has_an_error_case(make_client) -> None:
    routes = app_routes(make_client().app)
    assert len(routes) >= 15 and "POST /v1/models/{name}/predict" in routes
    covered = {case.route for case in CASES}
    assert not set(routes) - covered, f"routes without an error case here: {sorted(set(routes) - covered)}"
    assert not covered - set(routes), f"cases for routes the app does not have: {sorted(covered - set(routes))}"
    for case in CASES:  # each case really hits the route it names
        template = re.sub(r"\{[^}]+\}", "[^/]+", case.route.split(" ", 1)[1])
        assert re.fullmatch(template, case.path), case


@pytest.mark.parametrize("which", [EMPTY, FULL])
def test_no_error_body_shows_internals(clients, which: str, tmp_path: Path) -> None:
    client, keys = clients[which]
    forbidden, problems = forbidden_markers(tmp_path), []
    for case in CASES + auth_cases(app_routes(client.app)):
        response = send(client, case, keys)
        what = f"{case.method or case.route.split(' ')[0]} {case.path} -> {response.status_code}"
        strict = which == FULL or case.key in ("none", "bad") or case.status == 405
        if response.status_code != case.status if strict else not 400 <= response.status_code < 500:
            problems.append(f"{what}, expected {case.status if strict else '4xx'}: {response.text}")
        shown = leaks(response.text, forbidden)
        if shown:
            problems.append(f"{what} shows {', '.join(shown)}: {response.text}")
        error = response.json()["error"]
        if case.path.startswith("/v2"):  # the protocol's own error object: a message, the id in the header
            assert isinstance(error, str) and error and response.headers["x-request-id"], what
        else:
            assert error["request_id"] == response.headers["x-request-id"], what
    assert not problems, f"{len(problems)} problem(s) on the {which} registry:\n" + "\n".join(problems)


def test_a_failing_database_is_not_shown(serve_env, make_client, tmp_path: Path, monkeypatch) -> None:
    client = make_client()
    headers, admin = serve_env.headers(), serve_env.headers(admin=True)
    assert client.get("/v1/models/iris", headers=headers).status_code == 200  # keys are cached from here
    assert client.put("/v1/models/iris/aliases/candidate", json={"version": 2}, headers=admin).status_code == 200
    gone = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'registry.db'}")  # its folder does not exist
    monkeypatch.setattr(client.app.state.registry._db, "engine", gone)
    for response in (client.get("/v1/models/iris", headers=headers), client.get("/v1/models", headers=headers),
                     client.put("/v1/models/iris/aliases/staging", json={"version": 1}, headers=admin)):
        assert response.status_code >= 400 and "registry database" in response.json()["error"]["message"]
        assert_clean(response.text, forbidden_markers(tmp_path), "a failing database")


def test_driver_text_is_scrubbed_as_a_second_line_of_defence(serve_env, make_client, tmp_path: Path,
                                                             monkeypatch) -> None:
    """A message that does carry internals (a driver's error text, say) is cleaned on the way out."""
    secret = (f"relation \"versions\" does not exist\nLINE 1: SELECT versions.id FROM versions WHERE x = 1 "
              f"[SQL: SELECT versions.id FROM versions] in postgresql+psycopg://dlforge:***@db.internal:5432/reg "
              f"(sqlalchemy.exc.ProgrammingError) Traceback (most recent call last):\n  File "
              f"\"{tmp_path}/dlforge/registry/store.py\", line 417, in versions\nKeyError: 'x'")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RegistryError(f"the registry database failed: {secret}", hint=f"see sqlite:///{tmp_path}/r.db")

    client = make_client()
    monkeypatch.setattr(client.app.state.registry, "versions", broken)
    response = client.get("/v1/models/iris", headers=serve_env.headers())
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("the registry database")
    assert_clean(response.text, forbidden_markers(tmp_path) + ["db.internal", "dlforge:"], "a driver's text")
