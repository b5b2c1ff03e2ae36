"""The status page ``/``: rendered by a real browser (headless Chromium) from a real server process,
and its safety properties in-process (escaping, no scripts, no external assets, no paths)."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

import httpx
import pytest

from dlforge.serve.routers.status import _environment


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


@pytest.mark.slow  # a server process and a browser: about 10 s
def test_browser_renders_versions_aliases_and_counts(module_env, server, chromium) -> None:
    headers = module_env.headers()
    config = {"variants": [{"alias": "production", "weight": 3}, {"alias": "candidate", "weight": 1}]}
    r = httpx.put(f"{server.url}/v1/models/iris/traffic", json=config, headers=module_env.headers(admin=True),
                  timeout=30)
    assert r.status_code == 200, r.text
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        for alias, n in (("production", 3), ("candidate", 2)):
            for _ in range(n):
                body = client.post("/v1/models/iris/predict", json={"inputs": [[0, 0, 0, 0]], "alias": alias}).json()
                assert body["variant"] == alias
        client.post("/v1/models/iris/feedback", json={"request_id": body["request_id"], "label": body["outputs"][0]})
    dom = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", f"{server.url}/"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "<h2>iris</h2>" in dom
    versions, traffic, requests = _tables(dom)
    assert [row[:2] for row in versions[1:]] == [["v1", "production"], ["v2", "candidate latest"]]
    assert traffic[1:] == [["production", "v1", "75.0%", ""], ["candidate", "v2", "25.0%", ""]]
    counts = {row[0]: (row[1], row[4], row[5]) for row in requests[1:]}  # variant: requests, feedback, accuracy
    assert counts == {"production": ("3", "0", "–"), "candidate": ("2", "1", "1.000")}
    assert str(module_env.artifacts) not in dom and "<script" not in dom


def test_page_is_escaped_self_contained_and_refreshes(serve_env, make_client) -> None:
    assert _environment().autoescape is True
    client = make_client()
    client.post("/v1/models/iris/predict", json={"inputs": [[0, 0, 0, 0]]}, headers=serve_env.headers())
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "<script" not in html and not re.search(r"(src|href)=", html)  # nothing loads from anywhere
    assert str(serve_env.artifacts.parent) not in html and "sha256" not in html
    rendered = _environment().get_template("status.html.j2").render(
        version="0", ready=True, now="now", uptime=None,
        models=[{"name": "<b>x</b>", "latest": 1, "aliases": {}, "traffic": None, "split": [], "shadow": None,
                 "variants": {}, "test": None, "versions": [{"version": 1, "aliases": ["<i>a</i>"], "latest": True,
                                                             "task": "classification", "queue": 0, "created": "t"}]}])
    assert "<b>x</b>" not in rendered and "&lt;b&gt;x&lt;/b&gt;" in rendered and "&lt;i&gt;a&lt;/i&gt;" in rendered
