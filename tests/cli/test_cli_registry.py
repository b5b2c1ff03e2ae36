"""``dlforge registry`` and ``dlforge keys`` through Typer's test runner.

The commands are mounted on a small app the way the main CLI mounts them; every command's
output is checked against the registry's own view, and bad input exits 2 with a message
and a hint, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from dlforge.models import build
from dlforge.registry import Registry, save_artifact
from dlforge.cli.registry import keys_app, registry_app

app = typer.Typer()
app.add_typer(registry_app, name="registry")
app.add_typer(keys_app, name="keys")
runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # wide enough that table cells are not wrapped (narrow terminals fold cells, never cut them)
    return {"DLFORGE_REGISTRY": str(tmp_path / "r.db"), "DLFORGE_ARTIFACTS": str(tmp_path / "store"), "COLUMNS": "200"}


@pytest.fixture(scope="module")
def arts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cli-arts")
    folders = []
    for i in range(2):
        torch.manual_seed(i)
        model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3)
        folders.append(save_artifact(model, root / f"m{i}", task="classification", metrics={"accuracy": 0.8 + i / 10}))
    return folders


def invoke(env: dict[str, str], *args: object):
    return runner.invoke(app, [str(a) for a in args], env=env)


def ok(env: dict[str, str], *args: object) -> str:
    result = invoke(env, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(env: dict[str, str], *args: object) -> str:
    result = invoke(env, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    return " ".join(result.stderr.split())


def test_register_list_show_alias_rollback_delete(env: dict[str, str], arts: list[Path]) -> None:
    first = json.loads(ok(env, "registry", "register", arts[0], "--name", "iris", "--json"))
    assert (first["name"], first["version"], first["metrics"]) == ("iris", 1, {"accuracy": 0.8})
    assert "registered iris version 2" in ok(env, "registry", "register", arts[1], "--name", "iris",
                                             "--metadata", '{"owner": "ml"}')
    reg = Registry(env["DLFORGE_REGISTRY"], env["DLFORGE_ARTIFACTS"])
    assert reg.get("iris", version=2).metadata["owner"] == "ml"

    assert "iris production -> version 1 (new)" in ok(env, "registry", "alias", "iris", "production", 1)
    assert "iris production -> version 2 (was 1)" in ok(env, "registry", "alias", "iris", "production", 2)
    assert json.loads(ok(env, "registry", "list", "--json")) == reg.models()
    table = ok(env, "registry", "list")
    assert "iris" in table and "production=2" in table

    shown = json.loads(ok(env, "registry", "show", "iris", "--json"))
    assert shown["aliases"] == {"production": 2} and shown["traffic"] is None
    assert shown["versions"] == [v.to_dict() for v in reg.versions("iris")]
    table = ok(env, "registry", "show", "iris")
    assert "accuracy=0.9000" in table and first["sha256"][:12] in table
    narrow = ok({**env, "COLUMNS": "80"}, "registry", "show", "iris")
    assert "…" not in narrow and first["sha256"][:12] in narrow, "a narrow terminal wraps cells, never cuts them"

    assert "iris production -> version 1 (was 2)" in ok(env, "registry", "rollback", "iris", "production")
    assert "deleted iris version 2" in ok(env, "registry", "delete", "iris", 2)
    assert [v.version for v in reg.versions("iris")] == [1] and reg.aliases("iris") == {"production": 1}
    reg.close()


def test_options_override_the_environment(tmp_path: Path, arts: list[Path]) -> None:
    db, store = tmp_path / "other.db", tmp_path / "other-store"
    ok({}, "registry", "register", arts[0], "--name", "iris", "--registry", db, "--artifacts", store)
    with Registry(db, store) as reg:
        assert [m["name"] for m in reg.models()] == ["iris"] and len(list(store.glob("??/*"))) == 1


def test_errors_exit_2_with_message_and_hint(env: dict[str, str], arts: list[Path], tmp_path: Path) -> None:
    assert "error: no model named 'iris'" in fails(env, "registry", "show", "iris")
    ok(env, "registry", "register", arts[0], "--name", "iris")
    text = fails(env, "registry", "alias", "iris", "production", 3)
    assert "model 'iris' has no version 3" in text and "hint: it has versions 1" in text
    assert "model 'iris' has no alias 'x'" in fails(env, "registry", "rollback", "iris", "x")
    ok(env, "registry", "alias", "iris", "production", 1)
    assert "in use by alias(es) production" in fails(env, "registry", "delete", "iris", 1)
    assert "model name '../x' is not allowed" in fails(env, "registry", "register", arts[0], "--name", "../x")
    assert "--metadata is not valid JSON" in fails(env, "registry", "register", arts[0], "--name", "iris",
                                                   "--metadata", "{owner}")
    text = fails(env, "registry", "register", tmp_path, "--name", "iris")
    assert "cannot register" in text and "hint:" in text
    assert "no API key with id 5" in fails(env, "keys", "revoke", 5)


def test_empty_registry_says_how_to_start(env: dict[str, str]) -> None:
    result = invoke(env, "registry", "list")
    assert result.exit_code == 0 and result.stdout == ""
    assert "dlforge registry register MODEL_DIR --name NAME" in " ".join(result.stderr.split())
    assert json.loads(ok(env, "registry", "list", "--json")) == []


def test_registry_errors_name_the_registry_url(env: dict[str, str], arts: list[Path], tmp_path: Path) -> None:
    # the store's messages leave the URL out (a server shows them to clients); the shell adds it
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert f"the registry is empty; add one with `dlforge registry register MODEL_DIR --name NAME`; registry: {url}" \
        in fails(env, "registry", "show", "iris")
    ok(env, "registry", "register", arts[0], "--name", "iris")
    assert f"hint: registered models: iris; registry: {url}" in fails(env, "registry", "show", "nope")


def test_keys_create_list_revoke(env: dict[str, str]) -> None:
    result = invoke(env, "keys", "create", "--admin", "--label", "ops")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("dlf_") and "cannot be shown again" in result.stderr
    created = json.loads(ok(env, "keys", "create", "--label", "ci", "--json"))
    assert (created["admin"], created["label"]) == (False, "ci")
    reg = Registry(env["DLFORGE_REGISTRY"], env["DLFORGE_ARTIFACTS"])
    assert (reg.check_key(key), reg.check_key(created["key"])) == ("admin", "predict")

    listing = json.loads(ok(env, "keys", "list", "--json"))
    assert listing == reg.keys() and not any(key in json.dumps(k) for k in listing)
    table = ok(env, "keys", "list")
    assert "ops" in table and "admin" in table and key not in table

    assert "revoked key 2" in ok(env, "keys", "revoke", 2)
    assert reg.check_key(created["key"]) is None and reg.check_key(key) == "admin"
    reg.close()
