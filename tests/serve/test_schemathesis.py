"""Property-based API test: schemathesis generates requests from the app's own OpenAPI
document, for every operation, and no response may be a 5xx.

Requests carry a valid admin key, so generated inputs reach the routes (the admin key is
accepted by predict routes too) rather than stopping at the 401, and about half of the
generated path names are swapped for ones that exist (model "iris", its aliases and
versions), so requests get past the 404 into the handlers. Each operation gets a fresh
registry (conftest's ``serve_env``) since admin operations change it. Examples are bounded
(``MAX_EXAMPLES`` per operation) and derandomized so CI runs are reproducible.

The schema is read from an app built at import (building one opens nothing: the registry
is opened by the lifespan); ``schemathesis.pytest.from_fixture`` would be the natural
loader, but it reads ``Node._nodeid``, which pytest 9 no longer has.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from dlforge.serve.main import create_app
from dlforge.serve.settings import ServeSettings

MAX_EXAMPLES = 25
KNOWN = {"name": ["iris"], "alias": ["production", "candidate"], "version": [1, 2]}

schema = schemathesis.openapi.from_dict(create_app(ServeSettings()).openapi())
# The upload route takes raw bytes (application/gzip): send generated binaries as they are.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy:
    """Each path parameter: the generated value or, as often, one that exists in serve_env."""
    if not isinstance(path_parameters, dict):  # negative cases may make the container itself invalid
        return st.just(path_parameters)
    return st.fixed_dictionaries({
        key: st.sampled_from([value, *KNOWN[key]]) if key in KNOWN else st.just(value)
        for key, value in path_parameters.items()
    })


@pytest.fixture
def app(serve_env) -> FastAPI:
    """The app under test; schemathesis runs its lifespan and ends it at the test's teardown."""
    return create_app(serve_env.settings(poll_interval=60.0, max_upload_bytes=2**20, max_inputs=64))


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case, app: FastAPI, serve_env) -> None:
    response = case.call(app=app, headers=serve_env.headers(admin=True))
    case.validate_response(response, checks=[not_a_server_error])
