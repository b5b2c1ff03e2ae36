"""Four processes registering five different artifacts each into one model name at once.

On SQLite and on PostgreSQL the versions must come out exactly 1..20, each artifact exactly
once, with no lost or doubled registration, while the processes also race to create the
tables of a brand-new database.

The workers replace ``dlforge.registry.artifact`` (and ``validate``) by stand-ins that read model.json
without importing torch: four torch imports cost ~20 CPU-seconds on a 2-core runner, and
what is under test here is the database and blob store, not artifact loading (which
test_store.py covers with the real ``load_artifact``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlforge.models import build
from dlforge.registry import Registry, save_artifact
from dlforge.registry.blobs import content_hash

PROCESSES, PER_PROCESS = 4, 5

# Each worker imports everything, says it is ready, waits for the "go" file so that all start together,
# then registers its folders one after another and prints the versions it got.
WORKER = """
import json, sys, time, types
from pathlib import Path

def load_artifact(path):
    meta = json.loads((Path(path) / "model.json").read_text())
    return types.SimpleNamespace(meta=meta, path=Path(path))

stand_in = types.ModuleType("dlforge.registry.artifact")
stand_in.load_artifact, stand_in.save_artifact, stand_in.Artifact = load_artifact, None, None
sys.modules["dlforge.registry.artifact"] = stand_in
checks = types.ModuleType("dlforge.registry.validate")  # check_artifact imports torch too: test_validate.py covers it
checks.check_artifact = lambda folder, **_: None
sys.modules["dlforge.registry.validate"] = checks
from dlforge.registry import Registry
url, artifacts, go, ready, *folders = sys.argv[1:]
reg = Registry(url, artifacts)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
print(json.dumps([[reg.register(f, "shared").version, str(f)] for f in folders]))
"""


def _artifacts(root: Path) -> list[Path]:
    folders = []
    for i in range(PROCESSES * PER_PROCESS):
        torch.manual_seed(i)
        model = build({"arch": "mlp", "hidden": [4]}, input_shape=(3,), num_outputs=2)
        folders.append(save_artifact(model, root / f"m{i:02d}", task="classification"))
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_registrations_get_distinct_consecutive_versions(backend: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    url = str(tmp_path / "registry.db") if backend == "sqlite" else request.getfixturevalue("pg_registry_url")
    store, go = tmp_path / "store", tmp_path / "go"
    folders = _artifacts(tmp_path / "src")
    chunks = [folders[i::PROCESSES] for i in range(PROCESSES)]
    ready = [tmp_path / f"ready{i}" for i in range(PROCESSES)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(store), str(go), str(flag), *map(str, chunk)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for chunk, flag in zip(chunks, ready)]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), "a worker died before starting"
        time.sleep(0.01)
    go.touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out))

    got = [version for result in results for version, _ in result]
    assert sorted(got) == list(range(1, PROCESSES * PER_PROCESS + 1))
    for result in results:  # each process registered in order, so its versions increase
        assert [v for v, _ in result] == sorted(v for v, _ in result)
    with Registry(url, store) as reg:
        versions = reg.versions("shared")
        assert [v.version for v in versions] == list(range(1, PROCESSES * PER_PROCESS + 1))
        by_version = {version: Path(folder) for result in results for version, folder in result}
        assert all(v.sha256 == content_hash(by_version[v.version]) for v in versions)
        assert len({v.sha256 for v in versions}) == PROCESSES * PER_PROCESS
        assert reg.revision() == PROCESSES * PER_PROCESS
    assert sorted(p.name for p in store.glob("??/*")) == sorted(v.sha256 for v in versions)
