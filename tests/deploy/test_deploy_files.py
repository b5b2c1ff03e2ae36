"""The deployment files, checked by reading them (Docker does not run in CI).

The compose file and the Prometheus config are parsed with PyYAML; the Dockerfile with a
small parser of its instructions (continuation lines joined, comments dropped).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with ``\\`` continuations joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD argument as a list: JSON exec form or shell form."""
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def substitute(value: str) -> str:
    """Compose's ``${VAR:-default}`` interpolation with nothing set in the environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def index_of(instructions: list[tuple[str, str]], word: str, pattern: str) -> int:
    hits = [i for i, (w, args) in enumerate(instructions) if w == word and re.search(pattern, args)]
    assert hits, f"no {word} matching {pattern!r}"
    return hits[0]


def test_parser_reads_continuations_and_exec_form() -> None:
    parsed = dockerfile_instructions("# c\nFROM a\nRUN x \\\n  # note\n    && y\nCMD [\"p\", \"-c\"]\n")
    assert parsed == [("FROM", "a"), ("RUN", "x      && y"), ("CMD", '["p", "-c"]')]
    assert exec_form(parsed[2][1]) == ["p", "-c"]
    assert substitute("u:${PW:-secret}@h") == "u:secret@h"


def test_dockerfile_base_torch_then_project(dockerfile: list[tuple[str, str]]) -> None:
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    torch = index_of(dockerfile, "RUN", r"pip install torch==2\.13\.0")
    run = shlex.split(dockerfile[torch][1])
    assert run[run.index("--index-url") + 1] == TORCH_CPU_INDEX
    project = index_of(dockerfile, "RUN", r"pip install \.(\s|$)")
    copy_src = index_of(dockerfile, "COPY", r"^src\b")
    assert torch < copy_src < project  # torch's layer survives edits to the source


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [args for word, args in dockerfile if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (w, _) in enumerate(dockerfile) if w == "USER")
    last_run = max(i for i, (w, _) in enumerate(dockerfile) if w == "RUN")
    assert last_run < last_user  # installs run as root; the server starts after the switch
    assert users[-1] == "{0}:{1}".format(*image_user_ids(dockerfile))  # numeric: runAsNonRoot can check it


def image_user_ids(instructions: list[tuple[str, str]]) -> tuple[int, int]:
    """(uid, gid) of the user the Dockerfile creates (``groupadd --gid`` and ``useradd --uid --gid``)."""
    useradd = shlex.split(instructions[index_of(instructions, "RUN", r"useradd")][1])
    start = useradd.index("useradd")
    uid = int(useradd[useradd.index("--uid", start) + 1])
    gid = int(useradd[useradd.index("--gid", start) + 1])
    groupadd = useradd[useradd.index("groupadd"):start]
    assert int(groupadd[groupadd.index("--gid") + 1]) == gid  # the group exists with that id
    return uid, gid


def test_dockerfile_healthcheck_uses_python_on_healthz(dockerfile: list[tuple[str, str]]) -> None:
    (check,) = [args for word, args in dockerfile if word == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command.strip())
    assert argv[:2] == ["python", "-c"]  # slim images have no curl
    assert "http://127.0.0.1:8000/healthz" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")


def test_dockerfile_serves_on_all_interfaces_port_8000(dockerfile: list[tuple[str, str]]) -> None:
    assert ("EXPOSE", "8000") in dockerfile
    cmd = [exec_form(args) for word, args in dockerfile if word in ("CMD", "ENTRYPOINT")]
    argv = [a for part in cmd for a in part]
    assert argv[:2] == ["dlforge", "serve"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8000"
    assert "--no-auth" not in argv  # reachable from the network: keys stay required
    env = " ".join(args for word, args in dockerfile if word == "ENV")
    assert "DLFORGE_REGISTRY=" in env and "DLFORGE_ARTIFACTS=" in env


def test_dockerignore_keeps_what_the_build_copies(dockerfile: list[tuple[str, str]]) -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    copied = [src for word, args in dockerfile if word == "COPY" for src in shlex.split(args)[:-1]]
    assert copied and {"src", "pyproject.toml", "README.md"} <= set(copied)
    for path in copied:
        assert not any(fnmatch.fnmatch(path, p) for p in patterns), path
    for heavy in (".venv", ".git", "runs"):
        assert heavy in patterns


def test_compose_services_ports_and_order(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"server", "postgres", "prometheus"}
    server = services["server"]
    assert server["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ".." / server["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert "8000:8000" in server["ports"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["prometheus"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert any(p.endswith("9090:9090") for p in services["prometheus"]["ports"])
    assert services["postgres"]["image"] == "postgres:15"
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_compose_healthchecks(compose: dict) -> None:
    services = compose["services"]
    server_test = services["server"]["healthcheck"]["test"]
    assert server_test[:3] == ["CMD", "python", "-c"] and "/healthz" in server_test[3]
    compile(server_test[3], "<healthcheck>", "exec")
    pg_test = services["postgres"]["healthcheck"]["test"]
    assert pg_test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(pg_test[1:])


def test_compose_registry_url_matches_the_database(compose: dict) -> None:
    server, pg = compose["services"]["server"], compose["services"]["postgres"]
    url = make_url(substitute(server["environment"]["DLFORGE_REGISTRY"]))
    env = {k: substitute(v) for k, v in pg["environment"].items()}
    assert url.drivername == "postgresql+psycopg"  # psycopg 3, a dlforge dependency
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])
    artifacts = server["environment"]["DLFORGE_ARTIFACTS"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in server["volumes"]}
    assert volumes[artifacts] in compose["volumes"]  # a named volume, kept across restarts
    pg_volume = pg["volumes"][0].split(":")
    assert pg_volume[1] == "/var/lib/postgresql/data" and pg_volume[0] in compose["volumes"]


def test_compose_mounts_the_prometheus_config(compose: dict) -> None:
    mounts = compose["services"]["prometheus"]["volumes"]
    (mount,) = [m for m in mounts if m.split(":")[1] == "/etc/prometheus/prometheus.yml"]
    assert (DEPLOY / mount.split(":")[0]).resolve() == (DEPLOY / "prometheus.yml").resolve()


def test_prometheus_scrapes_the_server_service(compose: dict) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dlforge"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = targets[0].split(":")
    assert host in compose["services"]  # the compose service name resolves on its network
    published = [p.split(":")[-1] for p in compose["services"][host]["ports"]]
    assert port in published and port == "8000"


def test_registry_reads_the_environment_the_image_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = pytest.importorskip("dlforge.registry.store")
    db, artifacts = tmp_path / "r.db", tmp_path / "artifacts"
    monkeypatch.setenv("DLFORGE_REGISTRY", f"sqlite:///{db}")
    monkeypatch.setenv("DLFORGE_ARTIFACTS", str(artifacts))
    registry = store.Registry()
    try:
        assert str(db) in registry.url
        assert registry.models() == []
    finally:
        registry.close()
    assert db.exists()
