"""The report in a real browser: headless Chromium loads every figure and raises no error.

The page's own script writes ``data-figures``, ``data-figures-loaded`` and ``data-errors``
on <body> at ``load``; ``--dump-dom`` prints the DOM after that, so the test reads what the
browser made of the page. A broken copy of the page proves the check can fail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dlforge.evaluate.report import render_report
from tests.evaluate.test_report import full_report, parse, train_classification

TIMEOUT_S = 60


def run_chromium(chromium: str, page: Path, tmp: Path, *extra: str) -> str:
    """Run headless Chromium on ``page`` with a fresh profile; returns its stdout."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("browser")
    clf: dict[str, Any] = train_classification(tmp / "runs")
    html = full_report(clf)
    path = tmp / "report.html"
    path.write_text(html, encoding="utf-8")
    return path, html


def test_every_figure_loads_without_errors(chromium, report_file, tmp_path):
    path, html = report_file
    expected = len(parse(html).images)
    assert expected == 5
    body = parse(run_chromium(chromium, path, tmp_path, "--dump-dom")).body
    assert body.get("data-figures") == str(expected)
    assert body.get("data-figures-loaded") == str(expected)
    assert body.get("data-errors") == ""


def test_broken_page_is_caught(chromium, tmp_path):
    # Negative control: a corrupt image and a script error must show up in the same attributes.
    html = render_report(config={"name": "broken"}, history=[{"type": "epoch", "epoch": 0, "train_loss": 1.0}])
    html = html.replace("</main>", '<img src="data:image/png;base64,iVBORw0KGgo=" alt="corrupt">'
                                   "<script>undefinedFunction();</script></main>")
    path = tmp_path / "broken.html"
    path.write_text(html, encoding="utf-8")
    body = parse(run_chromium(chromium, path, tmp_path, "--dump-dom")).body
    assert body.get("data-figures") == "2"
    assert body.get("data-figures-loaded") == "1"
    assert "undefinedFunction" in body.get("data-errors", "")


def test_screenshot_is_a_drawn_page(chromium, report_file, tmp_path):
    path, _ = report_file
    shot = tmp_path / "shot.png"
    run_chromium(chromium, path, tmp_path, f"--screenshot={shot}", "--window-size=1200,3000")
    image = Image.open(shot)
    assert image.format == "PNG" and image.size == (1200, 3000)
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10  # text and figures, not one flat colour
    assert len(np.unique(pixels)) > 50
