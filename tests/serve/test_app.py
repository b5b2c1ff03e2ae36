"""The FastAPI app in-process (TestClient): every route of C1's routers, their errors and their metrics."""

from __future__ import annotations

import doctest
import json
import random
import time

import numpy as np
import pytest
import scipy.stats
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch.testing import assert_close

from dlforge.models import build
from dlforge.registry.artifact import load_artifact, save_artifact
from dlforge.serve import inputs, main, schemas, settings
from dlforge.serve import service as service_module
from dlforge.serve.monitor import psi
from dlforge.serve.routing import TrafficConfig, choose_variant

PREDICT = "/v1/models/iris/predict"


def _post(client, url: str, body, headers: dict) -> object:
    """POST raw JSON text: json.dumps writes NaN, as Python clients do."""
    return client.post(url, content=json.dumps(body), headers={**headers, "Content-Type": "application/json"})


def _reference(serve_env, version: int, x: list) -> dict:
    return load_artifact(serve_env.dirs[version]).predict(torch.tensor(x, dtype=torch.float32))


def _samples(metrics_text: str, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of one metric family's samples named ``name``."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_docstring_examples() -> None:
    for module in (inputs, schemas, settings, main, service_module):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_predict_default_alias_and_version_match_the_artifact(serve_env, make_client) -> None:
    client = make_client()
    x = np.random.default_rng(0).normal(size=(5, 4)).tolist()
    cases = [({}, 1, "production"), ({"alias": "candidate"}, 2, "candidate"), ({"version": 2}, 2, "version:2"),
             ({"version": 1, "alias": "candidate"}, 1, "version:1")]  # an explicit version wins
    for extra, version, variant in cases:
        r = client.post(PREDICT, json={"inputs": x, **extra}, headers=serve_env.headers())
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model"], body["version"], body["variant"]) == ("iris", version, variant)
        assert len(body["request_id"]) == 32 and body["latency_ms"] > 0
        want = _reference(serve_env, version, x)
        probs = torch.tensor(body["probabilities"])
        assert_close(probs.sum(dim=1), torch.ones(5))
        assert_close(probs, want["probabilities"])
        assert body["outputs"] == want["labels"]
        assert body["class_names"] == serve_env.class_names


def test_latest_answers_without_production_alias(serve_env, make_client) -> None:
    for version in (1, 2):
        serve_env.registry.register(serve_env.dirs[version], "plain")  # no alias at all
    client = make_client()
    body = client.post("/v1/models/plain/predict", json={"inputs": [[0, 0, 0, 0]]}, headers=serve_env.headers()).json()
    assert (body["model"], body["version"], body["variant"]) == ("plain", 2, "latest")


def test_regression_outputs_are_numbers(serve_env, make_client, tmp_path) -> None:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [4]}, input_shape=(2,), num_outputs=1)
    folder = save_artifact(model, tmp_path / "reg", task="regression")
    serve_env.registry.register(folder, "house")
    client = make_client()
    x = [[0.5, -1.0], [2.0, 3.0]]
    body = client.post("/v1/models/house/predict", json={"inputs": x}, headers=serve_env.headers()).json()
    want = load_artifact(folder).predict(torch.tensor(x))["values"][:, 0]
    assert (body["variant"], body["probabilities"], body["class_names"]) == ("latest", None, None)
    assert_close(torch.tensor(body["outputs"]), want)


