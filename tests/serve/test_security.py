"""The security layer: API keys, body caps, the JSON-only rule, name checks and error bodies.

Most tests only read the registry or are refused before changing it, so they share one
module-scoped registry and app (``env``, ``client``: conftest's ``serve_env`` layout, model
"iris" v1/v2 with aliases production/candidate, a predict key and an admin key).
"""

from __future__ import annotations

import asyncio
import doctest
import json
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import dlforge.serve.dependencies as dependencies
import dlforge.serve.errors as error_bodies
import dlforge.serve.security as security
from dlforge.errors import ConflictError, DataError, NotFoundError
from dlforge.registry.store import Registry
from dlforge.serve.batching import QueueFullError
from dlforge.serve.dependencies import KeyCache
from dlforge.serve.errors import scrub_paths
from dlforge.serve.main import create_app
from dlforge.serve.security import install_security
from tests.serve.conftest import ServeEnv, save_tiny_classifier

PREDICT = "/v1/models/iris/predict"
BODY = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
PICKLE_TYPES = ["application/octet-stream", "application/x-pickle", "application/python-pickle"]
OTHER_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/xml", "application/jsonx", "image/png"]
# (method, path, JSON body) of every admin route; test_admin checks what they do.
ADMIN_ROUTES = [
    ("POST", "/v1/models/iris/versions", None),
    ("DELETE", "/v1/models/iris/versions/2", None),
    ("PUT", "/v1/models/iris/aliases/candidate", {"version": 1}),
    ("POST", "/v1/models/iris/rollback", {"alias": "candidate"}),
    ("PUT", "/v1/models/iris/traffic", {"variants": [{"alias": "production", "weight": 1.0}]}),
    ("DELETE", "/v1/models/iris/traffic", None),
]
ABS_PATH = re.compile(r"(^|[\s'\"(=:])/(tmp|home|root|usr|etc|var|srv|work|proc)\b|[A-Za-z]:\\\\")


