"""Dependencies going away and coming back: 503 + Retry-After, then recovery without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.proxy import TcpProxy
from tests.support import ServerProcess, register

pytestmark = pytest.mark.slow


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture(scope="module")
def proxies(database_url: str, redis_url: str) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    pg, rd = urlsplit(database_url), urlsplit(redis_url)
    with (
        TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432) as pg_proxy,
        TcpProxy(rd.hostname or "127.0.0.1", rd.port or 6379) as redis_proxy,
    ):
        yield pg_proxy, redis_proxy


@pytest.fixture(scope="module")
def fragile(
    server_env: dict[str, str], proxies: tuple[TcpProxy, TcpProxy], database_url: str, redis_url: str
) -> Iterator[httpx.Client]:
    pg_proxy, redis_proxy = proxies
    env = {
        **server_env,
        "SN_DATABASE_URL": _through(database_url, pg_proxy),
        "SN_REDIS_URL": _through(redis_url, redis_proxy),
        "SN_DB_POOL_MIN": "1",
        "SN_REQUEST_TIMEOUT_SECONDS": "5",
    }
    server = ServerProcess(env, workers=1).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=15) as http:
            yield http
    finally:
        server.stop()


def _eventually(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert check()  # type: ignore[operator]
            return
        except (AssertionError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _assert_503(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert dependency in body["message"]
    assert body["code"] == 503
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert int(response.headers["Retry-After"]) > 0


def test_redis_down_then_back(fragile: httpx.Client, proxies: tuple[TcpProxy, TcpProxy]) -> None:
    user = register(fragile)
    _, redis_proxy = proxies
    redis_proxy.cut()
    try:
        _assert_503(fragile.get(f"/user/get/{user.id}"), "redis")
        ready = fragile.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("down")
        assert fragile.get("/health").status_code == 200
    finally:
        redis_proxy.restore()
    _eventually(lambda: fragile.get(f"/user/get/{user.id}").status_code == 200)
    # Ready again once the worker's loops are past their outage backoff (at most ~3 s).
    _eventually(lambda: fragile.get("/ready").status_code == 200)


def test_postgres_down_then_back(fragile: httpx.Client, proxies: tuple[TcpProxy, TcpProxy]) -> None:
    user = register(fragile)
    pg_proxy, _ = proxies
    pg_proxy.cut()

    # A write: every write goes to SN_DATABASE_URL (on Citus some reads go straight to workers,
    # which this proxy does not cut).
    def write() -> httpx.Response:
        return fragile.post("/post/create", json={"text": "while the database is away"}, headers=user.auth)

    try:
        _assert_503(write(), "postgres")
        assert fragile.get("/ready").json()["checks"]["postgres"].startswith("down")
    finally:
        pg_proxy.restore()
    _eventually(lambda: write().status_code == 200)
