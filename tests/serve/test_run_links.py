"""The server names the run behind each version (issue 19, "links"): ``GET /v1/models/{name}``
(each version's ``run``, and ``served_version``/``served_run``), ``GET .../versions/{v}``, an
upload's answer, and the status page. A real two-epoch iris run is registered beside the
fixture's ``iris`` model, whose artifacts were saved outside any run (run: null, no error)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dlforge.config import validate_config
from dlforge.pipeline.run import RunOutcome, train_run
from dlforge.serve.routers.status import status_context

MODEL = "iris-run"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    cfg = validate_config({"name": "iris", "data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
                           "train": {"epochs": 2}})
    return train_run(cfg, runs_dir=tmp_path_factory.mktemp("runs"))


def test_model_detail_carries_each_version_s_run_and_the_served_one(serve_env, make_client, run) -> None:
    serve_env.registry.register(run.artifact_dir, MODEL)
    client = make_client()
    detail = client.get(f"/v1/models/{MODEL}", headers=serve_env.headers()).json()
    assert [v["run"] for v in detail["versions"]] == [run.run_dir.name]
    assert (detail["served_version"], detail["served_run"]) == (1, run.run_dir.name)
    one = client.get(f"/v1/models/{MODEL}/versions/1", headers=serve_env.headers()).json()
    assert one["run"] == run.run_dir.name
    old = client.get("/v1/models/iris", headers=serve_env.headers()).json()  # saved outside a run
    assert [v["run"] for v in old["versions"]] == [None, None] and old["served_version"] == 1
    assert old["served_run"] is None


def test_served_follows_the_production_alias_and_steps_aside_for_a_split(serve_env, make_client, run) -> None:
    serve_env.registry.register(run.artifact_dir, "iris")  # version 3 of the fixture's model, from the run
    client = make_client()
    detail = client.get("/v1/models/iris", headers=serve_env.headers()).json()
    assert detail["served_version"] == 1 and detail["versions"][2]["run"] == run.run_dir.name
    serve_env.registry.set_alias("iris", "production", 3)
    detail = client.get("/v1/models/iris", headers=serve_env.headers()).json()
    assert (detail["served_version"], detail["served_run"]) == (3, run.run_dir.name)
    serve_env.registry.set_traffic("iris", {"variants": [{"alias": "production", "weight": 0.5},
                                                         {"alias": "candidate", "weight": 0.5}]})
    detail = client.get("/v1/models/iris", headers=serve_env.headers()).json()
    assert detail["served_version"] is None and detail["served_run"] is None  # the split picks per request


def test_status_page_shows_the_run(serve_env, make_client, run) -> None:
    serve_env.registry.register(run.artifact_dir, MODEL)
    client = make_client()
    html = client.get("/").text
    assert f"<code>{run.run_dir.name}</code>" in html
    by_model = {m["name"]: m for m in status_context(client.app.state.pool)["models"]}
    assert [v["run"] for v in by_model[MODEL]["versions"]] == [run.run_dir.name]
    assert [v["run"] for v in by_model["iris"]["versions"]] == [None, None]


def test_an_uploaded_run_artifact_answers_with_its_run(serve_env, make_client, run) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(run.artifact_dir).iterdir()):
            tar.add(path, arcname=f"model/{path.name}")
    client = make_client()
    answer = client.post(f"/v1/models/{MODEL}/versions", content=buf.getvalue(),
                         headers=serve_env.headers(admin=True, **{"Content-Type": "application/gzip"}))
    assert answer.status_code == 201, answer.text
    assert answer.json()["run"] == run.run_dir.name
