"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's headless-capable Chromium; skips only where it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: the browser check needs Debian's chromium package "
                    "(apt-get install chromium); CI installs it")
    return str(CHROMIUM)


def _postgres_bin() -> Path | None:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql, or None."""
    found = [d / "bin" for d in Path("/usr/lib/postgresql").glob("*") if (d / "bin" / "initdb").exists()]
    return max(found, key=lambda b: float(b.parent.name) if b.parent.name.replace(".", "").isdigit() else 0,
               default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (trust auth, fsync off, 127.0.0.1):
    ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``. Skips only where the server
    binaries are not installed."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql: the PostgreSQL registry "
                    "tests need them (apt-get install postgresql); CI installs them")
    root = Path(tempfile.mkdtemp(prefix="dlforge-pg-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    made = subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                           "-N", "-E", "UTF8"], capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed: {made.stderr or made.stdout}")
    for attempt in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        opts = (f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        started = subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                  str(root / "server.log"), "-w", "start"], capture_output=True, text=True)
        if started.returncode == 0:
            break
        if attempt == 2:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_registry_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny-tensor tests: a second thread only adds
    contention on a busy 2-core machine (10x slower training here); the previous setting
    comes back after the module. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
