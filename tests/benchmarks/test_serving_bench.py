"""The serving benchmark's pieces: HTTP framing, the load generator, /metrics parsing, and a
``--quick`` run of the harness against the no-op server that ends in its JSON line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import h11
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


loadgen, serving, bodies = load("_loadgen"), load("serving"), load("_serving_bodies")


def h11_response(status: int, body: bytes, *, chunked: bool = False, close: bool = False) -> bytes:
    """A response framed by h11 (uvicorn's HTTP/1.1 implementation): the reference."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    conn.next_event()
    headers = [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    out = conn.send(h11.Response(status_code=status, headers=headers))
    if chunked:  # two chunks, to exercise the loop
        out += conn.send(h11.Data(data=body[:3])) + conn.send(h11.Data(data=body[3:]))
    else:
        out += conn.send(h11.Data(data=body))
    return out + conn.send(h11.EndOfMessage())


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("close", [False, True])
def test_frame_response_matches_h11_framing(chunked: bool, close: bool) -> None:
    raw = h11_response(503, b'{"error": "busy"}', chunked=chunked, close=close)
    following = h11_response(200, b"{}")  # a pipelined next response must stay in the buffer
    assert loadgen.frame_response(raw + following) == (503, len(raw), not close)
    for cut in (10, len(raw) - 1):  # incomplete: wait for more bytes
        assert loadgen.frame_response(raw[:cut]) is None


def test_percentile_equals_numpy() -> None:
    values = list(np.random.default_rng(0).exponential(size=101))
    for q in (0, 50, 95, 99, 100):
        assert loadgen.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert math.isnan(loadgen.percentile([], 50))


def test_batch_totals_reads_prometheus_text() -> None:
    registry = CollectorRegistry()
    hist = Histogram("dlforge_batch_size", "batch sizes", ["model", "version"], registry=registry,
                     buckets=(1, 2, 4, 8, 16, 32))
    observed = {("a", "1"): [1, 3, 8], ("a", "2"): [32], ("ab", "1"): [5, 5]}
    for (model, version), sizes in observed.items():
        for size in sizes:
            hist.labels(model=model, version=version).observe(size)
    text = generate_latest(registry).decode()
    assert serving.batch_totals(text, "a") == (44.0, 4.0)  # both versions of "a", not "ab"
    assert serving.batch_totals(text, "ab") == (10.0, 2.0)
    assert serving.batch_totals(text, "missing") == (0.0, 0.0)


def test_merge_runs_pools_rounds() -> None:
    rng = np.random.default_rng(1)
    runs = [{"concurrency": 8, "duration_s": 2.0, "requests": n, "errors": e, "statuses": {"200": n, "503": e},
             "sent": n + e + 5, "client_cpu_s": 0.2, "server_cpu_s": 1.5, "batch_sum": 40.0, "batch_count": 10.0,
             "latencies_ms": list(rng.exponential(5.0, size=n))} for n, e in ((300, 1), (200, 0))]
    merged = serving.merge_runs(runs)
    pooled = runs[0]["latencies_ms"] + runs[1]["latencies_ms"]
    assert merged["requests"] == 500 and merged["errors"] == 1 and merged["rounds"] == 2
    assert merged["statuses"] == {"200": 500, "503": 1}
    assert merged["throughput"] == 125.0  # 500 answers over 4 measured seconds
    for q in (50, 95, 99):
        assert merged[f"p{q}_ms"] == pytest.approx(np.percentile(pooled, q), abs=1e-3)
    assert merged["server_cpu_ms_per_request"] == pytest.approx(3.0 / 511 * 1000, abs=1e-3)
    assert merged["mean_batch"] == 4.0


def test_headline_figures_are_the_measured_ratios() -> None:
    def level(throughput: float, p99: float) -> dict:
        return {"throughput": throughput, "p99_ms": p99}

    results = {
        "minilm": {"dlforge_off": {"1": level(30, 40.0), "32": level(35, 900.0)},
                   "dlforge_on": {"1": level(31, 44.0), "32": level(105, 500.0)},
                   "plain": {"32": level(42, 1000.0)}},
        "cnn": {"dlforge_on": {"32": level(350, 90.0)}, "noop": {"32": level(1400, 30.0)},
                "batched": {"32": level(700, 40.0)}},
    }
    offline = {"minilm": {"32": {"batch": 16, "samples_per_s": 150.0}}}
    figures = serving.headline(results, offline)
    assert figures == {"minilm_batching_speedup_c32": 3.0, "minilm_fraction_of_offline_c32": 0.7,
                       "cnn_fraction_of_noop_c32": 0.25, "minilm_p99_ratio_c1": 1.1,
                       "cnn_v2_binary_fraction_of_noop_c32": None, "image224_v2_binary_over_json_speedup": None,
                       "cnn_batched_fraction_of_noop_c32": 0.5, "cnn_fraction_of_batched_c32": 0.5}
    versus = serving.comparisons(results)
    assert versus["minilm"]["32"] == {"on_over_dlforge_off": 3.0, "on_over_plain": 2.5}
    assert versus["cnn"]["32"] == {"on_over_noop": 0.25, "on_over_batched": 0.5}
    # nothing measured: all None
    assert serving.headline({}, {}) == dict.fromkeys([*serving.TARGETS, *serving.REPORTED])
    # With v2 rows the CNN's fraction is its fastest protocol's; image224's speedup is at the highest
    # level <= 32 both v2 rows ran.
    results["cnn"] |= {"dlforge_v2_json": {"32": level(280, 0.0)}, "dlforge_v2_binary": {"32": level(420, 0.0)}}
    results["image224"] = {"dlforge_v2_json": {"8": level(50, 0.0), "64": level(1, 0.0)},
                           "dlforge_v2_binary": {"8": level(150, 0.0), "64": level(9, 0.0)}}
    figures = serving.headline(results, offline)
    assert figures["cnn_fraction_of_noop_c32"] == 0.3 == figures["cnn_v2_binary_fraction_of_noop_c32"]
    assert figures["image224_v2_binary_over_json_speedup"] == 3.0
    assert figures["cnn_fraction_of_batched_c32"] == 0.6  # the fastest protocol's, over the floor


def test_batched_floor_answers_like_the_model(tmp_path: Path) -> None:
    """The ``batched`` baseline is the model behind dlforge's batcher: its answers are Artifact.predict's."""
    import numpy as np
    import torch
    from fastapi.testclient import TestClient

    from dlforge.models import build
    from dlforge.registry.artifact import load_artifact, save_artifact

    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3).eval()
    folder = save_artifact(model, tmp_path / "m", task="classification", class_names=["a", "b", "c"])
    x = np.random.default_rng(0).normal(size=(5, 4)).round(3)
    expected = load_artifact(folder).predict(torch.as_tensor(x, dtype=torch.float32))
    with TestClient(load("_baselines").batched_app(str(folder), max_batch_size=4, max_wait_ms=1.0)) as client:
        answers = [client.post("/predict", json={"inputs": [row.tolist()]}).json() for row in x]
    assert [a["outputs"][0] for a in answers] == list(expected["labels"])
    torch.testing.assert_close(torch.tensor([a["probabilities"][0] for a in answers]), expected["probabilities"])


def test_v2_bodies_are_what_tritonclient_sends() -> None:
    """The Open Inference Protocol bodies equal tritonclient's own (the reference client)."""
    import tritonclient.http as triton

    sample = np.random.default_rng(2).integers(0, 17, size=(1, 8, 8)).astype(np.float32)
    sample[0, 0, :2] = [0.5, 16.25]  # fractions stay fractions
    binary = triton.InferInput("input", [1, *sample.shape], "FP32")
    binary.set_data_from_numpy(sample[None], binary_data=True)
    expected, header = triton.InferenceServerClient.generate_request_body([binary])
    assert bodies.v2_binary_body(sample.tolist()) == (header, expected)
    as_json = triton.InferInput("input", [1, *sample.shape], "FP32")
    as_json.set_data_from_numpy(sample[None], binary_data=False)
    reference = json.loads(triton.InferenceServerClient.generate_request_body([as_json])[0])
    del reference["parameters"]  # tritonclient asks binary outputs by default; the JSON row asks JSON ones
    assert bodies.v2_json_body(sample.tolist()) == reference


def test_loadgen_sends_the_content_type_and_raw_bodies_given() -> None:
    raw = loadgen.build_request("127.0.0.1", 1, "/v2/x", b"\x00\x01", {"Inference-Header-Content-Length": "0"},
                                "application/octet-stream")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body == b"\x00\x01" and b"Content-Type: application/octet-stream" in head.split(b"\r\n")
    assert b"Content-Length: 2" in head.split(b"\r\n")


async def _alternating_server() -> tuple[asyncio.AbstractServer, int, list[int]]:
    """A keep-alive server answering 200, 503, 200, ... per connection; records each status."""
    answered: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                status = 200 if n % 2 == 0 else 503
                writer.write(h11_response(status, b'{"ok": true}', chunked=n % 3 == 0))
                answered.append(status)
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], answered