class MarkerPayload:
    """Unpickling this creates ``path``: the file must never appear."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def assert_error_body(response: Any, status: int, code: str | None = None) -> dict:
    """The response is an error in the server's shape, free of tracebacks and host paths."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message", "request_id"} <= set(body["error"]) <= {"code", "message", "hint", "fields",
                                                                        "request_id"}
    if code is not None:
        assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert ABS_PATH.search(response.text) is None, response.text
    return body["error"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[ServeEnv]:
    """Like conftest's ``env``, once per module: these tests only read the registry
    (or refuse to change it), so one registry and one app serve them all."""
    tmp = tmp_path_factory.mktemp("security")
    url, artifacts = f"sqlite:///{tmp / 'registry.db'}", tmp / "artifacts"
    registry = Registry(url, artifacts)
    dirs = {v: save_tiny_classifier(tmp / f"model-v{v}", seed=v) for v in (1, 2)}
    for v in (1, 2):
        registry.register(dirs[v], "iris")
    registry.set_alias("iris", "production", 1)
    registry.set_alias("iris", "candidate", 2)
    yield ServeEnv(registry=registry, url=url, artifacts=artifacts, predict_key=registry.create_key(),
                   admin_key=registry.create_key(admin=True), dirs=dirs)
    registry.close()


@pytest.fixture(scope="module")
def client(env: ServeEnv) -> Iterator[TestClient]:
    app = create_app(env.settings(max_body_bytes=4096, max_upload_bytes=64 * 1024))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_doctests() -> None:
    assert doctest.testmod(security).failed == 0
    assert doctest.testmod(error_bodies).attempted > 0 and doctest.testmod(error_bodies).failed == 0
    assert doctest.testmod(dependencies).failed == 0


# ----------------------------------------------------------------------------- API keys
@pytest.mark.parametrize(("method", "path", "body"), [("POST", PREDICT, BODY), ("GET", "/v1/models", None),
                                                      *ADMIN_ROUTES])
def test_missing_key_is_401_with_www_authenticate(client, method: str, path: str, body: Any) -> None:
    response = client.request(method, path, json=body)
    error = assert_error_body(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in error["hint"]


@pytest.mark.parametrize("header", ["Bearer dlf_" + "x" * 32, "Bearer ", "Basic dXNlcjpwYXNz", "dlf_abc",
                                    "Bearer dlf_\u00e9\u00e9".encode("latin-1")])
def test_wrong_or_malformed_key_is_401(client, env, header: str | bytes) -> None:
    response = client.post(PREDICT, json=BODY, headers={"Authorization": header})
    assert_error_body(response, 401, "unauthorized")
    assert "Bearer" in response.headers["www-authenticate"]
    response = client.put("/v1/models/iris/aliases/x", json={"version": 1}, headers={"Authorization": header})
    assert_error_body(response, 401)
    assert env.registry.aliases("iris") == {"production": 1, "candidate": 2}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_predict_key_is_403_on_every_admin_route(client, env, method: str, path: str, body: Any) -> None:
    before = (env.registry.aliases("iris"), env.registry.traffic("iris"),
              [v.version for v in env.registry.versions("iris")])
    response = client.request(method, path, json=body, headers=env.headers())
    assert "admin key" in assert_error_body(response, 403, "forbidden")["message"]
    after = (env.registry.aliases("iris"), env.registry.traffic("iris"),
             [v.version for v in env.registry.versions("iris")])
    assert after == before


def test_admin_routes_listed_here_are_all_the_admin_routes(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    routes = {(m.upper(), p) for p, ops in paths.items() for m, op in ops.items() if "admin" in op.get("tags", [])}
    assert routes == {("POST", "/v1/models/{name}/versions"), ("DELETE", "/v1/models/{name}/versions/{version}"),
                      ("PUT", "/v1/models/{name}/aliases/{alias}"), ("POST", "/v1/models/{name}/rollback"),
                      ("PUT", "/v1/models/{name}/traffic"), ("DELETE", "/v1/models/{name}/traffic")}
    assert len(ADMIN_ROUTES) == len(routes)


def test_admin_key_works_on_predict_and_models(client, env) -> None:
    assert client.post(PREDICT, json=BODY, headers=env.headers(admin=True)).status_code == 200
    assert client.get("/v1/models", headers=env.headers(admin=True)).status_code == 200
    assert client.post(PREDICT, json=BODY, headers=env.headers()).status_code == 200


def test_revoked_key_is_401(client, env, monkeypatch) -> None:
    fresh = env.registry.create_key(label="short-lived")
    key_id = env.registry.keys()[-1]["id"]
    headers = {"Authorization": f"Bearer {fresh}"}
    assert client.post(PREDICT, json=BODY, headers=headers).status_code == 200
    env.registry.revoke_key(key_id)
    # Cached for KEY_CACHE_SECONDS; once that passes the revocation is seen.
    real = dependencies.time.monotonic
    monkeypatch.setattr(dependencies, "time", SimpleNamespace(monotonic=lambda: real() + 60.0))
    assert_error_body(client.post(PREDICT, json=BODY, headers=headers), 401, "unauthorized")
    revoked_first = env.registry.create_key(label="never used")
    env.registry.revoke_key(env.registry.keys()[-1]["id"])
    response = client.post(PREDICT, json=BODY, headers={"Authorization": f"Bearer {revoked_first}"})
    assert "revoked" in assert_error_body(response, 401)["message"]


def test_key_cache_spares_the_database(client, env, monkeypatch) -> None:
    calls = []
    check = client.app.state.registry.check_key
    monkeypatch.setattr(client.app.state.registry, "check_key", lambda key: calls.append(1) or check(key))
    monkeypatch.setattr(client.app.state.pool, "on_change", None)  # no poll may clear the cache meanwhile
    key = env.registry.create_key(label="cache")
    for _ in range(5):
        assert client.post(PREDICT, json=BODY, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert len(calls) == 1


def test_a_revoked_key_stops_at_the_next_registry_refresh(client, env) -> None:
    key = env.registry.create_key(label="soon revoked")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post(PREDICT, json=BODY, headers=headers).status_code == 200  # now cached
    env.registry.revoke_key(env.registry.keys()[-1]["id"])
    client.portal.call(client.app.state.pool.refresh)  # what the poll loop does when the revision moves
    assert_error_body(client.post(PREDICT, json=BODY, headers=headers), 401, "unauthorized")


def test_key_cache_expires_and_is_bounded() -> None:
    cache = KeyCache(ttl=5.0, max_entries=3)
    cache.put("a", "admin", now=0.0)
    cache.put("b", None, now=0.0)
    assert (cache.get("a", now=4.9), cache.get("b", now=4.9), cache.get("a", now=5.0)) == ("admin", "", None)
    for key in "cdef":
        cache.put(key, "predict", now=0.0)
    assert len(cache._roles) <= 3


def test_keys_are_never_echoed(client, env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "dlf_" + "S3cr3t" * 6
    responses = [
        client.post(PREDICT, json=BODY, headers={"Authorization": f"Bearer {wrong}"}),
        client.put("/v1/models/iris/traffic", json={"variants": []}, headers=env.headers()),
        client.post(PREDICT, json={"inputs": "nope"}, headers=env.headers()),
        client.post(PREDICT, json=BODY, headers=env.headers(admin=True)),
        client.put("/v1/models/iris/aliases/x", json={"version": 99}, headers=env.headers(admin=True)),
    ]
    for key in (wrong, env.predict_key, env.admin_key):
        for response in responses:
            assert key not in response.text and key not in str(response.headers)
        assert key not in caplog.text


def test_no_auth_mode_needs_no_key(make_client, serve_env) -> None:
    client = make_client(require_keys=False)
    assert client.post(PREDICT, json=BODY).status_code == 200
    assert client.put("/v1/models/iris/aliases/staging", json={"version": 1}).status_code == 200


# ----------------------------------------------------------------------------- body size
def _chunks(total: int, size: int = 1000):
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


@pytest.mark.parametrize(("method", "path"), [("POST", PREDICT), ("PUT", "/v1/models/iris/aliases/x"),
                                              ("PUT", "/v1/models/iris/traffic")])
def test_body_over_the_cap_is_413(client, env, method: str, path: str) -> None:
    headers = env.headers(admin=True, **{"Content-Type": "application/json"})
    big = json.dumps({"inputs": [[0.0] * 4] * 300}).encode()
    assert len(big) > 4096
    assert_error_body(client.request(method, path, content=big, headers=headers), 413, "payload_too_large")
    # chunked: no Content-Length, the middleware counts the stream
    response = client.request(method, path, content=_chunks(10_000), headers=headers)
    assert "content-length" not in response.request.headers
    assert_error_body(response, 413, "payload_too_large")
    assert env.registry.aliases("iris") == {"production": 1, "candidate": 2}


def test_body_under_the_cap_is_fine_chunked_too(client, env) -> None:
    body = json.dumps(BODY).encode()
    response = client.post(PREDICT, content=iter([body[:5], body[5:]]),
                           headers=env.headers(**{"Content-Type": "application/json"}))
    assert response.status_code == 200, response.text


def _asgi(app, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict]:
    """Send one bodiless request straight through the security middleware (as a raw socket
    could: clients normalise paths and headers first) and return the ASGI messages sent back."""
    sent: list[dict] = []
    scope = {"type": "http", "method": method, "path": raw_path.decode("latin-1"), "raw_path": raw_path,
             "query_string": b"", "headers": headers, "app": app, "root_path": ""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(security.SecurityMiddleware(app.router)(scope, receive, send))
    return sent


def test_bad_content_length_is_400(client, env) -> None:
    sent = _asgi(client.app, "POST", PREDICT.encode(),
                 [(b"content-length", b"12abc"), (b"content-type", b"application/json")])
    assert sent[0]["status"] == 400 and b"Content-Length" in sent[1]["body"]


# ----------------------------------------------------------------------------- content types
@pytest.mark.parametrize("content_type", PICKLE_TYPES + OTHER_TYPES + [None])
@pytest.mark.parametrize(("method", "path"), [("POST", PREDICT), ("POST", "/v1/models/iris/feedback"),
                                              ("PUT", "/v1/models/iris/aliases/candidate"),
                                              ("POST", "/v1/models/iris/rollback"),
                                              ("PUT", "/v1/models/iris/traffic"),
                                              ("POST", "/v1/models/iris/versions")])
def test_non_json_bodies_are_415_and_never_unpickled(client, env, tmp_path: Path, content_type: str | None,
                                                     method: str, path: str) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"inputs": [[0, 0, 0, 0]], "version": 1, "alias": "production",
                            "evil": MarkerPayload(marker)})
    headers = env.headers(admin=True)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.request(method, path, content=payload, headers=headers)
    error = assert_error_body(response, 415, "unsupported_media_type")
    assert ("application/gzip" if path.endswith("/versions") else "application/json") in error["message"]
    assert not marker.exists()
    assert [v.version for v in env.registry.versions("iris")] == [1, 2]
    assert env.registry.aliases("iris") == {"production": 1, "candidate": 2}


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_json_with_parameters_is_accepted(client, env, content_type: str) -> None:
    response = client.post(PREDICT, content=json.dumps(BODY), headers=env.headers(**{"Content-Type": content_type}))
    assert response.status_code == 200, response.text


def test_upload_route_takes_only_gzip(client, env) -> None:
    response = client.post("/v1/models/iris/versions", json={"a": 1}, headers=env.headers(admin=True))
    assert "application/gzip" in assert_error_body(response, 415)["message"]


# ----------------------------------------------------------------------------- names in paths
ENCODED_BAD = ["%2e%2e", "%2E%2E", "%252e%252e", "%25252e%25252e", "a%2Fb", "a%252Fb", "a%5Cb", "a%255Cb",
               "a%00b", "a%0Ab", "a%0Db", "a%1Fb", "a%7Fb", "..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc"]


@pytest.mark.parametrize("bad", ENCODED_BAD)
def test_bad_names_are_400(client, env, bad: str) -> None:
    headers = env.headers(admin=True)
    for method, path, body in [("GET", f"/v1/models/{bad}", None), ("POST", f"/v1/models/{bad}/predict", BODY),
                               ("PUT", f"/v1/models/iris/aliases/{bad}", {"version": 1}),
                               ("DELETE", f"/v1/models/{bad}/versions/1", None)]:
        assert_error_body(client.request(method, path, json=body, headers=headers), 400)
    assert env.registry.aliases("iris") == {"production": 1, "candidate": 2}


@pytest.mark.parametrize("bad", ["..", "a..b", "-lead", ".hidden", "a%20b", "a b", "é", "a*", "x" * 129,
                                 "a\\b", "a%", "%zz"])
def test_other_invalid_names_are_400_or_404_never_2xx_or_5xx(client, env, bad: str) -> None:
    headers = env.headers(admin=True)
    for method, path, body in [("GET", f"/v1/models/{bad}", None), ("POST", f"/v1/models/{bad}/predict", BODY),
                               ("PUT", f"/v1/models/iris/aliases/{bad}", {"version": 1})]:
        response = client.request(method, path, json=body, headers=headers)
        # a raw ".." is removed by the client ("/v1/models/iris"): routing answers 404 or 405
        assert response.status_code in (400, 404, 405), (path, response.status_code)
        assert_error_body(response, response.status_code)
    assert env.registry.aliases("iris") == {"production": 1, "candidate": 2}


@pytest.mark.parametrize("raw", [b"/v1/models/../predict", b"/v1/models/iris/../../etc/passwd",
                                 b"/v1/models/a\\b/predict", b"/v1/models/a\x00b", b"/v1/models/a\x1bb",
                                 b"/v1/models/iris/aliases/..%2f..", b"/v1/models/%2e%2e"])
def test_raw_paths_that_clients_would_normalise_are_400(client, raw: bytes) -> None:
    # httpx removes dot segments before sending, so speak ASGI directly, as a raw socket could.
    sent = _asgi(client.app, "GET", raw, [])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_path"


def test_valid_unusual_names_pass_the_middleware(client, env) -> None:
    for name in ["a.b", "A_b-9", "x" * 128, "iris%2Dmlp"]:
        response = client.get(f"/v1/models/{name}", headers=env.headers())
        assert_error_body(response, 404, "not_found")


# ----------------------------------------------------------------------------- error bodies
def test_unknown_route_and_method_use_the_error_shape(client, env) -> None:
    assert_error_body(client.get("/nope"), 404, "not_found")
    assert_error_body(client.patch(PREDICT, json=BODY, headers=env.headers()), 405, "method_not_allowed")


def test_validation_errors_list_fields_without_echoing_input(client, env) -> None:
    secret = "do-not-echo-" + "z" * 100
    response = client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]], "version": secret, "extra": secret},
                           headers=env.headers())
    error = assert_error_body(response, 422, "validation_error")
    assert {f["path"] for f in error["fields"]} == {"body.version", "body.extra"}
    assert secret not in response.text
    response = client.put("/v1/models/iris/aliases/x", json={"version": "abc"}, headers=env.headers(admin=True))
    assert [f["path"] for f in assert_error_body(response, 422)["fields"]] == ["body.version"]
    response = client.put("/v1/models/iris/aliases/x", content=b"{not json", headers=env.headers(
        admin=True, **{"Content-Type": "application/json"}))
    assert assert_error_body(response, 422)["fields"][0]["type"] == "json_invalid"


