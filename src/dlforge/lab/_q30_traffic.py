"""Topic 30's traffic over HTTP: the accuracy pass, the latency rounds, the A/B split with sticky
users, the alias swap and rollback under load, and the refused calls. Each phase drives a running
``dlforge serve`` through its public routes and returns what it measured;
:mod:`dlforge.lab.q30_deployment` starts the servers and turns the numbers into its finding.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np

from dlforge.lab._http import Reply, bearer, bounded_load, clients, send, served_requests

NAME = "digits"      # the registered model
CONCURRENCY = 4      # client threads, each with one keep-alive connection
ROUNDS = 8           # offline timing: the fp32 and int8 models take turns this many times
WARMUP = 8           # untimed requests per server before the latency requests
LATENCY_BATCH = 32   # samples per request in the checked latency phase (and 1 beside it)
AB = {"production": 0.8, "candidate": 0.2}
STICKY_REPEAT = 50
EVAL_BATCH = 128     # accuracy: test samples per request
TIMEOUT_S = 30.0     # per request (an admin swap took 10.7 s on 2 cores shared 17-fold); with cap_s it bounds a broken server
PREDICT = f"/v1/models/{NAME}/predict"


def _accuracy(url: str, key: str, raw: np.ndarray, labels: list[str], deadline: float) -> tuple[float, list[str]]:
    """Accuracy of the server's production model on ``raw`` samples, ``EVAL_BATCH`` per request.

    One request at a time: the queue holds ``max_queue`` samples, and four requests of 128
    at once would overflow it (429), which is the server protecting itself, not an error."""
    predicted: list[str] = []
    with httpx.Client(base_url=url, headers=bearer(key), timeout=TIMEOUT_S) as client:
        for i in range(0, len(raw), EVAL_BATCH):
            reply = send(client, PREDICT, {"inputs": raw[i:i + EVAL_BATCH].tolist()})
            if reply.status != 200 or time.monotonic() > deadline:
                return 0.0, predicted  # an incomplete pass scores nothing, never a partial accuracy
            predicted += reply.body["outputs"]
    return float(np.mean([p == t for p, t in zip(predicted, labels)])), predicted


def _latency(urls: dict[str, str], key: str, raw: np.ndarray, n: int, deadline: float,
             batch: int = 1) -> dict[str, list[Reply]]:
    """``n`` requests of ``batch`` samples per server, one request in flight at a time, the servers
    alternating request by request (which goes first flips each pair), so a change in the
    machine's load hits both alike: interleaved A/B, as benchmark tools pair their repeats.

    One at a time, because latency is what a lone request waits; with several in flight the
    p50 is mostly the wait for the other requests (GIL, event loop), which int8 does not shrink.
    """
    names = list(urls)
    out: dict[str, list[Reply]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        client = {name: stack.enter_context(httpx.Client(base_url=url, headers=bearer(key), timeout=TIMEOUT_S))
                  for name, url in urls.items()}
        body = lambda i: {"inputs": raw[np.arange(i * batch, (i + 1) * batch) % len(raw)].tolist()}  # noqa: E731
        for i in range(WARMUP):  # opens the keep-alive connections, first packing of the int8 kernels; not timed
            for name in names:
                send(client[name], PREDICT, body(i))
        for i in range(n):
            if time.monotonic() > deadline:
                break
            for name in (names if i % 2 == 0 else names[::-1]):
                out[name].append(send(client[name], PREDICT, body(i)))
    return out


def _ab(url: str, keys: dict[str, str], sample: list, n_users: int, cap: Callable[[], float]) -> dict:
    """One request per user id, then ``STICKY_REPEAT`` ids again; each pass has its own deadline ``cap()``."""
    config = {"variants": [{"alias": a, "weight": w} for a, w in AB.items()], "sticky_header": "X-User-Id"}
    users = [f"user-{i}" for i in range(n_users)]
    jobs = [({"inputs": [sample]}, {"X-User-Id": u}) for u in users]
    with httpx.Client(base_url=url, headers=bearer(keys["admin"]), timeout=TIMEOUT_S) as admin, \
            clients(url, keys["predict"], CONCURRENCY, TIMEOUT_S) as pool:
        admin.put(f"/v1/models/{NAME}/traffic", json=config).raise_for_status()
        first = bounded_load(pool, PREDICT, jobs, cap())
        again = bounded_load(pool, PREDICT, jobs[:STICKY_REPEAT], cap())
        admin.delete(f"/v1/models/{NAME}/traffic").raise_for_status()  # the rollback phase runs without a split
    variant = lambda r: r.body["variant"] if r.status == 200 else None  # noqa: E731
    answered = [variant(r) for r in first]
    candidate = [r for r in first if variant(r) == "candidate"]
    return {"answered": sum(v is not None for v in answered), "candidate": len(candidate),
            "candidate_from_v2": float(np.mean([r.body["version"] == 2 for r in candidate])) if candidate else 0.0,
            "sticky": float(np.mean([variant(b) == a for a, b in zip(answered, again)])) if again else 0.0,
            "repeats": len(again), "failed": sum(r.status != 200 for r in first + again)}


def _rollback(url: str, keys: dict[str, str], sample: list, stage: int, deadline: float) -> dict:
    """production -> 2, then rollback, while ``CONCURRENCY`` threads keep predicting."""
    replies: list[Reply] = []
    lock, stop = threading.Lock(), threading.Event()
    counted_before = served_requests(url, NAME, TIMEOUT_S)

    def worker(client: httpx.Client) -> None:
        # Until the rollback's answers are in, or the deadline (a broken server): no count cap, which
        # under load could end the phase before the rollback had been answered at all.
        while not stop.is_set() and time.monotonic() < deadline:
            reply = send(client, PREDICT, {"inputs": [sample]})
            with lock:
                replies.append(reply)

    def answered_after(t: float, n: int) -> None:  # wait, without a fixed sleep, for n answers sent after t
        while sum(r.sent > t for r in list(replies)) < n and any(w.is_alive() for w in workers):
            time.sleep(0.005)

    stack = contextlib.ExitStack()
    pool = stack.enter_context(clients(url, keys["predict"], CONCURRENCY, TIMEOUT_S))
    admin = stack.enter_context(httpx.Client(base_url=url, headers=bearer(keys["admin"]), timeout=TIMEOUT_S))
    workers = [threading.Thread(target=worker, args=(client,)) for client in pool]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    try:
        answered_after(t0, stage)
        swap = send(admin, f"/v1/models/{NAME}/aliases/production", {"version": 2}, method="PUT")
        answered_after(swap.done, stage)
        back = send(admin, f"/v1/models/{NAME}/rollback", {"alias": "production"})
        answered_after(back.done, stage)
    finally:
        stop.set()
        for w in workers:
            w.join()
        stack.close()
    versions = lambda lo, hi: [r.body["version"] for r in replies  # noqa: E731
                               if r.status == 200 and r.sent > lo and r.done < hi]
    after_swap, after_back = versions(swap.done, back.sent), versions(back.done, math.inf)
    counted = served_requests(url, NAME, TIMEOUT_S) - counted_before
    return {"requests": len(replies), "failed": sum(r.status != 200 for r in replies),
            "admin_ok": int(swap.status == 200 and back.status == 200),
            "after_swap": len(after_swap), "after_back": len(after_back),
            "swap_v2": float(np.mean([v == 2 for v in after_swap])) if after_swap else 0.0,
            "back_v1": float(np.mean([v == 1 for v in after_back])) if after_back else 0.0,
            "counted": counted, "missed": abs(counted - sum(isinstance(r.status, int) for r in replies)),
            "swap_ms": swap.ms, "rollback_ms": back.ms,
            "timeline": [(r.done - t0, r.body["version"]) for r in replies if r.status == 200],
            "marks": (swap.done - t0, back.done - t0)}


def _access(url: str, keys: dict[str, str], sample: list) -> dict[str, int]:
    """Status of each call that must be refused: 401 without a valid key, 403 for a predict key on admin routes."""
    p, a = bearer(keys["predict"]), f"/v1/models/{NAME}"
    cases = {
        "predict_no_key": ("POST", PREDICT, {"inputs": [sample]}, {}),
        "predict_wrong_key": ("POST", PREDICT, {"inputs": [sample]}, bearer("not-a-key")),
        "predict_basic_auth": ("POST", PREDICT, {"inputs": [sample]}, {"Authorization": "Basic dXNlcjpwdw=="}),
        "alias_no_key": ("PUT", f"{a}/aliases/production", {"version": 2}, {}),
        "alias_predict_key": ("PUT", f"{a}/aliases/production", {"version": 2}, p),
        "rollback_predict_key": ("POST", f"{a}/rollback", {"alias": "production"}, p),
        "traffic_predict_key": ("PUT", f"{a}/traffic", {"variants": [{"alias": "candidate", "weight": 1}]}, p),
    }
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        return {name: client.request(m, path, json=body, headers=h).status_code
                for name, (m, path, body, h) in cases.items()}


EXPECTED = {"predict_no_key": 401, "predict_wrong_key": 401, "predict_basic_auth": 401, "alias_no_key": 401,
            "alias_predict_key": 403, "rollback_predict_key": 403, "traffic_predict_key": 403}
