"""Writes whose durable part committed answer 200 while Redis is down, and the caches are repaired
once it is back (sn/feed.py: the request path's cache steps; the pipeline's outbox events).

Redis here is a private Valkey behind a TCP proxy this module cuts; the database is one no other
server uses (the session server's outbox relay would otherwise publish this server's events).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from sn.dev.embedded import EmbeddedRedis
from tests.proxy import TcpProxy
from tests.support import ServerProcess, User, eventually, register

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TcpProxy, str]]:
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("valkey"))) as valkey:
        parts = urlsplit(valkey.url)
        with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
            yield proxy, urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))


@pytest.fixture(scope="module")
def app(
    server_env: dict[str, str], private_database_url: str, redis_proxy: tuple[TcpProxy, str]
) -> Iterator[httpx.Client]:
    env = {
        **server_env,
        "SN_DATABASE_URL": private_database_url,
        "SN_REDIS_URL": redis_proxy[1],
        "SN_REQUEST_TIMEOUT_SECONDS": "10",
    }
    server = ServerProcess(env, workers=1).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def _follows(database_url: str, follower: User, author: User) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM friendships f JOIN followers r ON r.author_id = f.friend_id"
                " AND r.follower_id = f.user_id WHERE f.user_id = $1 AND f.friend_id = $2",
                int(follower.id),
                int(author.id),
            )
            return bool(found)
        finally:
            await conn.close()

    return asyncio.run(query())


def _feed(app: httpx.Client, user: User) -> list[tuple[str, str]] | None:
    response = app.get("/post/feed", headers=user.auth)
    return [(p["id"], p["text"]) for p in response.json()] if response.status_code == 200 else None


def test_follow_unfollow_and_post_writes_answer_200_while_redis_is_down(
    app: httpx.Client, redis_proxy: tuple[TcpProxy, str], private_database_url: str
) -> None:
    proxy, _ = redis_proxy
    reader, author, newcomer = register(app), register(app), register(app)
    post_id = app.post("/post/create", json={"text": "v1"}, headers=author.auth).json()
    # Warm the caches the writes below would leave stale: the reader's (empty) feed and follow
    # list, and the post's body.
    assert _feed(app, reader) == []
    assert app.get(f"/post/get/{post_id}").json()["text"] == "v1"

    proxy.cut()
    try:
        followed = app.put(f"/friend/set/{author.id}", headers=reader.auth)
        assert followed.status_code == 200, followed.text
        assert followed.json() == {"message": "friend added"}
        assert _follows(private_database_url, reader, author)
        # A token this server has not seen yet: its subject is checked in the database alone.
        assert app.put(f"/friend/set/{author.id}", headers=newcomer.auth).status_code == 200
        assert _follows(private_database_url, newcomer, author)
        updated = app.put("/post/update", json={"id": post_id, "text": "v2"}, headers=author.auth)
        assert updated.status_code == 200, updated.text
        created = app.post("/post/create", json={"text": "while redis is away"}, headers=author.auth)
        assert created.status_code == 200, created.text
        # Reads need Redis: they still say so (nothing stale is served meanwhile).
        assert app.get("/post/feed", headers=reader.auth).status_code == 503
    finally:
        proxy.restore()

    # Repaired from the outbox once Redis is back: the follow is in the feed, with the new text.
    expected = [(created.json(), "while redis is away"), (post_id, "v2")]
    eventually(lambda: _feed(app, reader) == expected, timeout=30, interval=0.3)
    eventually(lambda: app.get(f"/post/get/{post_id}").json().get("text") == "v2", timeout=30, interval=0.3)

    proxy.cut()
    try:
        unfollowed = app.put(f"/friend/delete/{author.id}", headers=reader.auth)
        assert unfollowed.status_code == 200, unfollowed.text
        assert not _follows(private_database_url, reader, author)
        deleted = app.put(f"/post/delete/{post_id}", headers=author.auth)
        assert deleted.status_code == 200, deleted.text
    finally:
        proxy.restore()
    eventually(lambda: _feed(app, reader) == [], timeout=30, interval=0.3)
    eventually(lambda: app.get(f"/post/get/{post_id}").status_code == 404, timeout=30, interval=0.3)
