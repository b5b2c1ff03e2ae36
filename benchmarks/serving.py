"""How much does dlforge serve's dynamic batching buy under concurrent load, and what does it cost?

One command: ``python benchmarks/serving.py [--quick] [--levels 1,8,32,64] [--duration 5]
[--bentoml-python PATH] [--kserve-python PATH] [--mlserver-python PATH]`` (5 to 8 minutes on two
shared cores; ``--quick``: about 90 s).

Closed-loop load on loopback (``benchmarks/_loadgen.py`` in its own process: N keep-alive
connections each sending one request and waiting for its answer), at each concurrency
level, against these servers, each one uvicorn process with one worker:

* ``dlforge_off``: ``python -m dlforge.cli serve`` with ``--max-batch-size 1`` (batching off);
* ``dlforge_on``: the same with ``--max-batch-size 32 --max-wait-ms 3`` (batching on);
  both require an API key (a predict key created in the benchmark's registry);
* ``plain``: the FastAPI app most users write, one model call per request
  (``benchmarks/_baselines.py``, a ``def`` route under ``torch.inference_mode``);
* ``noop``: the same request shape answered without a model, the HTTP stack alone;
* ``batched``: the no-op app plus the model behind dlforge's own batcher (same settings), and
  nothing else (no key, checks, metrics, records or drift): the least any batched server of
  the model does, so the CNN's ``batched`` fraction of the no-op bounds what the no-op target
  can reach on the machine;
* ``bentoml``: BentoML with adaptive batching (``benchmarks/_bento_service.py``), when
  ``--bentoml-python`` points at a Python that can ``import bentoml``;
* ``dlforge_v2_json`` and ``dlforge_v2_binary``: dlforge_on's server answering the Open
  Inference Protocol (``POST /v2/models/{name}/infer``) with JSON tensors, and with the binary
  tensor extension (input and outputs), for ``cnn`` and ``image224``; left out, with the
  reason in the JSON line's ``v2``, when the app has no such route;
* ``kserve_v2_json``, ``kserve_v2_binary`` and ``mlserver_v2_json``: KServe's and MLServer's Python
  servers answering the same V2 bodies for the same models, when ``--kserve-python`` /
  ``--mlserver-python`` point at a Python that imports the package and dlforge (its own
  environment: ``_kserve_model.py``, ``_mlserver_model.py`` load the same artifact and call the
  same ``encode`` and ``predict``; MLServer batches with its adaptive batching at dlforge_on's
  settings, KServe's Python server has no batching; MLServer has no binary tensor extension).

Models (``benchmarks/_serving_bodies.py``), each request carrying ONE sample: ``cnn`` (the
digits CNN of ``examples/digits_cnn.yaml``, raw 1x8x8 pixels), ``minilm`` (BERT MiniLM with a
two-class head, 16 token ids) and ``image224`` (a one-block CNN on raw 3x224x224 pixels; v2
rows only, for what the request encoding costs on a large tensor).

The artifacts carry a drift reference (as ``dlforge train`` writes), so dlforge's drift
monitor does its per-request work. Servers run interleaved: each level's time is split
into ``--rounds`` runs (default 2) and in every round each system takes its turn, in an
order that rotates, so slow drift in the shared machine's speed hits all alike; a
system's runs are pooled (answers over seconds, percentiles over every latency).

Measured per level: throughput (2xx answers per second), p50/p95/p99 latency (ms),
errors (non-2xx or broken connections), the server's CPU per request, and for dlforge the
mean batch size formed (``dlforge_batch_size_sum/_count`` deltas from ``/metrics``).
Ceilings, in the same run: the model's offline throughput (``Artifact.predict`` on a batch
of the mean size dlforge_on formed at that level, same torch threads, measured in this
process right after the level's runs) and the no-op server's throughput.

Targets at concurrency 32 (MiniLM unless named): batching speedup (on / off throughput)
>= 2; on's throughput >= 0.7 of offline at its mean batch size; the CNN served with
batching >= 0.6 of the no-op endpoint (on the faster of v1 and v2); and at concurrency 1 the
batching-on p99 <= 1.2 x batching-off p99 (batching must not tax a lone client). Also
reported: the CNN over v2 binary as a fraction of the no-op, and image224's v2 binary over v2
JSON throughput (at concurrency 32, or the highest level run below it), the ``batched``
floor's fraction of the no-op and dlforge's fraction of that floor (CNN, concurrency 32).

Torch threads: every server process and the offline ceilings use ``--threads`` (default
1). On two cores the event loop, the batch worker and the load generator share the
CPUs; two intra-op threads made MiniLM 10x slower at batch 1 and 3x slower at batch 32
on the shared machine (OpenMP threads spinning against the other processes), one was
best.

The last line printed is one JSON object with the figures. Pieces: ``_loadgen.py`` (the load
generator), ``_servers.py`` (a server process, its CPU and /metrics), ``_serving_bodies.py``
(models and request bodies).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the load generator sits beside this file
    sys.path.insert(0, str(HERE))
from _loadgen import percentile  # noqa: E402  (no torch: cheap)
from _servers import (PEERS, Server, batch_totals, bentoml_status, free_port, peer_server,  # noqa: E402,F401
                      peer_status, process_tree_cpu, server_env)
from _serving_bodies import build_artifacts, offline_throughput, write_bodies, write_v2_bodies  # noqa: E402

FULL = {"levels": [1, 8, 32, 64], "duration": 5.0, "warmup": 0.5, "rounds": 2}
QUICK = {"levels": [1, 8], "duration": 1.0, "warmup": 0.3, "rounds": 1}
SYSTEMS = ("dlforge_off", "dlforge_on", "plain", "noop", "batched", "bentoml", "dlforge_v2_json", "dlforge_v2_binary", *PEERS)
V2_SYSTEMS = ("dlforge_v2_json", "dlforge_v2_binary")
V2_MODELS = ("cnn", "image224")  # the models the v2 rows run (image224 runs nothing else)
MODELS = ("cnn", "minilm", "image224")
BATCH_ON = {"max_batch_size": 32, "max_wait_ms": 3.0}
TARGETS = {  # name: (comparison, threshold)
    "minilm_batching_speedup_c32": (">=", 2.0),
    "minilm_fraction_of_offline_c32": (">=", 0.7),
    "cnn_fraction_of_noop_c32": (">=", 0.6),
    "minilm_p99_ratio_c1": ("<=", 1.2),
}
REPORTED = ("cnn_v2_binary_fraction_of_noop_c32", "image224_v2_binary_over_json_speedup",  # figures without a target
            "cnn_batched_fraction_of_noop_c32", "cnn_fraction_of_batched_c32")
V2_ABSENT = "v2 routes not present"


# ---------------------------------------------------------------- runs (no torch)

def load_run(server: Server, bodies_file: Path, concurrency: int, duration: float, warmup: float) -> dict:
    """One load-generator run against ``server``, with the server's CPU and batch totals over it."""
    before_batches, before_cpu = server.batch_totals(), process_tree_cpu(server.proc.pid)
    argv = [sys.executable, str(HERE / "_loadgen.py"), "--port", str(server.port), "--path", server.path,
            "--bodies", str(server.bodies or bodies_file), "--concurrency", str(concurrency), "--duration", str(duration),
            "--warmup", str(warmup), "--latencies", "--content-type", server.content_type]
    if server.content_type != "application/json":
        argv.append("--binary")
    for key, value in server.headers.items():
        argv += ["--header", f"{key}: {value}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + duration + 90, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = process_tree_cpu(server.proc.pid) - before_cpu
    after_batches = server.batch_totals()
    if before_batches is not None and after_batches is not None:
        result["batch_sum"] = after_batches[0] - before_batches[0]
        result["batch_count"] = after_batches[1] - before_batches[1]
    return result


def first_body(path: Path, content_type: str) -> bytes:
    """The first body of a bodies file, as the load generator sends it."""
    first = json.loads(path.read_text(encoding="utf-8"))[0]
    return base64.b64decode(first) if content_type != "application/json" else json.dumps(first).encode()


def v2_status() -> tuple[bool, str]:
    """Whether dlforge's app serves ``POST /v2/models/{name}/infer``, and a line saying so."""
    from dlforge.serve.main import create_app
    from dlforge.serve.settings import ServeSettings

    present = "/v2/models/{name}/infer" in create_app(ServeSettings()).openapi()["paths"]
    return present, "v2 routes present" if present else V2_ABSENT


def merge_runs(runs: list[dict]) -> dict:
    """One level's figures from its runs (rounds): counts add up, latencies pool.

    Example:
        >>> a = {"concurrency": 1, "duration_s": 1.0, "requests": 2, "errors": 0, "statuses": {"200": 2},
        ...      "sent": 3, "client_cpu_s": 0.1, "server_cpu_s": 0.3, "latencies_ms": [1.0, 3.0]}
        >>> m = merge_runs([a, {**a, "latencies_ms": [2.0, 4.0]}])
        >>> m["throughput"], m["p50_ms"], m["server_cpu_ms_per_request"]
        (2.0, 2.5, 100.0)
    """
    seconds = sum(r["duration_s"] for r in runs)
    lat = [v for r in runs for v in r["latencies_ms"]]
    sent = max(sum(r["sent"] for r in runs), 1)
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    merged = {
        "concurrency": runs[0]["concurrency"],
        "duration_s": round(seconds, 3),
        "requests": len(lat),
        "errors": sum(r["errors"] for r in runs),
        "statuses": dict(sorted(statuses.items())),
        "throughput": round(len(lat) / seconds, 2),
        **{f"p{q}_ms": round(percentile(lat, q), 3) if lat else None for q in (50, 95, 99)},
        "mean_ms": round(sum(lat) / len(lat), 3) if lat else None,
        "rounds": len(runs),
        # CPU over everything the server answered during the runs (warmup and drain included).
        "server_cpu_ms_per_request": round(sum(r["server_cpu_s"] for r in runs) / sent * 1000, 3),
        "client_cpu_us_per_request": round(sum(r["client_cpu_s"] for r in runs) / sent * 1e6, 1),
    }
    if all("batch_count" in r for r in runs):
        count = sum(r["batch_count"] for r in runs)
        merged["mean_batch"] = round(sum(r["batch_sum"] for r in runs) / count, 2) if count else None
    return merged


# ---------------------------------------------------------------- servers

def start_servers(model: str, systems: list[str], art_dir: Path | None, registry: dict[str, Any],
                  threads: int, bentoml_python: str | None, logs: Path,
                  v2_bodies: dict[str, Any] | None = None, peers: dict[str, str] | None = None) -> dict[str, Server]:
    """Start every server a model's runs need and wait until each is ready (``v2_bodies``: the
    ``json`` and ``binary`` body files of the v2 systems and the binary bodies' ``header`` length;
    ``peers``: the Python of each peer package, ``{"kserve": path, "mlserver": path}``)."""
    env, py = server_env(threads), sys.executable
    servers: dict[str, Server] = {}
    try:
        for system in systems:
            log = logs / f"{model}-{system}.log"
            if system.startswith("dlforge"):
                batch = BATCH_ON if system != "dlforge_off" else {"max_batch_size": 1, "max_wait_ms": 0.0}
                argv = [py, "-m", "dlforge.cli", "serve", "--registry", registry["url"], "--artifacts", registry["artifacts"],
                        "--host", "127.0.0.1", "--port", "{port}", "--model", model, "--log-level", "warning",
                        "--max-batch-size", str(batch["max_batch_size"]), "--max-wait-ms", str(batch["max_wait_ms"])]
                headers, path, extra = {"Authorization": f"Bearer {registry['key']}"}, f"/v1/models/{model}/predict", {}
                if system in V2_SYSTEMS:
                    path, kind = f"/v2/models/{model}/infer", system.removeprefix("dlforge_v2_")
                    extra = {"bodies": v2_bodies[kind]}
                    if kind == "binary":
                        headers["Inference-Header-Content-Length"] = str(v2_bodies["header"])
                        extra["content_type"] = "application/octet-stream"
                servers[system] = Server(system, argv, env, path, ready="/readyz", headers=headers, model=model,
                                         log=log, **extra)
            elif system == "plain":
                argv = [py, str(HERE / "_baselines.py"), "plain", "--artifact", str(art_dir), "--port", "{port}"]
                servers[system] = Server(system, argv, env, "/predict", log=log)
            elif system == "noop":
                servers[system] = Server(system, [py, str(HERE / "_baselines.py"), "noop", "--port", "{port}"],
                                         env, "/predict", log=log)
            elif system == "batched":
                argv = [py, str(HERE / "_baselines.py"), "batched", "--artifact", str(art_dir), "--port", "{port}",
                        "--max-batch-size", str(BATCH_ON["max_batch_size"]), "--max-wait-ms", str(BATCH_ON["max_wait_ms"])]
                servers[system] = Server(system, argv, env, "/predict", log=log)
            elif system in PEERS:
                servers[system] = peer_server(system, (peers or {})[PEERS[system]], art_dir, model, env, logs,
                                              v2_bodies, **BATCH_ON)
            elif system == "bentoml":
                benv = {**env, "DLFORGE_BENCH_ARTIFACT": str(art_dir),
                        "DLFORGE_BENCH_MAX_BATCH": str(BATCH_ON["max_batch_size"])}
                argv = [bentoml_python, "-m", "bentoml", "serve", "_bento_service:DlforgeModel",
                        "--host", "127.0.0.1", "--port", "{port}"]
                servers[system] = Server(system, argv, benv, "/predict", cwd=HERE, log=log)
        for server in servers.values():
            server.wait()
    except BaseException:  # one failed to start: leave no process behind (its log stays)
        for server in servers.values():
            server.stop()
        raise
    return servers


def register(folder: Path, artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A fresh SQLite registry with both models (alias production) and a predict key."""
    from dlforge.registry.store import Registry

    url, store = f"sqlite:///{folder / 'registry.db'}", folder / "store"
    registry = Registry(url, store)
    try:
        for name, art in artifacts.items():
            version = registry.register(art["dir"], name)
            registry.set_alias(name, "production", version.version)
        key = registry.create_key(label="serving benchmark")
    finally:
        registry.close()
    return {"url": url, "artifacts": str(store), "key": key}


# ---------------------------------------------------------------- figures

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def figure(results: dict, model: str, system: str, level: int, key: str) -> float | None:
    return results.get(model, {}).get(system, {}).get(str(level), {}).get(key)


def headline(results: dict, offline: dict) -> dict[str, float | None]:
    """The target figures and the REPORTED ones (None where the run did not measure what they need).

    The CNN's fraction of the no-op is its fastest protocol's (v1, v2 JSON or v2 binary);
    image224's speedup is at concurrency 32, or the highest level below it both v2 rows ran.
    """
    on32 = figure(results, "minilm", "dlforge_on", 32, "throughput")
    ceiling = offline.get("minilm", {}).get("32", {}).get("samples_per_s")
    cnn = [figure(results, "cnn", s, 32, "throughput") for s in ("dlforge_on", *V2_SYSTEMS)]
    image = results.get("image224", {})
    shared = sorted(int(v) for v in set(image.get("dlforge_v2_json", {})) & set(image.get("dlforge_v2_binary", {}))
                    if int(v) <= 32)
    noop, batched = figure(results, "cnn", "noop", 32, "throughput"), figure(results, "cnn", "batched", 32, "throughput")
    fastest = max((t for t in cnn if t is not None), default=None)
    return {
        "minilm_batching_speedup_c32": ratio(on32, figure(results, "minilm", "dlforge_off", 32, "throughput")),
        "minilm_fraction_of_offline_c32": ratio(on32, ceiling),
        "cnn_fraction_of_noop_c32": ratio(fastest, noop),
        "minilm_p99_ratio_c1": ratio(figure(results, "minilm", "dlforge_on", 1, "p99_ms"),
                                     figure(results, "minilm", "dlforge_off", 1, "p99_ms")),
        "cnn_v2_binary_fraction_of_noop_c32": ratio(cnn[2], noop),
        "image224_v2_binary_over_json_speedup": None if not shared else ratio(
            figure(results, "image224", "dlforge_v2_binary", shared[-1], "throughput"),
            figure(results, "image224", "dlforge_v2_json", shared[-1], "throughput")),
        # The floor under the no-op target: the model work alone behind the batcher, and dlforge against it.
        "cnn_batched_fraction_of_noop_c32": ratio(batched, noop),
        "cnn_fraction_of_batched_c32": ratio(fastest, batched),
    }


def peer_figures(results: dict) -> dict[str, float | None]:
    """Each peer server's CNN throughput at concurrency 32 and its fraction of the no-op's (None: not run).

    Example:
        >>> cnn = {"noop": {"32": {"throughput": 1000.0}}, "mlserver_v2_json": {"32": {"throughput": 400.0}}}
        >>> peer_figures({"cnn": cnn})["cnn_mlserver_v2_json_fraction_of_noop_c32"]
        0.4
    """
    noop, out = figure(results, "cnn", "noop", 32, "throughput"), {}
    for system in PEERS:
        out[f"cnn_{system}_c32"] = figure(results, "cnn", system, 32, "throughput")
        out[f"cnn_{system}_fraction_of_noop_c32"] = ratio(out[f"cnn_{system}_c32"], noop)
    return out


def comparisons(results: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """dlforge_on's throughput over each other system's, per model and level."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for model, systems in results.items():
        for level, on in systems.get("dlforge_on", {}).items():
            out.setdefault(model, {})[level] = {
                f"on_over_{other}": ratio(on["throughput"], systems[other][level]["throughput"])
                for other in systems if other != "dlforge_on" and level in systems[other]}
    return out


def print_table(results: dict, offline: dict, levels: list[int]) -> None:
    print(f"  {'model':8s} {'system':17s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} "
          f"{'p99 ms':>8s} {'errors':>6s} {'batch':>6s} {'srv cpu ms/req':>14s}")
    for model, systems in results.items():
        for system, per_level in systems.items():
            for level in levels:
                r = per_level.get(str(level))
                if r is None:
                    continue
                batch = f"{r['mean_batch']:6.2f}" if r.get("mean_batch") else f"{'':6s}"
                ms = " ".join(f"{r[k]:8.2f}" if r[k] is not None else f"{'-':>8s}"
                              for k in ("p50_ms", "p95_ms", "p99_ms"))
                print(f"  {model:8s} {system:17s} {level:4d} {r['throughput']:8.1f} {ms} {r['errors']:6d} {batch} "
                      f"{r['server_cpu_ms_per_request']:14.3f}")
    for model, per_level in offline.items():
        line = ", ".join(f"c={level}: batch {c['batch']} {c['samples_per_s']:.0f}" for level, c in per_level.items())
        print(f"  offline {model} samples/s at dlforge_on's mean batch ({line})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="levels 1 and 8, one second each: a smoke run")
    parser.add_argument("--levels", help="comma-separated concurrency levels (default 1,8,32,64)")
    parser.add_argument("--duration", type=float, help="measured seconds per level and system (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each measured run (default 0.5)")
    parser.add_argument("--rounds", type=int, help="split each level's time into this many interleaved runs "
                        "(default 2)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"any of {','.join(SYSTEMS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"any of {','.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every server (default 1)")
    parser.add_argument("--bentoml-python", help="a Python that can import bentoml (e.g. /work/bentovenv/bin/python)")
    parser.add_argument("--kserve-python", help="a Python that can import kserve and dlforge (its own venv)")
    parser.add_argument("--mlserver-python", help="a Python that can import mlserver and dlforge (its own venv)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs)")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    levels = [int(v) for v in args.levels.split(",")] if args.levels else preset["levels"]
    duration, warmup = args.duration or preset["duration"], args.warmup if args.warmup is not None else preset["warmup"]
    rounds = args.rounds or preset["rounds"]
    systems = [s for s in args.systems.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(systems) - set(SYSTEMS)) + sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown systems/models: {unknown}")
    bento_ok, bento_note = bentoml_status(args.bentoml_python) if "bentoml" in systems else (False, "not requested")
    if not bento_ok and "bentoml" in systems:
        systems.remove("bentoml")
    peers, peer_notes = {}, {}  # package: its Python, and a line on what was found
    for package in ("kserve", "mlserver"):
        python, wanted = getattr(args, f"{package}_python"), [s for s in systems if PEERS.get(s) == package]
        ok, peer_notes[package] = peer_status(python, package) if wanted else (False, "not requested")
        if ok:
            peers[package] = python
        systems = systems if ok else [s for s in systems if s not in wanted]
    v2_ok, v2_note = v2_status() if set(V2_SYSTEMS) & set(systems) else (False, "not requested")
    if not v2_ok:
        systems = [s for s in systems if s not in V2_SYSTEMS]
    if not {*V2_SYSTEMS, *PEERS} & set(systems):
        models = [m for m in models if m != "image224"]  # it runs only the v2 rows
    model_systems = [s for s in systems if s != "noop"]
    started = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="dlforge-serving-bench-"))
    results: dict[str, dict[str, dict[str, dict]]] = {}
    offline: dict[str, dict[str, float]] = {}
    artifacts = build_artifacts(tmp, models) if model_systems else {}
    registry = register(tmp, artifacts) if any(s.startswith("dlforge") for s in model_systems) else {}
    # The no-op endpoint runs beside the CNN (interleaved, the same bodies): it is the CNN's ceiling.
    noop = ["noop"] if "noop" in systems else []
    def runs_on(model: str, system: str) -> bool:  # v2 rows for V2_MODELS; image224 runs nothing else
        if system == "batched":  # the floor under the no-op target: only the CNN's keys read it
            return model == "cnn"
        return model in V2_MODELS if system in V2_SYSTEMS or system in PEERS else model != "image224"

    groups = [(m, [s for s in model_systems if runs_on(m, s)] + (noop if m == "cnn" else [])) for m in artifacts]
    if noop and "cnn" not in artifacts:
        groups.append(("cnn", noop))
    for model, group in groups:
        art = artifacts.get(model)
        bodies = tmp / f"{model}.json"
        v2_bodies = None
        if art and {*V2_SYSTEMS, *PEERS} & set(group):
            v2_bodies = {"json": tmp / f"{model}-v2.json", "binary": tmp / f"{model}-v2-binary.json"}
            v2_bodies["header"] = write_v2_bodies(art["x"], v2_bodies["json"], v2_bodies["binary"])
        if art:
            write_bodies(art["x"] if model != "image224" else art["x"][:1], bodies)  # image224: v2 rows only
        else:  # no-op alone: a digit-shaped body without building the model
            bodies.write_text(json.dumps([{"inputs": [[[[0.5] * 8] * 8]]}]), encoding="utf-8")
        servers = start_servers(model, group, art["dir"] if art else None, registry, args.threads,
                                args.bentoml_python, tmp, v2_bodies, peers)
        ceiling_of = None
        if art and "dlforge_on" in group:
            import torch

            from dlforge.registry.artifact import load_artifact

            torch.set_num_threads(args.threads)  # as the servers have it
            ceiling_of = load_artifact(art["dir"])
        try:
            for server in servers.values():
                server.first_request(first_body(server.bodies or bodies, server.content_type))
            for i, level in enumerate(levels):
                runs: dict[str, list[dict]] = {system: [] for system in group}
                for k in range(i * rounds, (i + 1) * rounds):
                    for system in group[k % len(group):] + group[:k % len(group)]:  # rotate the order
                        runs[system].append(load_run(servers[system], bodies, level, duration / rounds, warmup))
                for system, parts in runs.items():
                    r = results.setdefault(model, {}).setdefault(system, {})[str(level)] = merge_runs(parts)
                    print(f"  {model} {system} c={level}: {r['throughput']:.1f} req/s, p99 {r['p99_ms']} ms,"
                          f" errors {r['errors']}" + (f", batch {r['mean_batch']}" if r.get("mean_batch") else ""),
                          file=sys.stderr, flush=True)
                batch = results[model].get("dlforge_on", {}).get(str(level), {}).get("mean_batch")
                if ceiling_of is not None and batch:  # right after the runs: the machine as they had it
                    size = max(1, round(batch))
                    offline.setdefault(model, {})[str(level)] = {
                        "batch": size, "samples_per_s": round(offline_throughput(ceiling_of, art["model_x"], size), 1)}
        finally:
            for server in servers.values():
                server.stop()

    figures, peer_keys = headline(results, offline), peer_figures(results)
    versus = comparisons(results)
    targets = {name: {"value": figures[name], "target": f"{op} {limit}",
                      "met": None if figures[name] is None else
                      (figures[name] >= limit if op == ">=" else figures[name] <= limit)}
               for name, (op, limit) in TARGETS.items()}
    print(f"torch threads per server {args.threads}, levels {levels}, {duration:g} s per level and system in "
          f"{rounds} interleaved run(s) (+{warmup:g} s warmup each), one sample per request, "
          f"{os.cpu_count()} CPUs; {bento_note}; kserve: {peer_notes['kserve']}; mlserver: {peer_notes['mlserver']}")
    print_table(results, offline, levels)
    for model, per_level in versus.items():
        for level, r in per_level.items():
            print(f"  {model} c={level}: dlforge_on throughput / " +
                  ", ".join(f"{k[8:]} {v}" for k, v in r.items()))
    for name, t in targets.items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"target {name} {t['target']}: {t['value']} -> {verdict}")
    for name in REPORTED:
        print(f"figure {name}: {figures[name]}" + ("" if figures[name] is not None or v2_ok else f" ({v2_note})"))
    for name, value in peer_keys.items():
        if value is not None:  # the peer servers' figures, where they ran
            print(f"figure {name}: {value}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        **figures,
        **peer_keys,
        "targets": targets,
        "results": results,
        "offline_samples_per_s": offline,
        "dlforge_on_throughput_ratios": versus,
        "bentoml": bento_note,
        **peer_notes,
        "v2": v2_note,
        "unmeasured": {} if v2_ok or v2_note == "not requested" else dict.fromkeys(REPORTED, v2_note),
        "threads": args.threads,
        "levels": levels,
        "duration_s": duration,
        "warmup_s": warmup,
        "rounds": rounds,
        "batching_on": BATCH_ON,
        "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
