"""API keys provisioned from the environment (a Kubernetes Secret): ``dlforge serve`` reads
``$DLFORGE_ADMIN_KEYS`` / ``$DLFORGE_PREDICT_KEYS`` and the server makes them valid at start-up,
on every replica, without ever showing them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dlforge.errors import RegistryError
from dlforge.registry.store import Registry
from dlforge.serve.settings import ServeSettings

ADMIN = "dlf_" + "a1" * 16
PREDICT = "dlf_" + "p2" * 16
PREDICT_PATH = "/v1/models/iris/predict"


def test_provisioned_keys_work_with_their_roles_on_every_start(serve_env, make_client) -> None:
    for _ in range(2):  # a second replica (or a restart) provisions the same keys: no error, no duplicate
        client = make_client(admin_keys=[ADMIN], predict_keys=[PREDICT])
        body = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
        assert client.post(PREDICT_PATH, json=body, headers={"Authorization": f"Bearer {PREDICT}"}).status_code == 200
        admin_route = "/v1/models/iris/traffic"  # an admin route: DELETE stops a split (none is set: harmless)
        assert client.delete(admin_route, headers={"Authorization": f"Bearer {PREDICT}"}).status_code == 403
        assert client.delete(admin_route, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    labels = [k["label"] for k in serve_env.registry.keys()]
    assert labels.count("from the environment") == 2
    assert ADMIN not in repr(ServeSettings(admin_keys=[ADMIN]))  # settings never show a key


def test_weak_or_conflicting_keys_are_refused() -> None:
    registry = Registry("sqlite://")
    with pytest.raises(RegistryError, match="at least 36"):
        registry.provision_key("dlf_short")
    with pytest.raises(RegistryError, match="at least 36"):
        registry.provision_key("dlf_" + "x" * 30 + " y")
    registry.provision_key(ADMIN, admin=True)
    with pytest.raises(RegistryError, match="another role"):
        registry.provision_key(ADMIN, admin=False)
    key_id = registry.keys()[0]["id"]
    registry.revoke_key(key_id)
    assert registry.provision_key(ADMIN, admin=True) is False and registry.check_key(ADMIN) is None  # stays revoked


def test_dlforge_serve_reads_the_keys_from_the_environment(monkeypatch) -> None:
    import dlforge.serve.server as server
    from dlforge.cli import app

    seen = {}
    monkeypatch.setattr(server, "run", lambda settings, **kw: seen.setdefault("settings", settings))
    monkeypatch.setenv("DLFORGE_ADMIN_KEYS", f" {ADMIN} ")
    monkeypatch.setenv("DLFORGE_PREDICT_KEYS", f"{PREDICT},{PREDICT[:-1]}Z")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert [k.get_secret_value() for k in settings.admin_keys] == [ADMIN]
    assert [k.get_secret_value() for k in settings.predict_keys] == [PREDICT, PREDICT[:-1] + "Z"]
    assert ADMIN not in result.output
