"""Request ids are the server's: a client's ``X-Request-Id`` is only a correlation id.

Records (the A/B experiment's requests and their feedback) are keyed by a uuid4 hex the
server generates per request, so two clients that pick the same id cannot overwrite each
other's records. The client's id comes back as ``X-Correlation-Id``, is stored beside the
record and is logged with the server's id.
"""

from __future__ import annotations

import logging
import re

from dlforge.serve.routing import Experiment

PREDICT = "/v1/models/iris/predict"
FEEDBACK = "/v1/models/iris/feedback"
BODY = {"inputs": [[0.1, 0.2, 0.3, 0.4]], "alias": "production"}
SERVER_ID = re.compile(r"[0-9a-f]{32}")


def test_two_predicts_with_one_client_id_keep_two_records(serve_env, make_client) -> None:
    client = make_client()
    headers = serve_env.headers(**{"X-Request-Id": "trace-1"})
    answers = [client.post(PREDICT, json=BODY, headers=headers) for _ in range(2)]
    ids = [r.json()["request_id"] for r in answers]
    assert all(r.status_code == 200 for r in answers) and ids[0] != ids[1]
    for r, rid in zip(answers, ids):
        assert SERVER_ID.fullmatch(rid) and r.headers["x-request-id"] == rid
        assert r.headers["x-correlation-id"] == "trace-1"
    stats = client.get("/v1/models/iris/experiment", headers=serve_env.headers()).json()
    assert stats["variants"]["production"]["requests"] == 2
    experiment = client.app.state.pool.experiment("iris")
    assert [experiment.record_of(rid)["correlation_id"] for rid in ids] == ["trace-1", "trace-1"]


def test_feedback_goes_by_the_server_id(serve_env, make_client) -> None:
    client = make_client()
    answer = client.post(PREDICT, json=BODY, headers=serve_env.headers(**{"X-Request-Id": "mine-7"})).json()
    by_client_id = client.post(FEEDBACK, json={"request_id": "mine-7", "label": answer["outputs"][0]},
                               headers=serve_env.headers())
    assert by_client_id.status_code == 404 and by_client_id.json()["error"]["code"] == "not_found"
    by_server_id = client.post(FEEDBACK, json={"request_id": answer["request_id"], "label": answer["outputs"][0]},
                               headers=serve_env.headers())
    assert by_server_id.json() == {"request_id": answer["request_id"], "recorded": True}
    stats = client.get("/v1/models/iris/experiment", headers=serve_env.headers()).json()
    assert stats["variants"]["production"]["correct"] == 1


def test_errors_carry_the_server_id_and_echo_the_correlation_id(serve_env, make_client, caplog) -> None:
    client = make_client()
    with caplog.at_level(logging.INFO, logger="dlforge.serve"):
        r = client.post("/v1/models/nope/predict", json=BODY, headers=serve_env.headers(**{"X-Request-Id": "c-42"}))
    rid = r.json()["error"]["request_id"]
    assert r.status_code == 404 and SERVER_ID.fullmatch(rid) and r.headers["x-request-id"] == rid
    assert r.headers["x-correlation-id"] == "c-42"
    assert any(rid in m and "c-42" in m for m in caplog.messages)  # the log joins the two ids


def test_an_unusable_client_id_is_not_echoed(serve_env, make_client) -> None:
    client = make_client()
    for given in ("bad id", "a" * 65, "<script>"):
        r = client.get("/healthz", headers={"X-Request-Id": given})
        assert SERVER_ID.fullmatch(r.headers["x-request-id"]) and "x-correlation-id" not in r.headers
    assert "x-correlation-id" not in client.get("/healthz").headers
    assert client.get("/healthz", headers={"X-Request-Id": "ok.1_A-b"}).headers["x-correlation-id"] == "ok.1_A-b"


def test_experiment_keeps_the_correlation_id_beside_the_record() -> None:
    exp = Experiment()
    exp.record("s1", "production", 1, ["cat"], 0.01, correlation_id="c1")
    exp.record("s2", "production", 1, ["dog"], 0.01)
    assert exp.record_of("s1")["correlation_id"] == "c1" and exp.record_of("s2")["correlation_id"] is None
    assert exp.record_of("c1") is None and exp.stats()["variants"]["production"]["requests"] == 2