@pytest.mark.parametrize("body, path, message", [
    ({"inputs": [[1, 2, 3, 4]] * 3 + [[1, 2, 3, 4, 5]]}, "body.inputs.3", "expected shape [4], got [5]"),
    ({"inputs": [[1, 2, float("nan"), 4]]}, "body.inputs.0.2", "not a finite number"),
    ({"inputs": [[1, 2, 3, 4], "a text"]}, "body.inputs.1", "expected a nested list of numbers of shape [4], got a string"),
    ({"inputs": [[1, 2, 3, {"x": 1}]]}, "body.inputs.0.3", "expected a number, got an object"),
    ({"inputs": [[0, 0, 0, 0]] * 5}, "body.inputs", "at most 4 inputs per request, got 5"),
    ({"inputs": []}, "body.inputs", "List should have at least 1 item after validation, not 0"),
    ({"inputs": [[0, 0, 0, 0]], "version": 0}, "body.version", "Input should be greater than or equal to 1"),
    ({"inputs": [[0, 0, 0, 0]], "alias": "../x"}, "body.alias", "String should match pattern"),
    ({"inputs": [[0, 0, 0, 0]], "extra": 1}, "body.extra", "Extra inputs are not permitted"),
])
def test_invalid_predict_requests_are_422_naming_the_field(serve_env, make_client, body, path, message) -> None:
    client = make_client(max_inputs=4)
    r = _post(client, PREDICT, body, serve_env.headers())
    assert r.status_code == 422, r.text
    fields = r.json()["error"]["fields"]
    assert [f["path"] for f in fields] == [path]
    assert fields[0]["message"].startswith(message)
    assert "Traceback" not in r.text and str(serve_env.artifacts.parent) not in r.text


@pytest.mark.parametrize("url, body, status, code", [
    ("/v1/models/nope/predict", {"inputs": [[0, 0, 0, 0]]}, 404, "not_found"),
    (PREDICT, {"inputs": [[0, 0, 0, 0]], "alias": "staging"}, 404, "not_found"),
    (PREDICT, {"inputs": [[0, 0, 0, 0]], "version": 9}, 404, "not_found"),
    ("/v1/models/%2e%2e/predict", {"inputs": [[0, 0, 0, 0]]}, 400, "invalid_path"),
    ("/v1/models/%252e%252e%252fetc/predict", {"inputs": [[0, 0, 0, 0]]}, 400, "invalid_path"),
    ("/v1/models/-bad/predict", {"inputs": [[0, 0, 0, 0]]}, 400, "invalid_name"),
])
def test_unknown_or_bad_names(serve_env, make_client, url, body, status, code) -> None:
    client = make_client()
    r = client.post(url, json=body, headers=serve_env.headers())
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in r.text and str(serve_env.artifacts.parent) not in r.text


def test_full_queue_is_429_and_a_crash_is_a_bare_500(serve_env, make_client) -> None:
    from dlforge.serve.batching import QueueFullError

    client = make_client()
    batcher = client.app.state.pool.loaded("iris")[1].batcher

    async def full(x):
        raise QueueFullError(0.3, 256, 256)

    async def crash(x):
        raise RuntimeError(f"boom in {serve_env.artifacts}/secret")

    batcher.submit = full
    r = client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]]}, headers=serve_env.headers())
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "queue_full"
    batcher.submit = crash
    r = client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]]}, headers=serve_env.headers())
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
    assert "boom" not in r.text and "secret" not in r.text and "Traceback" not in r.text
    requests = _samples(client.get("/metrics").text, "dlforge_errors_total")
    assert {labels[1][1] for labels in requests} == {"429", "500"}


def test_predict_needs_a_key(serve_env, make_client) -> None:
    client = make_client()
    assert client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]]}).status_code == 401
    assert client.get("/v1/models").status_code == 401
    open_client = make_client(require_keys=False)
    assert open_client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]]}).status_code == 200