def test_run_load_counts_answers_and_errors() -> None:
    async def main() -> tuple[dict, list[int]]:
        server, port, answered = await _alternating_server()
        async with server:
            result = await loadgen.run_load("127.0.0.1", port, "/p", [b'{"inputs": [1]}'], concurrency=4,
                                            duration=0.4, warmup=0.0, max_requests=200)
        return result, answered

    result, answered = asyncio.run(main())
    ok, bad = answered.count(200), answered.count(503)
    # Every answer inside the window is counted once: 2xx as requests, the 503s as errors.
    assert result["requests"] + result["errors"] <= len(answered) <= 200
    assert result["requests"] >= ok - 4 and result["errors"] >= bad - 4  # at most the last one per connection late
    assert result["statuses"] == {"200": result["requests"], "503": result["errors"]}
    assert result["throughput"] == pytest.approx(result["requests"] / 0.4, rel=0.01)
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]


def test_run_load_reports_a_refused_port_as_errors() -> None:
    port = serving.free_port()  # nothing listens there
    result = asyncio.run(loadgen.run_load("127.0.0.1", port, "/", [b"{}"], concurrency=2, duration=0.1,
                                          warmup=0.0))
    assert result["requests"] == 0 and result["errors"] > 0
    assert result["p99_ms"] is None  # no latency to report, and no NaN in the JSON


