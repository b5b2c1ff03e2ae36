"""The serving benchmark's processes: one server on a free loopback port, its CPU, its /metrics;
the peer servers (KServe, MLServer) started from their own Pythons.

Example:
    >>> batch_totals('dlforge_batch_size_sum{model="m",version="1"} 12.0\\n'
    ...              'dlforge_batch_size_count{model="m",version="1"} 3.0\\n', "m")
    (12.0, 3.0)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
# The peer servers' systems (V2 protocol), each with the package its Python must import.
PEERS = {"kserve_v2_json": "kserve", "kserve_v2_binary": "kserve", "mlserver_v2_json": "mlserver"}


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
                 cwd: Path | None = None, log: Path | None = None, bodies: Path | None = None,
                 content_type: str = "application/json", port: int | None = None) -> None:
        self.name, self.path, self.headers, self.model = name, path, headers or {}, model
        self.bodies, self.content_type = bodies, content_type  # bodies: its own file (v2), else the model's
        self.port = port or free_port()  # port: one the caller already wrote into the server's settings
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
                                         headers={"Content-Type": self.content_type, **self.headers})
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


def server_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # torch reads these at start-up: every server process gets the same intra-op threads.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), BENTOML_DO_NOT_TRACK="True",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p))
    return env


def bentoml_status(python: str | None) -> tuple[bool, str]:
    """Whether ``python`` can import bentoml, and a line saying what was found or why not."""
    return peer_status(python, "bentoml")


def peer_status(python: str | None, package: str) -> tuple[bool, str]:
    """Whether ``python`` can import ``package`` (bentoml, kserve, mlserver), and a line saying what
    was found or why not.

    Example:
        >>> peer_status(None, "kserve")
        (False, 'not installed: no --kserve-python given')
    """
    if not python:
        return False, f"not installed: no --{package}-python given"
    probe = (f"import importlib.metadata as m, {package}, dlforge.registry.artifact; "
             f"print(m.version({package!r}))")
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120,
                              env=server_env(1))
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"not installed: {python} could not run ({err})"
    if done.returncode != 0:
        return False, (f"not installed: {python} cannot import {package} and dlforge "
                       f"({done.stderr.strip().splitlines()[-1:]})")
    return True, f"{package} {done.stdout.strip()}"


def peer_server(system: str, python: str, artifact: Path, model: str, env: dict[str, str], folder: Path,
                v2_bodies: dict, max_batch_size: int, max_wait_ms: float) -> Server:
    """A KServe or MLServer process (``system``: a key of PEERS) serving the dlforge ``artifact`` as
    ``model`` on the V2 protocol, with the bodies of dlforge's V2 rows (``v2_bodies``: ``json``,
    ``binary`` files and the binary ``header`` length). Not ready until ``wait``.

    KServe (``_kserve_model.py``): one uvicorn worker, no gRPC, its logging left unconfigured (no
    per-request log lines, as dlforge serve at ``--log-level warning``); it has no batching.
    MLServer (``_mlserver_model.py``): its adaptive batching with dlforge's ``max_batch_size`` and
    wait, inference in the server process (``parallel_workers`` 0: one process, as dlforge serve;
    MLServer 1.7.1's worker processes also die at start under uvloop: "no current event loop").
    """
    kind = system.rsplit("_", 1)[1]  # json | binary
    extra: dict = {"bodies": v2_bodies[kind], "headers": {}}
    if kind == "binary":
        extra.update(content_type="application/octet-stream",
                     headers={"Inference-Header-Content-Length": str(v2_bodies["header"])})
    log, path = folder / f"{model}-{system}.log", f"/v2/models/{model}/infer"
    common = {"ready": f"/v2/models/{model}/ready", "log": log, "cwd": folder, **extra}
    if PEERS[system] == "kserve":
        argv = [python, str(HERE / "_kserve_model.py"), "--artifact", str(artifact), "--model_name", model,
                "--http_port", "{port}", "--workers", "1", "--enable_grpc", "false", "--configure_logging", "false"]
        return Server(system, argv, env, path, **common)
    repo = folder / f"mlserver-{model}"
    (repo / model).mkdir(parents=True, exist_ok=True)
    (repo / model / "model-settings.json").write_text(json.dumps({
        "name": model, "implementation": "_mlserver_model.DlforgeRuntime", "max_batch_size": max_batch_size,
        "max_batch_time": max_wait_ms / 1000, "parameters": {"uri": str(artifact)}}), encoding="utf-8")
    port = free_port()
    menv = {**env, "MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(port), "MLSERVER_DEBUG": "false",
            "MLSERVER_GRPC_PORT": str(free_port()), "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_PARALLEL_WORKERS": "0", "PYTHONPATH": os.pathsep.join((str(HERE), env["PYTHONPATH"]))}
    argv = [python, "-c", "import sys; from mlserver.cli import main; sys.exit(main())", "start", str(repo)]
    return Server(system, argv, menv, path, port=port, **{**common, "cwd": repo})
