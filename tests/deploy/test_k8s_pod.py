"""A pod of deploy/k8s/deployment.yaml, for real: its disks and its command, without Kubernetes.

``readonly_root.sh`` makes every mount read-only in a private mount namespace, mounts tmpfs
at the Deployment's emptyDir paths and binds one writable folder as the artifact volume;
the server then starts with the Deployment's args and env, loads a model, answers, and takes
an upload. Needs root (``unshare -m``); skipped elsewhere.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_k8s import K8S, ROOT, load


def can_unshare_mounts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_archive(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="model")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and `unshare -m` to mount a read-only root")
def test_server_runs_with_the_deployments_disks(tmp_path: Path) -> None:
    """Read-only root, tmpfs at the emptyDir paths, one writable volume: start, ready, predict, upload."""
    from dlforge.registry.store import Registry
    from tests.serve.conftest import save_tiny_classifier

    pod = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    empty_dirs = [m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    volume = tmp_path / "volume"  # the artifact claim's stand-in, also holding a SQLite registry
    with Registry(f"sqlite:///{volume}/registry.db", volume / "artifacts") as reg:
        reg.register(save_tiny_classifier(tmp_path / "v1", seed=0), "iris")
        reg.set_alias("iris", "production", 1)
        key = reg.create_key(admin=True)
    archive = upload_archive(save_tiny_classifier(tmp_path / "v2", seed=1))
    port = free_port()
    args = list(container["args"])
    args[args.index("--port") + 1], args[args.index("--host") + 1] = str(port), "127.0.0.1"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(DLFORGE_REGISTRY="sqlite:////mnt/registry.db", DLFORGE_ARTIFACTS="/mnt/artifacts",
               PYTHONDONTWRITEBYTECODE="1", PATH=os.environ["PATH"], HOME="/nonexistent")
    command = ["unshare", "-m", "--propagation", "private", "bash", str(Path(__file__).with_name("readonly_root.sh")),
               str(volume), " ".join(empty_dirs), sys.executable, "-m", "dlforge.cli", "serve", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0]
        x = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
        r = httpx.post(f"{base}/v1/models/iris/predict", json=x, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        r = httpx.post(f"{base}/v1/models/iris/versions", params={"alias": "candidate"}, content=archive,
                       headers={**auth, "Content-Type": "application/gzip"}, timeout=30)
        assert r.status_code in (200, 201) and r.json()["version"] == 2, r.text  # written to the volume
        r = httpx.post(f"{base}/v1/models/iris/predict", json={**x, "alias": "candidate"}, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Read-only file system" not in output, output