def test_validation_error_fields_are_capped(client, env) -> None:
    body = {"variants": [{"alias": 1, "weight": "x", "bad": i} for i in range(8)], "a": 1, "b": 2, "c": 3}
    response = client.put("/v1/models/iris/traffic", json=body, headers=env.headers(admin=True))
    error = assert_error_body(response, 422)
    assert len(error["fields"]) == 20 and "first 20 shown" in error["message"]


def test_internal_errors_are_500_without_details(client, env, monkeypatch, caplog) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom in /tmp/secret/module.py line 3")

    monkeypatch.setattr(client.app.state.pool, "resolve", boom)
    with caplog.at_level(logging.ERROR, logger="dlforge.serve"):
        response = client.post(PREDICT, json=BODY, headers=env.headers(**{"X-Request-Id": "trace-me-1"}))
    error = assert_error_body(response, 500, "internal")
    assert error["message"] == "internal error" and "boom" not in response.text
    assert re.fullmatch(r"[0-9a-f]{32}", error["request_id"]) and response.headers["x-correlation-id"] == "trace-me-1"
    assert "boom in /tmp/secret" in caplog.text and "trace-me-1" in caplog.text  # the traceback stays in the log


@pytest.mark.parametrize(("given", "kept"), [("abc-123_X.y", True), ("a" * 64, True), ("a" * 65, False),
                                             ("bad id", False), ("<script>", False), ("", False)])
