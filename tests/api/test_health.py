from __future__ import annotations

import httpx


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}


def test_request_id_is_echoed_or_generated(client: httpx.Client) -> None:
    given = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/nope")
    assert generated.status_code == 404
    assert generated.headers["X-Request-ID"]
    assert generated.json()["message"]


def test_method_not_allowed_is_json(client: httpx.Client) -> None:
    response = client.delete("/user/register")
    assert response.status_code == 405
    assert response.json()["message"]


def test_cors_preflight_and_simple(client: httpx.Client) -> None:
    preflight = client.options(
        "/post/create", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    simple = client.get("/health", headers={"Origin": "https://app.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "*"


def test_openapi_document_describes_every_route(client: httpx.Client) -> None:
    doc = client.get("/docs/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/login",
        "/user/register",
        "/user/get/{id}",
        "/user/search",
        "/friend/set/{user_id}",
        "/post/create",
        "/post/feed",
        "/dialog/{user_id}/send",
        "/dialog/{user_id}/list",
    ):
        assert path in doc["paths"], path
    register = doc["components"]["schemas"]["RegisterRequest"]
    assert set(register["required"]) >= {"first_name", "second_name", "birthdate", "password", "city"}
    assert register["properties"]["password"]["minLength"] == 8