def test_feedback_and_experiment_accuracy(serve_env, make_client) -> None:
    client = make_client()
    rng = np.random.default_rng(1)
    truth = {"production": [], "candidate": []}  # (predicted, label) per request
    for i in range(12):
        alias = "production" if i % 2 else "candidate"
        x = rng.normal(size=(1, 4)).tolist()
        body = client.post(PREDICT, json={"inputs": x, "alias": alias}, headers=serve_env.headers()).json()
        label = serve_env.class_names[i % 3]
        r = client.post("/v1/models/iris/feedback", json={"request_id": body["request_id"], "label": label},
                        headers=serve_env.headers())
        assert r.status_code == 200 and r.json() == {"request_id": body["request_id"], "recorded": True}
        truth[alias].append(body["outputs"][0] == label)
    r = client.post("/v1/models/iris/feedback", json={"request_id": "0" * 32, "label": "setosa"},
                    headers=serve_env.headers())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    stats = client.get("/v1/models/iris/experiment", headers=serve_env.headers()).json()
    assert stats["model"] == "iris"
    for alias, hits in truth.items():
        v = stats["variants"][alias]
        assert (v["requests"], v["feedback"], v["correct"]) == (6, 6, sum(hits))
        assert v["accuracy"] == pytest.approx(sum(hits) / 6)
        assert v["versions"] == [1 if alias == "production" else 2]
    test = stats["test"]
    assert (test["control"], test["treatment"]) == ("production", "candidate")
    if sum(truth["production"]) + sum(truth["candidate"]) not in (0, 12):  # pooled variance > 0
        from statsmodels.stats.proportion import proportions_ztest

        z, p = proportions_ztest([sum(truth["candidate"]), sum(truth["production"])], [6, 6])
        assert test["z"] == pytest.approx(z) and test["p_value"] == pytest.approx(p)


def test_drift_report_against_the_reference(serve_env, make_client) -> None:
    client = make_client()
    x = np.random.default_rng(2).normal(loc=3.0, size=(80, 4))  # shifted: every feature drifts
    r = client.post(PREDICT, json={"inputs": x.tolist()}, headers=serve_env.headers())
    assert r.status_code == 200
    body = client.get("/v1/models/iris/drift", headers=serve_env.headers()).json()
    by_version = {v["version"]: v for v in body["versions"]}
    assert sorted(by_version) == [1, 2]
    assert by_version[2]["available"] is False and by_version[2]["n_live"] == 0
    report = by_version[1]
    assert report["available"] and report["n_live"] == 80
    reference = load_artifact(serve_env.dirs[1]).meta["training"]["reference"]
    for i, name in enumerate(reference["features"]):
        ref = np.asarray(reference["samples"][i])
        assert report["features"][name]["ks"] == pytest.approx(scipy.stats.ks_2samp(ref, x[:, i]).statistic)
        assert report["features"][name]["psi"] == pytest.approx(psi(ref, x[:, i].astype(np.float32)), rel=1e-4)
    assert set(reference["features"]) <= set(report["drifted"])
    gauges = _samples(client.get("/metrics").text, "dlforge_drift")
    assert gauges[(("feature", "x0"), ("model", "iris"), ("statistic", "ks"), ("version", "1"))] == pytest.approx(
        report["features"]["x0"]["ks"])
    assert client.get("/v1/models/nope/drift", headers=serve_env.headers()).status_code == 404


def test_models_list_and_detail(serve_env, make_client) -> None:
    client = make_client()
    listing = client.get("/v1/models", headers=serve_env.headers()).json()
    assert [(m["name"], m["latest_version"], m["versions"], m["aliases"], m["loaded_versions"]) for m in listing] == [
        ("iris", 2, 2, {"candidate": 2, "production": 1}, [1, 2])]
    r = client.get("/v1/models/iris", headers=serve_env.headers())
    detail = r.json()
    registered = serve_env.registry.versions("iris")
    assert [(v["version"], v["sha256"], v["created"], v["aliases"], v["loaded"]) for v in detail["versions"]] == [
        (mv.version, mv.sha256, mv.created, a, True) for mv, a in zip(registered, [["production"], ["candidate"]])]
    assert detail["versions"][0]["input_signature"] == {"shape": [None, 4], "dtype": "float32"}
    assert detail["versions"][0]["task"] == "classification" and detail["traffic"] is None
    assert str(serve_env.artifacts) not in r.text and "path" not in detail["versions"][0]
    assert client.get("/v1/models/nope", headers=serve_env.headers()).status_code == 404


