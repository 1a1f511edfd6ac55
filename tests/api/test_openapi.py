"""/docs/openapi.json: generated from the routes, complete, and true about what the server accepts.

The fuzz test runs schemathesis against the session server's own document: every request the
document allows must get neither a 5xx nor a refusal. The refusals a valid request may still get
are the ones that depend on state, not on the request's form, and each is declared on its
operation: 401/403 (whose token), 404 (an id that names nothing), 409 (an email already taken).
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sn.api.openapi import registered
from sn.app import create_app
from sn.settings import Settings
from tests.support import ServerProcess, User, register

STATE_DEPENDENT_REFUSALS = ["401", "403", "404", "409"]
_PLACEHOLDER = re.compile(r"\{[^}]+\}|<[^>]+>")


def _shape(path: str) -> str:
    # Documented names follow the OTUS spec (`{id}`), the router's the handlers' (`<post_id:str>`).
    return _PLACEHOLDER.sub("{}", path)


def test_documented_operations_are_the_registered_routes(client: httpx.Client) -> None:
    document = client.get("/docs/openapi.json").json()
    documented = {(_shape(path), method) for path, item in document["paths"].items() for method in item}
    app = create_app(Settings(), name="openapi_routes")
    routes = {(_shape(path), method) for path, method, _handler in registered(app)}
    assert documented == routes
    # The ones a hand-kept table forgot before: monitoring, admin, the web client, the WebSockets.
    for path, method in [
        ("/stats", "get"),
        ("/celebrity-stats", "get"),
        ("/metrics", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/admin/hot-users/{}", "post"),
        ("/web/{}", "get"),
        ("/ws/{}", "get"),
        ("/post/feed/posted", "get"),
    ]:
        assert (path, method) in documented


def test_document_uses_the_otus_names_and_declares_the_handlers_checks(client: httpx.Client) -> None:
    document = client.get("/docs/openapi.json").json()
    paths = document["paths"]
    for path in ("/user/get/{id}", "/post/get/{id}", "/post/delete/{id}", "/friend/set/{user_id}"):
        assert path in paths, path
    schemas = document["components"]["schemas"]
    register_schema = schemas["RegisterRequest"]
    assert set(register_schema["required"]) >= {"first_name", "second_name", "birthdate", "password", "city"}
    assert register_schema["properties"]["password"]["minLength"] == 8
    assert schemas["PostCreateRequest"]["properties"]["text"]["maxLength"] == Settings().post_max_chars
    assert schemas["DialogSendRequest"]["properties"]["text"]["maxLength"] == Settings().dialog_max_chars
    limit = next(p for p in paths["/post/feed"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}
    assert paths["/post/create"]["post"]["security"] == [{"bearerAuth": []}]
    socket = paths["/post/feed/posted"]["get"]["responses"]
    assert {"101", "401", "426"} <= set(socket)


@pytest.fixture(scope="module")
def fuzz_user(client: httpx.Client) -> User:
    return register(client)


@pytest.fixture(scope="module")
def api_schema(client: httpx.Client) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", *STATE_DEPENDENT_REFUSALS]}},
            # Only requests the document allows: this test is about valid requests being served.
            "generation": {"mode": "positive"},
        }
    )
    document = client.get("/docs/openapi.json").json()
    # An HTTP client cannot speak WebSocket: those two are covered by tests/api/test_ws.py.
    return schemathesis.openapi.from_dict(document, config=config).exclude(tag="websocket")


# Driven by hand (one Hypothesis run per operation) rather than by schemathesis' pytest plugin,
# whose lazy-fixture loader does not work with pytest 9.2.
@pytest.mark.slow
def test_every_valid_request_is_served(api_schema: Any, server: ServerProcess, fuzz_user: User) -> None:
    failures: list[str] = []
    operations = 0
    calls: dict[str, int] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            # SN_TEST_FUZZ_EXAMPLES: more examples for a deliberate, longer search (80 found nothing on 2026-12-02).
            max_examples=int(os.environ.get("SN_TEST_FUZZ_EXAMPLES", "6")),
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            case.call_and_validate(
                base_url=server.base_url,
                headers=fuzz_user.auth,
                checks=[not_a_server_error, positive_data_acceptance],
                timeout=30,
            )

        try:
            run()
        except Exception as exc:  # every operation is tried; all failures reported together
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 25
    # Operations with parameters or a body got several distinct requests each.
    assert sum(calls.values()) >= 3 * operations
    assert not failures, "\n\n".join(failures)
