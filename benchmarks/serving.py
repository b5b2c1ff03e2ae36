"""How much does dlforge serve's dynamic batching buy under concurrent load, and what does it cost?

One command: ``python benchmarks/serving.py [--quick] [--levels 1,8,32,64] [--duration 5]
[--bentoml-python PATH]`` (5 to 8 minutes on two shared cores; ``--quick``: about 90 s).

Closed-loop load on loopback (``benchmarks/_loadgen.py`` in its own process: N keep-alive
connections each sending one request and waiting for its answer), at each concurrency
level, against these servers, each one uvicorn process with one worker:

* ``dlforge_off``: ``python -m dlforge.cli serve`` with ``--max-batch-size 1`` (batching off);
* ``dlforge_on``: the same with ``--max-batch-size 32 --max-wait-ms 3`` (batching on);
  both require an API key (a predict key created in the benchmark's registry);
* ``plain``: the FastAPI app most users write, one model call per request
  (``benchmarks/_baselines.py``, a ``def`` route under ``torch.inference_mode``);
* ``noop``: the same request shape answered without a model, the HTTP stack alone;
* ``bentoml``: BentoML with adaptive batching (``benchmarks/_bento_service.py``), when
  ``--bentoml-python`` points at a Python that can ``import bentoml``.

Two models, each request carrying ONE sample:

* ``cnn``: the architecture of ``examples/digits_cnn.yaml`` (channels 32, 64, batch norm)
  built with its seed and NOT trained (throughput does not depend on the weights), with
  the digits preprocessing; requests send one raw 1x8x8 digit (sklearn's 0..16 pixels) that every
  server standardises with the stored statistics (``Artifact.encode``);
* ``minilm``: dlforge's BERT from the packaged all-MiniLM-L6-v2 with an (untrained)
  two-class sequence head, inputs of 16 tokens; requests send 16 token ids of a sentence
  from CPython's pydoc topics, encoded with the artifact's own tokenizer.

Both artifacts carry a drift reference (as ``dlforge train`` writes), so dlforge's drift
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
batching >= 0.7 of the no-op endpoint; and at concurrency 1 the batching-on p99 <= 1.2 x
batching-off p99 (batching must not tax a lone client).

Torch threads: every server process and the offline ceilings use ``--threads`` (default
1). On two cores the event loop, the batch worker and the load generator share the
CPUs; two intra-op threads made MiniLM 10x slower at batch 1 and 3x slower at batch 32
on the shared machine (OpenMP threads spinning against the other processes), one was
best.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the load generator sits beside this file
    sys.path.insert(0, str(HERE))
from _loadgen import percentile  # noqa: E402  (no torch: cheap)

FULL = {"levels": [1, 8, 32, 64], "duration": 5.0, "warmup": 0.5, "rounds": 2}
QUICK = {"levels": [1, 8], "duration": 1.0, "warmup": 0.3, "rounds": 1}
SYSTEMS = ("dlforge_off", "dlforge_on", "plain", "noop", "bentoml")
MODELS = ("cnn", "minilm")
BATCH_ON = {"max_batch_size": 32, "max_wait_ms": 3.0}
TARGETS = {  # name: (comparison, threshold)
    "minilm_batching_speedup_c32": (">=", 2.0),
    "minilm_fraction_of_offline_c32": (">=", 0.7),
    "cnn_fraction_of_noop_c32": (">=", 0.7),
    "minilm_p99_ratio_c1": ("<=", 1.2),
}
MAX_LEN = 16  # MiniLM request length in tokens


# ---------------------------------------------------------------- helpers (no torch)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def batch_totals(metrics_text: str, model: str) -> tuple[float, float]:
    """(sum, count) of ``dlforge_batch_size`` over every series of ``model`` in Prometheus text.

    Example:
        >>> batch_totals('dlforge_batch_size_sum{model="m",version="1"} 12.0\\n'
        ...              'dlforge_batch_size_count{model="m",version="1"} 3.0\\n', "m")
        (12.0, 3.0)
    """
    totals = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(r'^dlforge_batch_size_(sum|count)\{([^}]*)\} (\S+)$', metrics_text, re.M):
        if re.search(rf'(^|,)model="{re.escape(model)}"', m.group(2)):
            totals[m.group(1)] += float(m.group(3))
    return totals["sum"], totals["count"]


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc; 0 elsewhere)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError, AttributeError):
        return 0.0
    tree, total = {pid}, 0.0
    for _ in range(4):  # a few generations (bentoml: arbiter -> workers)
        tree |= {p for p, (ppid, _) in stats.items() if ppid in tree}
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


class Server:
    """One server process on a free loopback port, up until ``stop``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], path: str, *,
                 headers: dict[str, str] | None = None, ready: str = "/healthz", model: str | None = None,
                 cwd: Path | None = None, log: Path | None = None) -> None:
        self.name, self.path, self.headers, self.model = name, path, headers or {}, model
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log = open(log or os.devnull, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        self.ready = ready

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (log: {self.log.name})")
            try:
                if http_get(f"http://127.0.0.1:{self.port}{self.ready}", 1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s (log: {self.log.name})")

    def first_request(self, body: bytes) -> None:
        """Send one request and insist on a 2xx: a wrong body fails here, not as a run of errors;
        one-time work on the first call (lazy imports, allocations) stays out of the runs."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{self.path}", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{self.name} answered {err.code} to a benchmark request: "
                               f"{err.read()[:500]!r}") from None

    def batch_totals(self) -> tuple[float, float] | None:
        if self.model is None or not self.name.startswith("dlforge"):
            return None
        return batch_totals(http_get(f"http://127.0.0.1:{self.port}/metrics")[1], self.model)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def load_run(server: Server, bodies_file: Path, concurrency: int, duration: float, warmup: float) -> dict:
    """One load-generator run against ``server``, with the server's CPU and batch totals over it."""
    before_batches, before_cpu = server.batch_totals(), process_tree_cpu(server.proc.pid)
    argv = [sys.executable, str(HERE / "_loadgen.py"), "--port", str(server.port), "--path", server.path,
            "--bodies", str(bodies_file), "--concurrency", str(concurrency), "--duration", str(duration),
            "--warmup", str(warmup), "--latencies"]
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


# ---------------------------------------------------------------- artifacts (torch)

def sentences(n: int) -> list[str]:
    """``n`` sentences of six words or more from CPython's pydoc topics text."""
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics))
    found = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text))
    return [s for s in found if len(s.split()) >= 6][:n]


