"""Rate limits shared through Redis: per client IP for auth, per user for writes; 429 + Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.support import ServerProcess, register, user_payload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def limited(server_env: dict[str, str], redis_client: redis.Redis) -> Iterator[httpx.Client]:
    for key in redis_client.scan_iter("sn:rl:*"):
        redis_client.delete(key)
    env = {
        **server_env,
        "SN_RATE_LIMIT_AUTH": "4",
        "SN_RATE_LIMIT_WRITE": "3",
        # An hour-long window: the test cannot straddle a window boundary and see a reset.
        "SN_RATE_LIMIT_WINDOW_SECONDS": "3600",
    }
    server = ServerProcess(env, workers=2).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            yield http
    finally:
        server.stop()
        for key in redis_client.scan_iter("sn:rl:*"):
            redis_client.delete(key)


def test_auth_and_write_limits(limited: httpx.Client) -> None:
    author = register(limited)  # register + login: 2 of the IP's 4 auth requests
    other = register(limited)  # 4 of 4
    refused = limited.post("/user/register", json=user_payload())
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "rate limit" in refused.json()["message"]
    assert limited.post("/login", json={"id": author.id, "password": "correct horse"}).status_code == 429

    # Writes are counted per user, across both workers (the counter lives in Redis).
    for i in range(3):
        assert limited.post("/post/create", json={"text": str(i)}, headers=author.auth).status_code == 200
    assert limited.post("/post/create", json={"text": "4th"}, headers=author.auth).status_code == 429
    assert limited.post(f"/dialog/{other.id}/send", json={"text": "x"}, headers=author.auth).status_code == 429
    # Another user's budget is untouched; reads are never limited.
    assert limited.post("/post/create", json={"text": "mine"}, headers=other.auth).status_code == 200
    assert limited.get("/post/feed", headers=author.auth).status_code == 200
