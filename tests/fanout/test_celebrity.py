"""The celebrity fan-out end to end: the decision (threshold), the throttle (batches and pauses),
its bookkeeping (/celebrity-stats) and pull-on-read feeds, on the real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import ClientConnection

from tests.api.test_ws import follow, open_socket, post, recv_type
from tests.conftest import JWT_SECRET
from tests.support import ServerProcess, User, admin_token, eventually

pytestmark = pytest.mark.slow


@pytest.fixture
async def sockets() -> AsyncIterator[list[ClientConnection]]:
    opened: list[ClientConnection] = []
    yield opened
    for ws in opened:
        await ws.close()


async def test_celebrity_fanout_is_batched_and_normal_posts_flow(
    server: ServerProcess,
    client: httpx.Client,
    make_user: Callable[..., User],
    sockets: list[ClientConnection],
    redis_client: redis.Redis,
) -> None:
    admin = {"Authorization": f"Bearer {admin_token(JWT_SECRET, make_user().id)}"}
    celebrity, normal_author, fan = make_user(), make_user(), make_user()
    followers = [make_user() for _ in range(6)]
    for follower in followers:
        follow(client, follower, celebrity)
    follow(client, fan, normal_author)
    settings = {"celebrity_threshold": 5, "batch_size": 2, "batch_delay": 0.4}
    response = client.post("/celebrity-settings", json=settings, headers=admin)
    assert response.status_code == 200, response.text
    try:
        await asyncio.sleep(1.2)  # every worker re-reads the settings within a second
        for follower in followers:
            sockets.append(await open_socket(server, follower))
        fan_ws = await open_socket(server, fan)
        sockets.append(fan_ws)
        await asyncio.sleep(0.3)
        assert not redis_client.exists(f"sn:followers:{celebrity.id}")  # the first post finds it uncached
        started = time.monotonic()
        celebrity_post = post(client, celebrity, "hello, my millions")
        await asyncio.sleep(0.2)
        running = client.get("/celebrity-stats").json()
        normal_post = post(client, normal_author, "meanwhile")
        assert (await recv_type(fan_ws, "post_created"))["data"]["post_id"] == normal_post
        normal_latency = time.monotonic() - started
        for ws in sockets[:6]:
            assert (await recv_type(ws, "post_created", timeout=10))["data"]["post_id"] == celebrity_post
        celebrity_duration = time.monotonic() - started
        assert normal_latency < celebrity_duration  # the normal post did not wait behind the fan-out
        assert any(j["post_id"] == celebrity_post for j in running["fanouts_in_progress"])

        # The summary is written once the last batch is routed, a moment after its delivery.
        def finished() -> dict[str, Any] | None:
            recent = client.get("/celebrity-stats").json()["recent_fanouts"]
            return next((f for f in recent if f["post_id"] == celebrity_post), None)

        done = eventually(finished, timeout=5)
        assert server.log_path is not None
        lines = server.log_path.read_text(errors="replace").splitlines()
        (logged,) = [line for line in lines if f"celebrity fan-out post_created:{celebrity_post}:" in line]
        assert "6 online " in logged
        assert "None" not in logged  # the first post's count was not cached yet: said in words
        stats = client.get("/celebrity-stats").json()
        assert any(c["user_id"] == celebrity.id for c in stats["celebrities"])
        assert done["batches"] == 3
        assert done["online"] == 6
        assert done["duration_seconds"] >= 0.8
        # Pull on read: the post is in followers' feeds without having been copied into them.
        feed = client.get("/post/feed", headers=followers[0].auth).json()
        assert feed[0]["id"] == celebrity_post

        # The first post found its audience through the database and cached the follower list
        # in the background; the next one finds it cached (intersected inside Redis).
        eventually(lambda: redis_client.scard(f"sn:followers:{celebrity.id}") == 7 or None, timeout=5)
        second = post(client, celebrity, "and again")
        for ws in sockets[:6]:
            assert (await recv_type(ws, "post_created", timeout=10))["data"]["post_id"] == second
    finally:
        client.post(
            "/celebrity-settings",
            json={"celebrity_threshold": 1000, "batch_size": 100, "batch_delay": 0.1},
            headers=admin,
        )
