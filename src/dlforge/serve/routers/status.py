"""The status page ``GET /``: one server-rendered HTML page a person can leave open.

Per model: its versions (loaded here, with their aliases and the run that wrote each), the
traffic split, and per variant the request count, p50/p99 latency and the accuracy measured
from feedback. The page refreshes itself every 5 seconds with a ``<meta http-equiv="refresh">``: no script
runs, nothing loads from elsewhere (its Content-Security-Policy forbids it), every value is
HTML-escaped, and no file-system path is shown.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

import dlforge
from dlforge.registry.versions import run_of
from dlforge.serve.dependencies import get_pool
from dlforge.serve.pool import ModelPool

router = APIRouter(tags=["status"])
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; frame-ancestors 'none'"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    # autoescape=True: model names, aliases and labels come from clients and must not become markup.
    return Environment(loader=FileSystemLoader(Path(__file__).parent.parent / "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def status_context(pool: ModelPool, *, started: float | None = None) -> dict[str, Any]:
    """What the page shows, as plain data (also handy to test without HTML).

    Example:
        >>> status_context(pool)["models"][0]["variants"]["production"]["requests"]  # doctest: +SKIP
        12
    """
    models = []
    for entry in pool.snapshot():
        loaded = pool.loaded(entry["name"])
        stats = pool.experiment(entry["name"]).stats() if loaded else {"variants": {}}
        entry["versions"] = [{**v, "run": run_of(loaded[v["version"]].artifact.meta) if v["version"] in loaded
                              else None} for v in entry["versions"]]
        traffic = entry["traffic"]
        split = []
        if traffic is not None:
            total = sum(v["weight"] for v in traffic["variants"]) or 1.0
            split = [{"alias": v["alias"], "share": v["weight"] / total,
                      "version": entry["aliases"].get(v["alias"])} for v in traffic["variants"]]
        models.append({**entry, "split": split, "shadow": traffic and traffic.get("shadow"),
                       "variants": stats["variants"], "test": stats.get("test")})
    return {
        "version": dlforge.__version__,
        "ready": pool.ready(),
        "now": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "uptime": None if started is None else _duration(time.monotonic() - started),
        "models": models,
    }


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m {s:02d}s" if hours else f"{m}m {s:02d}s"


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request, pool: ModelPool = Depends(get_pool)) -> HTMLResponse:
    """The status page (HTML)."""
    context = status_context(pool, started=getattr(request.app.state, "started", None))
    html = _environment().get_template("status.html.j2").render(**context)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff"})
