"""Uploading an artifact that could not be served answers 400 with the reason and stores nothing.

Before: each of these answered 201, then every predict on it 500 (class names that do not fit
the head) or 200 with null probabilities (NaN weights, a std of 0); the 10^8-input one was
refused only after 11.9 s and 3.8 GB. The artifacts come from tests/registry/test_validate.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.registry.test_validate import BAD, bad_artifact
from tests.serve.test_admin import GZIP, X, blobs, targz
from tests.serve.test_security import assert_error_body


@pytest.mark.parametrize("case", sorted(BAD))
def test_unservable_upload_is_400_with_the_reason_and_stores_nothing(make_client, serve_env, tmp_path: Path,
                                                                    case: str) -> None:
    client = make_client()
    folder, reason = bad_artifact(case, tmp_path / "bad")
    before = (serve_env.registry.versions("iris"), serve_env.registry.aliases("iris"), blobs(serve_env))
    start = time.perf_counter()
    response = client.post("/v1/models/iris/versions?alias=production", content=targz(folder),
                           headers={**serve_env.headers(admin=True), **GZIP})
    assert time.perf_counter() - start < 5
    error = assert_error_body(response, 400)
    assert error["message"].startswith("the uploaded artifact cannot be loaded: ") and reason in error["message"]
    assert error["hint"] and str(tmp_path) not in response.text
    assert (serve_env.registry.versions("iris"), serve_env.registry.aliases("iris"), blobs(serve_env)) == before
    answer = client.post("/v1/models/iris/predict", json={"inputs": X}, headers=serve_env.headers())
    assert answer.status_code == 200 and answer.json()["version"] == 1  # production still serves version 1