def test_quick_noop_run_ends_in_the_json_line() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "serving.py"), "--quick", "--systems", "noop",
         "--levels", "1,4", "--duration", "0.6", "--warmup", "0.2", "--rounds", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 3, "a readable table comes before the JSON line"
    figures = json.loads(lines[-1], parse_constant=pytest.fail)  # strict JSON: no NaN or Infinity
    assert set(serving.TARGETS) <= set(figures)
    assert set(figures["targets"]) == set(serving.TARGETS)
    for target in figures["targets"].values():  # not measured in a no-op run: said so, not invented
        assert target["value"] is None and target["met"] is None
    assert figures["levels"] == [1, 4] and figures["bentoml"] == "not requested" and figures["rounds"] == 2
    assert figures["v2"] == "not requested" and figures["unmeasured"] == {}
    per_level = figures["results"]["cnn"]["noop"]
    for level in ("1", "4"):
        r = per_level[level]
        assert r["concurrency"] == int(level) and r["errors"] == 0 and r["requests"] > 0
        assert r["rounds"] == 2 and r["duration_s"] == pytest.approx(0.6, abs=0.01)
        assert r["statuses"] == {"200": r["requests"]}
        assert r["throughput"] == pytest.approx(r["requests"] / r["duration_s"], rel=0.01)
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["server_cpu_ms_per_request"] > 0


# ---------------------------------------------------------------- peer servers (KServe, MLServer)

servers = load("_servers")


def test_peer_status_probes_the_given_python() -> None:
    """A Python that imports the package and dlforge passes with the package's installed version;
    one that cannot is refused with the reason, and no Python at all names the missing option."""
    from importlib.metadata import version

    assert servers.peer_status(sys.executable, "fastapi") == (True, f"fastapi {version('fastapi')}")
    ok, note = servers.peer_status(sys.executable, "no_such_peer_package")
    assert not ok and "cannot import no_such_peer_package" in note and "ModuleNotFoundError" in note
    ok, note = servers.peer_status("/nonexistent/bin/python", "kserve")
    assert not ok and note.startswith("not installed: /nonexistent/bin/python could not run")
    assert servers.peer_status(None, "mlserver") == (False, "not installed: no --mlserver-python given")
    assert servers.bentoml_status(None) == (False, "not installed: no --bentoml-python given")