def test_request_id(client, given: str, kept: bool) -> None:
    response = client.get("/v1/models/%2e%2e", headers={"X-Request-Id": given} if given else {})
    rid = response.headers["x-request-id"]  # always the server's; the client's comes back as a correlation id
    assert response.json()["error"]["request_id"] == rid and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.headers.get("x-correlation-id") == (given if kept else None)
    assert client.get("/healthz", headers={"X-Request-Id": given} if given else {}).headers["x-request-id"]


def test_exception_mapping_and_queue_full() -> None:
    app = FastAPI()
    install_security(app)
    errors = {"missing": NotFoundError("no model 'x'", hint="GET /v1/models lists them"),
              "conflict": ConflictError("alias points at it"),
              "data": DataError("bad column in /srv/data/table.csv", hint="see C:\\Users\\me\\file.csv"),
              "queue": QueueFullError(0.25, queued=9, max_queue=8)}

    @app.get("/raise/{which}")
    async def raise_it(which: str) -> None:
        raise errors[which]

    with TestClient(app) as client:
        error = assert_error_body(client.get("/raise/missing"), 404, "not_found")
        assert error["hint"] == "GET /v1/models lists them"
        assert_error_body(client.get("/raise/conflict"), 409, "conflict")
        error = assert_error_body(client.get("/raise/data"), 400, "data_error")
        assert error["message"] == "bad column in table.csv" and error["hint"] == "see file.csv"
        response = client.get("/raise/queue")
        assert_error_body(response, 429, "queue_full")
        assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(("text", "expected"), [
    ("read /tmp/dlforge-upload-x/artifact/model.json", "read model.json"),
    ("'/home/u/reg/ab/abcd' missing", "'abcd' missing"),
    ("see /v1/models/{name}/aliases/{alias}", "see /v1/models/{name}/aliases/{alias}"),
    ("GET /healthz and /metrics", "GET /healthz and /metrics"),
    ("ratio 3/4 and http://host/path", "ratio 3/4 and http://host/path"),
    ("at D:\\models\\m1\\model.json", "at model.json"),
])
def test_scrub_paths(text: str, expected: str) -> None:
    assert scrub_paths(text) == expected


def test_openapi_declares_bearer_auth(client) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert predict["security"] == [{name: []} for name in schemes]
    assert "/healthz" in spec["paths"] and "security" not in spec["paths"]["/healthz"]["get"]
