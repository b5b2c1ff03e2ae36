"""Admin routes: upload (safe tar.gz), delete, aliases, rollback, traffic; each change is live at once.

Uses conftest's ``serve_env`` (model "iris": v1 <- production, v2 <- candidate) and ``make_client``.
Predictions are compared with the artifact's own ``Artifact.predict`` (the reference).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from dlforge.registry.artifact import load_artifact
from dlforge.serve.upload import MAX_MEMBERS
from tests.serve.conftest import save_tiny_classifier
from tests.serve.test_security import assert_error_body

X = [[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 2.2]]
GZIP = {"Content-Type": "application/gzip"}


def targz(folder: Path | None = None, arcname: str = "model",
          extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> bytes:
    """The artifact ``folder`` as a tar.gz (under ``arcname``; "" for the top level) plus ``extra`` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if folder is not None:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=f"{arcname}/{path.name}" if arcname else path.name)
        for info, data in extra:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def member(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE, link: str = "",
           size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if size is None and data is not None else (size or 0)
    return info, data


def expected(folder: Path) -> list[str]:
    return load_artifact(folder).predict(torch.tensor(X))["labels"]


def blobs(env) -> list[str]:
    return sorted(p.name for p in env.artifacts.glob("??/*"))


@pytest.fixture
def admin(serve_env):
    return serve_env.headers(admin=True)


@pytest.fixture
def no_leftovers(monkeypatch, tmp_path: Path) -> Path:
    """Upload scratch folders go to a private temp root, to show none is left behind."""
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def predict(client, env, **body: Any) -> dict:
    response = client.post("/v1/models/iris/predict", json={"inputs": X, **body}, headers=env.headers())
    assert response.status_code == 200, response.text
    return response.json()


# ----------------------------------------------------------------------------- upload
@pytest.mark.parametrize("arcname", ["model", ""])
def test_upload_then_alias_serves_the_new_version(make_client, serve_env, admin, tmp_path: Path,
                                                  no_leftovers: Path, arcname: str) -> None:
    client = make_client()
    folder = save_tiny_classifier(tmp_path / "v3", seed=3)
    response = client.post("/v1/models/iris/versions", content=targz(folder, arcname), headers={**admin, **GZIP})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["version"], body["aliases"], body["loaded"]) == ("iris", 3, [], True)
    assert body["task"] == "classification" and body["class_names"] == serve_env.class_names
    assert body["input_signature"]["shape"] == [None, 4]
    assert "path" not in body and str(tmp_path) not in response.text
    assert serve_env.registry.get("iris", version=3).sha256 == body["sha256"]
    assert predict(client, serve_env, version=3)["outputs"] == expected(folder)  # latest is loaded at once
    response = client.put("/v1/models/iris/aliases/staging", json={"version": 3}, headers=admin)
    assert response.json() == {"name": "iris", "alias": "staging", "version": 3, "previous": None}
    answer = predict(client, serve_env, alias="staging")
    assert (answer["version"], answer["outputs"]) == (3, expected(folder))
    assert list(no_leftovers.iterdir()) == []


def test_upload_with_alias_query_in_one_call(make_client, serve_env, admin, tmp_path: Path) -> None:
    client = make_client()
    folder = save_tiny_classifier(tmp_path / "v3", seed=3)
    response = client.post("/v1/models/iris/versions?alias=production", content=targz(folder),
                           headers={**admin, **GZIP})
    assert response.status_code == 201, response.text
    assert response.json()["aliases"] == ["production"]
    assert serve_env.registry.aliases("iris") == {"production": 3, "candidate": 2}
    answer = predict(client, serve_env)  # no alias: "production" answers
    assert (answer["version"], answer["variant"], answer["outputs"]) == (3, "production", expected(folder))


def test_upload_creates_a_new_model(make_client, serve_env, admin, tmp_path: Path) -> None:
    client = make_client()
    folder = save_tiny_classifier(tmp_path / "new", seed=7)
    response = client.post("/v1/models/fresh-model/versions", content=targz(folder, ""),
                           headers={**admin, "Content-Type": "application/x-gzip"})
    assert response.status_code == 201, response.text
    response = client.post("/v1/models/fresh-model/predict", json={"inputs": X}, headers=serve_env.headers())
    assert response.status_code == 200 and response.json()["outputs"] == expected(folder)


