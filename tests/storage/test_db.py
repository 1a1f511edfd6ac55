"""Arrays of ids reach PostgreSQL without asyncpg's type introspection (see sn.ids.id_array).

On a Citus coordinator that introspection costs ~350 ms per new connection; here it is only observed, through
asyncpg's query logger, on a fresh connection to the real database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from sn.ids import IdGenerator
from sn.pipeline import events
from sn.pipeline.bus import Queue
from sn.pipeline.outbox import Outbox, OutboxRelay
from sn.pipeline.redis_bus import RedisStreamBus
from sn.storage.friends import FriendRepository
from sn.storage.posts import PostRepository

SN = Path(__file__).resolve().parents[2] / "sn"
# What asyncpg sends to learn a type it has no codec for (asyncpg.introspection).
INTROSPECTION = "typeinfo_tree"


@pytest.fixture
async def one_connection(private_database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """A pool of one fresh connection (every repository call goes through it), and the queries it sent."""
    pool = await asyncpg.create_pool(private_database_url, min_size=1, max_size=1)
    assert pool is not None
    sent: list[str] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
    yield pool, sent
    await pool.close()


async def _to_feed(event: events.PipelineEvent) -> Queue:
    return "feed"


async def test_id_array_queries_send_no_type_introspection(
    one_connection: tuple[asyncpg.Pool, list[str]], redis_url: str
) -> None:
    pool, sent = one_connection
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1003)
    posts = PostRepository(pool, Outbox(ids.next_id))
    author = ids.next_id()
    created = [await posts.create(ids.next_id(), author, f"p{i}") for i in range(3)]
    keys = [(post.id, author) for post in created]

    assert {row.id for row in await posts.get_many([(author, post_id) for post_id, _ in keys])} == {
        post.id for post in created
    }
    assert sorted(await posts.feed_keys([author, ids.next_id()], 10), reverse=True) == sorted(keys, reverse=True)
    assert await FriendRepository(pool).followers_among(author, [ids.next_id()]) == []
    redis = Redis.from_url(redis_url)
    prefix = f"test-db-{uuid.uuid4().hex[:8]}"
    bus = RedisStreamBus(redis, node_id="test", consumer="c1", prefix=prefix)
    await bus.start()
    try:
        assert await OutboxRelay(pool, bus, _to_feed).drain_once() == 3  # its DELETE takes the rows' ids
    finally:
        await bus.close()
        for key in [k async for k in redis.scan_iter(f"{prefix}*")]:
            await redis.delete(key)
        await redis.aclose()

    assert any("unnest" in query for query in sent), "the queries under test did not go through this connection"
    assert not [query for query in sent if INTROSPECTION in query]


def test_no_query_in_sn_takes_a_bigint_array_parameter() -> None:
    """A `$n::bigint[]` parameter brings the introspection back on every new connection: use id_array."""
    pattern = re.compile(r"\$\d+::bigint\[\]")
    found = [
        f"{path.relative_to(SN.parent)}:{number}: {line.strip()}"
        for path in SN.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