def build_artifacts(folder: Path, models: list[str], n_bodies: int = 256) -> dict[str, dict[str, Any]]:
    """Save the artifacts of ``models`` (with drift references) and their request samples.

    Returns ``{model: {"dir": Path, "x": request samples (N, ...), "model_x": model-ready ones}}``:
    CNN requests send raw pixels, which the server standardises; MiniLM's are token ids.
    """
    import torch

    from dlforge.config import load_config
    from dlforge.data.text import encode_text_inputs, text_encoding
    from dlforge.data.tokenizer import load_tokenizer
    from dlforge.models.bert import from_pretrained
    from dlforge.pipeline import build_model, load_data
    from dlforge.registry.artifact import Artifact, save_artifact
    from dlforge.registry.reference import build_reference

    def save(name: str, model: torch.nn.Module, class_names: list[str], preprocessing: dict,
             reference_x: torch.Tensor) -> Path:
        # The reference is what `dlforge train` stores: training inputs and the model's predictions.
        meta = {"task": "classification", "class_names": class_names, "preprocessing": preprocessing,
                "input_signature": {"shape": [None, *reference_x.shape[1:]]}}
        outputs = Artifact(model=model.eval(), meta=meta, path=folder).predict(reference_x)
        reference = build_reference(reference_x, outputs, "classification", preprocessing)
        return save_artifact(model, folder / name, task="classification", class_names=class_names,
                             preprocessing=preprocessing, training={"reference": reference})

    built: dict[str, dict[str, Any]] = {}
    if "cnn" in models:
        cfg = load_config(ROOT / "examples" / "digits_cnn.yaml")
        prepared = load_data(cfg)
        cnn, _ = build_model(cfg, prepared)  # the example's architecture and seed, not trained
        # Requests carry raw pixels (sklearn's 0..16); the servers scale and standardise them (Artifact.encode).
        scale = prepared.preprocessing["standardize"]
        x_test = prepared.test.tensors[0][:n_bodies]  # standardised (N, 1, 8, 8)
        raw = x_test * torch.tensor(scale["std"]).view(1, -1, 1, 1) + torch.tensor(scale["mean"]).view(1, -1, 1, 1)
        built["cnn"] = {"dir": save("cnn", cnn, prepared.class_names, prepared.preprocessing,
                                    prepared.train.tensors[0][:512]),
                        "x": (raw * 16).round(), "model_x": x_test}
    if "minilm" in models:
        texts = sentences(n_bodies + 512)
        preprocessing = {"encoding": text_encoding(load_tokenizer("minilm"), MAX_LEN), "standardize": None}
        minilm = from_pretrained("minilm", num_outputs=2, task_head="sequence", max_len=MAX_LEN)
        ids = encode_text_inputs(texts, preprocessing)  # (N, 16) int64
        built["minilm"] = {"dir": save("minilm", minilm, ["negative", "positive"], preprocessing, ids[n_bodies:]),
                           "x": ids[:n_bodies], "model_x": ids[:n_bodies]}
    return built