def test_peer_figures_are_throughput_and_fraction_of_noop() -> None:
    results = {"cnn": {"noop": {"32": {"throughput": 2000.0}}, "kserve_v2_json": {"32": {"throughput": 500.0}},
                       "mlserver_v2_json": {"1": {"throughput": 90.0}, "32": {"throughput": 900.0}}}}
    figures = serving.peer_figures(results)
    assert set(figures) == {f"cnn_{s}{k}" for s in ("kserve_v2_json", "kserve_v2_binary", "mlserver_v2_json")
                            for k in ("_c32", "_fraction_of_noop_c32")}
    assert figures["cnn_kserve_v2_json_c32"] == 500.0 and figures["cnn_kserve_v2_json_fraction_of_noop_c32"] == 0.25
    assert figures["cnn_mlserver_v2_json_fraction_of_noop_c32"] == 0.45
    assert figures["cnn_kserve_v2_binary_c32"] is None is figures["cnn_kserve_v2_binary_fraction_of_noop_c32"]
    del results["cnn"]["noop"]  # no ceiling measured: no fraction invented
    assert serving.peer_figures(results)["cnn_mlserver_v2_json_fraction_of_noop_c32"] is None


def test_mlserver_peer_gets_dlforges_batching_and_bodies(tmp_path: Path) -> None:
    """MLServer's model settings carry dlforge_on's batch size and wait (in seconds), the server
    listens on the port the benchmark measures, and the rows send dlforge's V2 bodies."""
    v2 = {"json": tmp_path / "v2.json", "binary": tmp_path / "v2-binary.json", "header": 144}
    server = servers.peer_server("mlserver_v2_json", sys.executable, tmp_path / "art", "cnn",
                                 servers.server_env(1), tmp_path, v2, **serving.BATCH_ON)
    try:  # this Python has no mlserver: the process exits at once, its settings stay
        settings = json.loads((tmp_path / "mlserver-cnn" / "cnn" / "model-settings.json").read_text())
        assert settings == {"name": "cnn", "implementation": "_mlserver_model.DlforgeRuntime",
                            "max_batch_size": 32, "max_batch_time": 0.003, "parameters": {"uri": str(tmp_path / "art")}}
        assert server.proc.args[-2:] == ["start", str(tmp_path / "mlserver-cnn")]
        assert (server.path, server.ready) == ("/v2/models/cnn/infer", "/v2/models/cnn/ready")
        assert (server.bodies, server.content_type) == (v2["json"], "application/json")
        with pytest.raises(RuntimeError, match="mlserver_v2_json exited"):
            server.wait(timeout=30)
    finally:
        server.stop()
    binary = servers.peer_server("kserve_v2_binary", "/bin/true", tmp_path / "art", "cnn",
                                 servers.server_env(1), tmp_path, v2, **serving.BATCH_ON)
    binary.stop()
    assert binary.headers == {"Inference-Header-Content-Length": "144"}
    assert (binary.bodies, binary.content_type) == (v2["binary"], "application/octet-stream")
    assert binary.proc.args[binary.proc.args.index("--http_port") + 1] == str(binary.port)


def test_peer_arms_without_their_python_are_skipped_with_the_reason() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "serving.py"), "--systems", "noop,kserve_v2_json,kserve_v2_binary,"
         "mlserver_v2_json", "--models", "cnn", "--levels", "1", "--duration", "0.3", "--warmup", "0.1",
         "--rounds", "1", "--kserve-python", "/nonexistent/bin/python"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["kserve"].startswith("not installed: /nonexistent/bin/python could not run")
    assert figures["mlserver"] == "not installed: no --mlserver-python given"
    assert list(figures["results"]["cnn"]) == ["noop"]  # the peer arms did not run
    assert all(figures[k] is None for k in serving.peer_figures({}))
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "serving.py"), "--systems", "kserve_v3_json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "unknown systems/models: ['kserve_v3_json']" in bad.stderr
