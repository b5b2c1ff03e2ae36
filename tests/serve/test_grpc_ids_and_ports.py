"""gRPC's request ids, as REST's, and ports that are taken (issue 17's two gaps).

- A client's ``x-request-id`` metadata is a correlation id: it comes back as ``x-correlation-id``
  in the trailing metadata (answers and errors), beside the server's ``x-request-id``; it is
  logged with the server's id and stored beside the A/B record. Driven over a real channel with
  Triton's generated stub (this process must not import dlforge's own, see dlforge.serve.grpc_v2).
- ``dlforge serve`` on a ``--port`` or ``--grpc-port`` another process listens on: exit 2 with
  "port P is in use" before any model loads (was: exit 3 and a traceback for gRPC, exit 3 after
  loading every model for HTTP).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.serve.conftest import Server, ServeEnv, free_port, start_server, stop_server

grpc = pytest.importorskip("grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
from tritonclient.grpc import service_pb2_grpc  # noqa: E402  (after the skip)

X = np.asarray([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)


@pytest.fixture(scope="module")
def served(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ServeEnv, int]]:
    """(server with --grpc-port, env, gRPC port), logging at info (the correlation line)."""
    port = free_port()
    server = start_server(module_env, tmp_path_factory.mktemp("grpc-ids"), "--grpc-port", str(port),
                          "--log-level", "info")
    yield server, module_env, port
    stop_server(server)


@pytest.fixture(scope="module")
def stub(served) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served[2]}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str = "iris") -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(X.shape))
    return service_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[X.tobytes()])


def _metadata(env: ServeEnv, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {env.predict_key}"), *extra.items())


def test_infer_echoes_the_correlation_id_and_records_it(served, stub) -> None:
    server, env, _ = served
    answer, call = stub.ModelInfer.with_call(_request(), metadata=_metadata(env, **{"x-request-id": "trace-7"}))
    trailing = dict(call.trailing_metadata())
    rid = answer.parameters["request_id"].string_param
    assert trailing["x-correlation-id"] == "trace-7" and trailing["x-request-id"] == rid != "trace-7"
    deadline, record = time.monotonic() + 10, None
    while record is None and time.monotonic() < deadline:  # the server writes A/B records in batches
        record = env.registry.experiments.record_of("iris", rid)
        time.sleep(0.1)
    assert record is not None and record["correlation_id"] == "trace-7"
    assert env.registry.experiments.record_of("iris", "trace-7") is None  # nothing is keyed by the client's id
    deadline = time.monotonic() + 5
    while f"request {rid} has correlation id trace-7 (gRPC infer)" not in server.output():
        assert time.monotonic() < deadline, server.output()[-2000:]
        time.sleep(0.1)


def test_no_or_unusable_client_id_gets_only_the_server_id(served, stub) -> None:
    _, env, _ = served
    for extra in ({}, {"x-request-id": "has spaces"}, {"x-request-id": "x" * 65}):
        answer, call = stub.ModelInfer.with_call(_request(), metadata=_metadata(env, **extra))
        trailing = dict(call.trailing_metadata())
        assert "x-correlation-id" not in trailing, extra
        assert trailing["x-request-id"] == answer.parameters["request_id"].string_param


def test_errors_carry_both_ids(served, stub) -> None:
    _, env, _ = served
    for metadata, code in [(_metadata(env, **{"x-request-id": "c-42"}), grpc.StatusCode.NOT_FOUND),
                           ((("x-request-id", "c-42"),), grpc.StatusCode.UNAUTHENTICATED)]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_request("nope"), metadata=metadata)
        trailing = dict(caught.value.trailing_metadata())
        assert caught.value.code() == code and trailing["x-correlation-id"] == "c-42"
        assert len(trailing["x-request-id"]) == 32


@pytest.mark.parametrize("option", ["--port", "--grpc-port"])
def test_a_taken_port_is_a_clear_error_before_anything_starts(option, monkeypatch, tmp_path: Path) -> None:
    from dlforge.cli import app

    def started(*args, **kwargs):
        raise AssertionError("the server started on a taken port")

    monkeypatch.setattr("dlforge.serve.server.run", started)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), option: str(taken)}
        result = CliRunner().invoke(app, ["serve", "--registry", f"sqlite:///{tmp_path / 'r.db'}",
                                          *[x for pair in ports.items() for x in pair]])
    assert result.exit_code == 2, result.output
    assert f"port {taken} is in use" in result.output and "stop the process" in result.output


def test_a_second_server_on_a_live_grpc_port_exits_2_without_a_traceback(served, tmp_path: Path) -> None:
    """grpcio listens with SO_REUSEPORT: without the check a second server would share the port."""
    _, env, port = served
    done = subprocess.run([sys.executable, "-m", "dlforge.cli", "serve", "--registry", env.url, "--artifacts",
                           str(env.artifacts), "--port", str(free_port()), "--grpc-port", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"port {port} is in use" in done.stderr and "Traceback" not in done.stderr