def test_health_ready_and_metrics(serve_env, make_client) -> None:
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["iris"]}
    client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]] * 3}, headers=serve_env.headers())
    client.post(PREDICT, json={"inputs": [[0, 0, 0]]}, headers=serve_env.headers())
    client.post("/v1/models/nope/predict", json={"inputs": [[0, 0, 0, 0]]}, headers=serve_env.headers())
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    requests = _samples(r.text, "dlforge_requests_total")
    labels = (("model", "iris"), ("status", "200"), ("variant", "production"), ("version", "1"))
    assert requests[labels] == 1.0
    assert requests[(("model", "iris"), ("status", "422"), ("variant", "production"), ("version", "1"))] == 1.0
    assert requests[(("model", "_unknown"), ("status", "404"), ("variant", ""), ("version", ""))] == 1.0
    errors = _samples(r.text, "dlforge_errors_total")
    assert set(errors) == {(("model", "iris"), ("status", "422"), ("variant", "production"), ("version", "1")),
                           (("model", "_unknown"), ("status", "404"), ("variant", ""), ("version", ""))}
    assert _samples(r.text, "dlforge_request_latency_seconds_count")[
        (("model", "iris"), ("variant", "production"), ("version", "1"))] == 1.0
    assert _samples(r.text, "dlforge_batch_size_sum")[(("model", "iris"), ("version", "1"))] == 3.0
    loaded = _samples(r.text, "dlforge_loaded_model_info")
    assert set(loaded) == {(("alias", a), ("model", "iris"), ("version", v))
                           for a, v in (("production", "1"), ("candidate", "2"), ("latest", "2"))}
    assert _samples(r.text, "dlforge_requests_in_flight") == {(("model", "iris"),): 0.0,
                                                              (("model", "_unknown"),): 0.0}


def test_not_ready_while_a_served_model_is_missing(serve_env, make_client) -> None:
    client = make_client(models=["iris", "absent"])
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "loading", "models": ["iris"]}
    assert client.get("/healthz").status_code == 200


def test_only_the_listed_models_are_served(serve_env, make_client, tmp_path) -> None:
    serve_env.registry.register(serve_env.dirs[1], "other")
    client = make_client(models=["other"])
    assert client.get("/readyz").json() == {"status": "ready", "models": ["other"]}
    assert client.post(PREDICT, json={"inputs": [[0, 0, 0, 0]]}, headers=serve_env.headers()).status_code == 404


def test_sticky_ab_split_and_shadow(serve_env, make_client) -> None:
    config = {"variants": [{"alias": "production", "weight": 0.7}, {"alias": "candidate", "weight": 0.3}],
              "shadow": "candidate"}
    serve_env.registry.set_traffic("iris", config)
    client = make_client()
    parsed = TrafficConfig.model_validate(config)
    seen = {}
    for user in [f"user-{i}" for i in range(30)]:
        r = client.post(PREDICT, json={"inputs": [[0.1, 0.2, 0.3, 0.4]]}, headers=serve_env.headers(**{"X-User-Id": user}))
        body = r.json()
        assert body["variant"] == choose_variant(parsed, "iris", user, random.Random())
        assert body["version"] == {"production": 1, "candidate": 2}[body["variant"]]
        seen[body["variant"]] = seen.get(body["variant"], 0) + 1
        again = client.post(PREDICT, json={"inputs": [[0.0, 0.0, 0.0, 0.0]]},
                            headers=serve_env.headers(**{"X-User-Id": user})).json()
        assert again["variant"] == body["variant"]  # sticky
    assert set(seen) == {"production", "candidate"}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # shadow copies finish in the background
        variants = client.get("/v1/models/iris/experiment", headers=serve_env.headers()).json()["variants"]
        if variants.get("shadow:candidate", {}).get("requests") == 2 * seen["production"]:
            break
        time.sleep(0.02)
    assert variants["shadow:candidate"]["requests"] == 2 * seen["production"]  # only where v1 answered
    assert variants["shadow:candidate"]["versions"] == [2]


def test_openapi_documents_the_bodies(serve_env, make_client) -> None:
    spec = make_client().get("/openapi.json").json()
    assert spec["info"]["title"] == "dlforge"
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    for status in ("404", "422", "429"):
        assert predict["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    inputs_schema = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    assert inputs_schema["minItems"] == 1
    assert {s["type"] for s in inputs_schema["items"]["anyOf"]} == {"number", "string", "array", "object"}
    assert "/" not in spec["paths"]  # the HTML status page is not an API route
