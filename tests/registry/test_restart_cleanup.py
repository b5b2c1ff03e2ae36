"""Scratch folders of killed processes are removed when a registry is next opened; live ones stay.

Before: ``registry register`` killed mid-copy left ``artifacts/.incoming/tmp*`` (the whole
artifact, 150 MB in the issue) and a server killed mid-upload left ``/tmp/dlforge-upload-*``
(535 MB), forever. The rule (see ``dlforge.registry.disk``): a scratch folder whose lock no
live process holds is removed; one without a lock file only once it is an hour old.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fastapi.testclient import TestClient

from dlforge.registry import disk
from dlforge.registry.disk import INCOMING, UPLOADS, Scratch
from dlforge.registry.store import Registry
from dlforge.serve.main import create_app
from dlforge.serve.routers import admin as admin_module
from tests.serve.conftest import make_serve_env, save_tiny_classifier
from tests.serve.test_admin import GZIP, targz


def leftovers(artifacts: Path) -> list[str]:
    return sorted(p.name for area in (INCOMING, UPLOADS) if (artifacts / area).is_dir()
                  for p in (artifacts / area).iterdir())


def start(code: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Run ``code`` in a new interpreter; returns it and the first line it prints."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, "the child printed nothing"
    return proc, line


def test_leftovers_of_ended_processes_go_and_live_ones_stay(tmp_path: Path) -> None:
    url, artifacts = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts"
    proc, printed = start("""
        import sys, time
        from pathlib import Path
        from dlforge.registry.disk import Scratch
        s = Scratch(Path(sys.argv[1]))
        (s.path / "model.safetensors").write_bytes(b"x" * 4096)
        print(s.path, flush=True)
        time.sleep(120)
    """, str(artifacts / INCOMING))
    killed = Path(printed)
    try:
        Registry(url, artifacts).models()
        assert killed.is_dir()  # its process is alive, however old the folder is
    finally:
        proc.kill()
        proc.wait()
    old_style, fresh_old_style = artifacts / UPLOADS / "dlforge-upload-x1", artifacts / INCOMING / "tmpyoung"
    for folder in (old_style, fresh_old_style):
        folder.mkdir(parents=True)
    hours_ago = time.time() - 2 * disk.UNLOCKED_AFTER_S
    os.utime(old_style, (hours_ago, hours_ago))
    with Scratch(artifacts / UPLOADS) as live:  # an upload in progress in this process
        with Registry(url, artifacts) as reg:
            reg.models()
        assert live.path.is_dir() and fresh_old_style.is_dir()
        assert not killed.exists() and not old_style.exists()
        assert leftovers(artifacts) == sorted([live.path.name, live.path.name + ".lock", fresh_old_style.name])
    assert leftovers(artifacts) == [fresh_old_style.name]


def test_register_killed_mid_copy_leaves_nothing_after_the_next_open(tmp_path: Path) -> None:
    url, artifacts = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts"
    model = save_tiny_classifier(tmp_path / "model", seed=1)
    proc, _ = start("""
        import shutil, sys, time
        from dlforge.registry import blobs, store
        real = shutil.copytree
        def copy_then_hang(src, dst):  # the copy is done, the rename into place not yet
            real(src, dst)
            print("copied", flush=True)
            time.sleep(120)
        blobs.shutil.copytree = copy_then_hang
        store.Registry(sys.argv[1], sys.argv[2]).register(sys.argv[3], "iris")
    """, url, str(artifacts), str(model))
    proc.kill()  # SIGKILL: no finally block runs
    proc.wait()
    assert len(leftovers(artifacts)) == 2  # the copied artifact and its lock file
    with Registry(url, artifacts) as reg:
        assert reg.models() == [] and leftovers(artifacts) == []
        assert reg.register(model, "iris").version == 1
    assert leftovers(artifacts) == []


def test_uploads_are_written_under_the_artifacts_folder_and_removed(tmp_path: Path, monkeypatch) -> None:
    env = make_serve_env(tmp_path)
    seen: list[Path] = []
    real = admin_module.extract_artifact_tar

    def extract(data, dest, **kwargs):
        seen.append(dest)
        assert dest.parent.with_suffix(".lock").is_file()  # locked: a sweep meanwhile keeps it
        return real(data, dest, **kwargs)

    monkeypatch.setattr(admin_module, "extract_artifact_tar", extract)
    with TestClient(create_app(env.settings())) as client:
        response = client.post("/v1/models/iris/versions", content=targz(env.dirs[1]),
                               headers={**env.headers(admin=True), **GZIP})
        assert response.status_code == 201, response.text
    assert [p.parent.parent for p in seen] == [env.artifacts / UPLOADS]  # before: /tmp/dlforge-upload-*
    assert leftovers(env.artifacts) == []
    env.registry.close()