def write_bodies(x: Any, path: Path) -> Path:
    """One JSON body per sample: ``{"inputs": [sample]}`` (floats rounded to 5 digits)."""
    import torch

    samples = x.round(decimals=5).tolist() if torch.is_floating_point(x) else x.tolist()
    path.write_text(json.dumps([{"inputs": [s]} for s in samples]), encoding="utf-8")
    return path


def offline_throughput(artifact: Any, x: Any, batch: int, seconds: float = 1.0) -> float:
    """Samples per second of ``artifact.predict`` on batches of ``batch`` samples (median of repeats)."""
    import statistics

    import torch

    xb = x[torch.arange(batch) % len(x)]
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(2):
            artifact.predict(xb)  # warm up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            artifact.predict(xb)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


# ---------------------------------------------------------------- servers

def server_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # torch reads these at start-up: every server process gets the same intra-op threads.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), BENTOML_DO_NOT_TRACK="True",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p))
    return env


def bentoml_status(python: str | None) -> tuple[bool, str]:
    """Whether ``python`` can import bentoml, and a line saying what was found or why not."""
    if not python:
        return False, "not installed: no --bentoml-python given"
    try:
        done = subprocess.run([python, "-c", "import bentoml; print(bentoml.__version__)"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"not installed: {python} could not run ({err})"
    if done.returncode != 0:
        return False, f"not installed: {python} cannot import bentoml ({done.stderr.strip().splitlines()[-1:]})"
    return True, f"bentoml {done.stdout.strip()}"


def start_servers(model: str, systems: list[str], art_dir: Path | None, registry: dict[str, Any],
                  threads: int, bentoml_python: str | None, logs: Path) -> dict[str, Server]:
    """Start every server a model's runs need and wait until each is ready."""
    env, py = server_env(threads), sys.executable
    servers: dict[str, Server] = {}
    try:
        for system in systems:
            log = logs / f"{model}-{system}.log"
            if system.startswith("dlforge"):
                batch = BATCH_ON if system == "dlforge_on" else {"max_batch_size": 1, "max_wait_ms": 0.0}
                argv = [py, "-m", "dlforge.cli", "serve", "--registry", registry["url"], "--artifacts", registry["artifacts"],
                        "--host", "127.0.0.1", "--port", "{port}", "--model", model, "--log-level", "warning",
                        "--max-batch-size", str(batch["max_batch_size"]), "--max-wait-ms", str(batch["max_wait_ms"])]
                servers[system] = Server(system, argv, env, f"/v1/models/{model}/predict", ready="/readyz",
                                         headers={"Authorization": f"Bearer {registry['key']}"}, model=model, log=log)
            elif system == "plain":
                argv = [py, str(HERE / "_baselines.py"), "plain", "--artifact", str(art_dir), "--port", "{port}"]
                servers[system] = Server(system, argv, env, "/predict", log=log)
            elif system == "noop":
                servers[system] = Server(system, [py, str(HERE / "_baselines.py"), "noop", "--port", "{port}"],
                                         env, "/predict", log=log)
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
    """The four target figures (None where the run did not measure what they need)."""
    on32 = figure(results, "minilm", "dlforge_on", 32, "throughput")
    ceiling = offline.get("minilm", {}).get("32", {}).get("samples_per_s")
    return {
        "minilm_batching_speedup_c32": ratio(on32, figure(results, "minilm", "dlforge_off", 32, "throughput")),
        "minilm_fraction_of_offline_c32": ratio(on32, ceiling),
        "cnn_fraction_of_noop_c32": ratio(figure(results, "cnn", "dlforge_on", 32, "throughput"),
                                          figure(results, "cnn", "noop", 32, "throughput")),
        "minilm_p99_ratio_c1": ratio(figure(results, "minilm", "dlforge_on", 1, "p99_ms"),
                                     figure(results, "minilm", "dlforge_off", 1, "p99_ms")),
    }


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
    print(f"  {'model':7s} {'system':12s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} "
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
                print(f"  {model:7s} {system:12s} {level:4d} {r['throughput']:8.1f} {ms} {r['errors']:6d} {batch} "
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
    model_systems = [s for s in systems if s != "noop"]
    started = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="dlforge-serving-bench-"))
    results: dict[str, dict[str, dict[str, dict]]] = {}
    offline: dict[str, dict[str, float]] = {}
    artifacts = build_artifacts(tmp, models) if model_systems else {}
    registry = register(tmp, artifacts) if any(s.startswith("dlforge") for s in model_systems) else {}
    # The no-op endpoint runs beside the CNN (interleaved, the same bodies): it is the CNN's ceiling.
    noop = ["noop"] if "noop" in systems else []
    groups = [(m, model_systems + (noop if m == "cnn" else [])) for m in artifacts]
    if noop and "cnn" not in artifacts:
        groups.append(("cnn", noop))
    for model, group in groups:
        art = artifacts.get(model)
        bodies = tmp / f"{model}.json"
        if art:
            write_bodies(art["x"], bodies)
        else:  # no-op alone: a digit-shaped body without building the model
            bodies.write_text(json.dumps([{"inputs": [[[[0.5] * 8] * 8]]}]), encoding="utf-8")
        servers = start_servers(model, group, art["dir"] if art else None, registry, args.threads,
                                args.bentoml_python, tmp)
        ceiling_of = None
        if art and "dlforge_on" in group:
            import torch

            from dlforge.registry.artifact import load_artifact

            torch.set_num_threads(args.threads)  # as the servers have it
            ceiling_of = load_artifact(art["dir"])
        try:
            first = json.dumps(json.loads(bodies.read_text(encoding="utf-8"))[0]).encode()
            for server in servers.values():
                server.first_request(first)
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

    figures = headline(results, offline)
    versus = comparisons(results)
    targets = {name: {"value": figures[name], "target": f"{op} {limit}",
                      "met": None if figures[name] is None else
                      (figures[name] >= limit if op == ">=" else figures[name] <= limit)}
               for name, (op, limit) in TARGETS.items()}
    print(f"torch threads per server {args.threads}, levels {levels}, {duration:g} s per level and system in "
          f"{rounds} interleaved run(s) (+{warmup:g} s warmup each), one sample per request, "
          f"{os.cpu_count()} CPUs; {bento_note}")
    print_table(results, offline, levels)
    for model, per_level in versus.items():
        for level, r in per_level.items():
            print(f"  {model} c={level}: dlforge_on throughput / " +
                  ", ".join(f"{k[8:]} {v}" for k, v in r.items()))
    for name, t in targets.items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"target {name} {t['target']}: {t['value']} -> {verdict}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        **figures,
        "targets": targets,
        "results": results,
        "offline_samples_per_s": offline,
        "dlforge_on_throughput_ratios": versus,
        "bentoml": bento_note,
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
