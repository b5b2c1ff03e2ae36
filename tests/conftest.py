"""Fixtures shared across test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's headless-capable Chromium; skips only where it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: the browser check needs Debian's chromium package "
                    "(apt-get install chromium); CI installs it")
    return str(CHROMIUM)