def _bad_archives(folder: Path) -> dict[str, tuple[bytes, str]]:
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as tar:
        info = tarfile.TarInfo("model/zeros.bin")
        info.size = 8 * 2**20  # 8 MiB of zeros: ~8 KiB compressed, over the 1 MiB cap below
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    not_artifact = folder.parent / "broken"
    not_artifact.mkdir(exist_ok=True)
    (not_artifact / "model.json").write_text('{"format": "dlforge-artifact", "spec": {"arch": "nope"}}')
    (not_artifact / "model.safetensors").write_bytes(b"not safetensors")
    corrupt = folder.parent / "corrupt"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "model.json").write_text("[1, 2")
    (corrupt / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    no_spec = folder.parent / "nospec"
    no_spec.mkdir(exist_ok=True)
    (no_spec / "model.json").write_text('{"format": "dlforge-artifact"}')
    (no_spec / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    return {
        "absolute": (targz(folder, extra=[member("/tmp/evil.py")]), "absolute path"),
        "dotdot": (targz(folder, extra=[member("../x")]), "'..'"),
        "dotdot-nested": (targz(folder, extra=[member("model/../../x")]), "'..'"),
        "symlink": (targz(folder, extra=[member("model/link", None, tarfile.SYMTYPE, "/etc/passwd")]), "symlink"),
        "hardlink": (targz(folder, extra=[member("model/hard", None, tarfile.LNKTYPE, "model/model.json")]),
                     "hardlink"),
        "device": (targz(folder, extra=[member("model/null", None, tarfile.CHRTYPE)]), "device"),
        "fifo": (targz(folder, extra=[member("model/pipe", None, tarfile.FIFOTYPE)]), "fifo"),
        "backslash": (targz(folder, extra=[member("model\\x")]), "backslash"),
        "bomb": (bomb.getvalue(), "more than"),
        "members": (targz(extra=[member(f"f{i}") for i in range(MAX_MEMBERS + 1)]), "members"),
        "not gzip": (b"PK\x03\x04" + b"\x00" * 100, "not a gzip file"),
        "gzip not tar": (gzip.compress(b"hello" * 100), "not a valid tar.gz"),
        "no model.json": (targz(extra=[member("model/readme.txt")]), "no model artifact"),
        "two folders": (targz(extra=[member("a/model.json"), member("a/model.safetensors"), member("b/model.json"),
                                     member("b/model.safetensors")]), "no model artifact"),
        "unknown arch": (targz(not_artifact), "cannot be loaded"),
        "corrupt json": (targz(corrupt), "cannot be loaded"),
        "no spec": (targz(no_spec), "cannot be loaded"),
    }


@pytest.mark.parametrize("case", ["absolute", "dotdot", "dotdot-nested", "symlink", "hardlink", "device", "fifo",
                                  "backslash", "bomb", "members", "not gzip", "gzip not tar", "no model.json",
                                  "two folders", "unknown arch", "corrupt json", "no spec"])
def test_bad_uploads_are_4xx_and_register_nothing(make_client, serve_env, admin, tmp_path: Path,
                                                  no_leftovers: Path, case: str) -> None:
    client = make_client(max_upload_bytes=2**20)
    data, needle = _bad_archives(serve_env.dirs[1])[case]
    before = (serve_env.registry.versions("iris"), serve_env.registry.aliases("iris"), blobs(serve_env))
    response = client.post("/v1/models/iris/versions?alias=production", content=data, headers={**admin, **GZIP})
    error = assert_error_body(response, 400)
    assert needle in error["message"], error
    assert str(tmp_path) not in response.text and "dlforge-upload" not in response.text
    assert (serve_env.registry.versions("iris"), serve_env.registry.aliases("iris"), blobs(serve_env)) == before
    assert list(no_leftovers.iterdir()) == []
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()
    assert predict(client, serve_env)["version"] == 1  # still serving


def test_upload_over_the_cap_is_413(make_client, serve_env, admin, tmp_path: Path, no_leftovers: Path) -> None:
    client = make_client(max_upload_bytes=1000)
    data = targz(save_tiny_classifier(tmp_path / "v3", seed=3))
    assert len(data) > 1000
    assert_error_body(client.post("/v1/models/iris/versions", content=data, headers={**admin, **GZIP}), 413)
    chunked = client.post("/v1/models/iris/versions", content=iter([data[:500], data[500:]]),
                          headers={**admin, **GZIP})
    assert "content-length" not in chunked.request.headers
    assert_error_body(chunked, 413, "payload_too_large")
    assert [v.version for v in serve_env.registry.versions("iris")] == [1, 2]
    assert list(no_leftovers.iterdir()) == []


def test_upload_refusals_before_reading(make_client, serve_env, admin, tmp_path: Path) -> None:
    client = make_client()
    data = targz(save_tiny_classifier(tmp_path / "v3", seed=3))
    assert_error_body(client.post("/v1/models/iris/versions?alias=a..b", content=data, headers={**admin, **GZIP}),
                      400, "registry_error")
    assert_error_body(client.post("/v1/models/iris/versions?alias=a%2Fb", content=data, headers={**admin, **GZIP}),
                      422, "validation_error")
    assert_error_body(client.post("/v1/models/iris/versions", content=b"", headers={**admin, **GZIP}), 400,
                      "empty_body")
    assert_error_body(client.post("/v1/models/iris/versions", content=data,
                                  headers={**admin, "Content-Type": "application/zip"}), 415)
    assert [v.version for v in serve_env.registry.versions("iris")] == [1, 2]


# ----------------------------------------------------------------------------- delete
def test_delete_version(make_client, serve_env, admin) -> None:
    client = make_client()
    response = client.delete("/v1/models/iris/versions/2", headers=admin)
    assert_error_body(response, 409, "conflict")  # "candidate" points at it
    client.put("/v1/models/iris/aliases/candidate", json={"version": 1}, headers=admin)
    assert predict(client, serve_env, version=2)["version"] == 2  # still loaded: it is the latest
    response = client.delete("/v1/models/iris/versions/2", headers=admin)
    assert response.status_code == 200 and response.json() == {"name": "iris", "version": 2, "deleted": True}
    assert [v.version for v in serve_env.registry.versions("iris")] == [1]
    response = client.post("/v1/models/iris/predict", json={"inputs": X, "version": 2}, headers=serve_env.headers())
    assert_error_body(response, 404, "not_found")  # unloaded at once
    assert_error_body(client.delete("/v1/models/iris/versions/2", headers=admin), 404)
    assert_error_body(client.delete("/v1/models/nope/versions/1", headers=admin), 404)
    assert_error_body(client.delete("/v1/models/iris/versions/0", headers=admin), 422)


# ----------------------------------------------------------------------------- aliases and rollback
def test_alias_moves_are_live_and_roll_back(make_client, serve_env, admin) -> None:
    client = make_client()
    assert predict(client, serve_env)["outputs"] == expected(serve_env.dirs[1])
    response = client.put("/v1/models/iris/aliases/production", json={"version": 2}, headers=admin)
    assert response.json() == {"name": "iris", "alias": "production", "version": 2, "previous": 1}
    answer = predict(client, serve_env)
    assert (answer["version"], answer["outputs"]) == (2, expected(serve_env.dirs[2]))
    response = client.post("/v1/models/iris/rollback", json={"alias": "production"}, headers=admin)
    assert response.json() == {"name": "iris", "alias": "production", "version": 1, "previous": 2}
    answer = predict(client, serve_env)
    assert (answer["version"], answer["outputs"]) == (1, expected(serve_env.dirs[1]))
    assert serve_env.registry.aliases("iris")["production"] == 1


def test_alias_and_rollback_errors(make_client, serve_env, admin) -> None:
    client = make_client()
    assert_error_body(client.put("/v1/models/iris/aliases/production", json={"version": 9}, headers=admin), 404)
    assert_error_body(client.put("/v1/models/nope/aliases/production", json={"version": 1}, headers=admin), 404)
    for body in ({"version": 0}, {"version": 1, "extra": 1}, {}, {"version": "1x"}, {"version": 2**40}):
        assert_error_body(client.put("/v1/models/iris/aliases/x", json=body, headers=admin), 422)
    assert_error_body(client.post("/v1/models/iris/rollback", json={"alias": "nope"}, headers=admin), 404)
    # "candidate" never moved: there is nothing to roll back to
    response = client.post("/v1/models/iris/rollback", json={"alias": "candidate"}, headers=admin)
    assert response.status_code in (400, 404, 409)
    assert_error_body(response, response.status_code)
    assert_error_body(client.post("/v1/models/iris/rollback", json={"alias": "a..b"}, headers=admin), 400)
    assert serve_env.registry.aliases("iris") == {"production": 1, "candidate": 2}


# ----------------------------------------------------------------------------- traffic
def test_traffic_config_is_validated_and_applied(make_client, serve_env, admin) -> None:
    client = make_client()
    config = {"variants": [{"alias": "production", "weight": 0.0}, {"alias": "candidate", "weight": 1.0}],
              "sticky_header": None, "shadow": "production"}
    response = client.put("/v1/models/iris/traffic", json=config, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "iris", "traffic": config}
    assert serve_env.registry.traffic("iris") == config
    answers = [predict(client, serve_env) for _ in range(3)]
    assert {(a["variant"], a["version"]) for a in answers} == {("candidate", 2)}
    response = client.delete("/v1/models/iris/traffic", headers=admin)
    assert response.json() == {"name": "iris", "traffic": None}
    assert serve_env.registry.traffic("iris") is None
    assert predict(client, serve_env)["variant"] == "production"


@pytest.mark.parametrize(("config", "paths"), [
    ({"variants": [{"alias": "production", "weight": 1}, {"alias": "ghost", "weight": 1}]}, ["body.variants.1.alias"]),
    ({"variants": [{"alias": "production", "weight": 1}], "shadow": "ghost"}, ["body.shadow"]),
    ({"variants": [{"alias": "nope", "weight": 1}], "shadow": "ghost"}, ["body.variants.0.alias", "body.shadow"]),
])
def test_traffic_aliases_must_exist(make_client, serve_env, admin, config: dict, paths: list[str]) -> None:
    client = make_client()
    error = assert_error_body(client.put("/v1/models/iris/traffic", json=config, headers=admin), 422,
                              "validation_error")
    assert [f["path"] for f in error["fields"]] == paths
    assert "candidate" in error["hint"] and "production" in error["hint"]
    assert serve_env.registry.traffic("iris") is None


@pytest.mark.parametrize("config", [
    {"variants": []},
    {"variants": [{"alias": "production", "weight": 0}]},
    {"variants": [{"alias": "production", "weight": -1}]},
    {"variants": [{"alias": "production", "weight": 1}, {"alias": "production", "weight": 1}]},
    {"variants": [{"alias": f"a{i}", "weight": 1} for i in range(9)]},
    {"variants": [{"alias": "../x", "weight": 1}]},
    {"variants": [{"alias": "production", "weight": 1}], "unknown": 1},
])
def test_invalid_traffic_configs_are_422(make_client, serve_env, admin, config: dict) -> None:
    client = make_client()
    assert_error_body(client.put("/v1/models/iris/traffic", json=config, headers=admin), 422)
    assert serve_env.registry.traffic("iris") is None


def test_traffic_for_unknown_model_is_404(make_client, admin) -> None:
    client = make_client()
    config = {"variants": [{"alias": "production", "weight": 1}]}
    assert_error_body(client.put("/v1/models/nope/traffic", json=config, headers=admin), 404, "not_found")
    assert_error_body(client.delete("/v1/models/nope/traffic", headers=admin), 404, "not_found")


# ----------------------------------------------------------------------------- OpenAPI
def test_openapi_documents_the_admin_routes(make_client) -> None:
    spec = make_client(require_keys=False).get("/openapi.json").json()
    upload = spec["paths"]["/v1/models/{name}/versions"]["post"]
    assert upload["requestBody"]["content"] == {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}
    assert upload["requestBody"]["required"] is True
    assert upload["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AdminVersion"}
    assert {"400", "401", "403", "413", "415", "422"} <= set(upload["responses"])
    assert [p["name"] for p in upload["parameters"]] == ["name", "alias"]
    ops = [op for ops in spec["paths"].values() for op in ops.values() if "admin" in op.get("tags", [])]
    assert len(ops) == 6 and all(op.get("security") for op in ops)
    alias_body = spec["paths"]["/v1/models/{name}/aliases/{alias}"]["put"]["requestBody"]
    assert alias_body["content"]["application/json"]["schema"]["$ref"].endswith("/AliasRequest")
    traffic = spec["paths"]["/v1/models/{name}/traffic"]["put"]
    assert traffic["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TrafficConfig")
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
