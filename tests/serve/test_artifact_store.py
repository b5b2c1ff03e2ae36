"""A server pointed at another artifact store than the registry's versions were registered into
says so (and how to fix it), instead of calling the artifact damaged."""

from __future__ import annotations

from pathlib import Path


def test_a_server_looking_in_another_store_says_so(serve_env, make_client, tmp_path: Path) -> None:
    client = make_client(artifacts=str(tmp_path / "elsewhere"))
    response = client.post("/v1/models/iris/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
                           headers=serve_env.headers())
    assert response.status_code == 503
    text = response.text
    assert "not in this server's artifact store" in text and "--artifacts" in text
    assert str(tmp_path) not in text  # no storage path reaches a client
