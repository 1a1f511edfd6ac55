"""The outbox relay against real PostgreSQL and a real bus: nothing committed is lost while the bus
is unreachable, and it is published once the bus returns, without a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from sn.ids import IdGenerator
from sn.pipeline import events
from sn.pipeline.bus import BusUnavailable, Queue
from sn.pipeline.outbox import Outbox, OutboxRelay
from sn.pipeline.redis_bus import RedisStreamBus
from sn.storage.posts import PostRepository
from tests.proxy import TcpProxy


@pytest.fixture
async def pool(private_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # A database of its own: the session server's relays would otherwise publish these rows.
    pool = await asyncpg.create_pool(private_database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


async def _to_feed(event: events.PipelineEvent) -> Queue:
    return "feed"


async def test_posts_written_while_the_bus_is_down_are_published_when_it_returns(
    pool: asyncpg.Pool, redis_url: str
) -> None:
    parts = urlsplit(redis_url)
    prefix = f"test-outbox-{uuid.uuid4().hex[:8]}"
    ids = IdGenerator(1000)
    posts = PostRepository(pool, Outbox(ids.next_id))
    received: list[events.PipelineEvent] = []
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        redis = Redis.from_url(
            f"redis://127.0.0.1:{proxy.port}{parts.path}", socket_timeout=2, socket_connect_timeout=2
        )
        bus = RedisStreamBus(redis, node_id="test", consumer="c1", prefix=prefix)
        await bus.start()
        relay = OutboxRelay(pool, bus, _to_feed, sweep_interval=0.2)
        relay.start()

        async def collect(raw: bytes) -> None:
            received.append(events.decode(raw))

        consumer = asyncio.create_task(bus.consume("feed", collect))
        try:
            proxy.cut()
            author = ids.next_id()
            written = [await posts.create(ids.next_id(), author, f"during outage {i}") for i in range(3)]
            relay.nudge()
            await asyncio.sleep(1.0)
            assert await relay.pending() == 3  # kept, not dropped
            assert received == []
            proxy.restore()
            for _ in range(200):
                if len(received) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert [e.post_id for e in received if isinstance(e, events.PostEvent)] == [p.id for p in written]
            # Rows are deleted after the publish confirms; a confirm that timed out during the cut
            # is retried on the relay's next round, so poll rather than expect it at once.
            for _ in range(200):
                if await relay.pending() == 0:
                    break
                await asyncio.sleep(0.05)
            assert await relay.pending() == 0
        finally:
            consumer.cancel()
            await relay.stop()
            await bus.close()
            for key in [k async for k in redis.scan_iter(f"{prefix}*")]:
                await redis.delete(key)
            await redis.aclose()


async def test_outbox_row_is_written_in_the_same_transaction(pool: asyncpg.Pool) -> None:
    ids = IdGenerator(1001)
    posts = PostRepository(pool, Outbox(ids.next_id))
    author = ids.next_id()
    row = await posts.create(ids.next_id(), author, "x")
    await posts.update(author, row.id, "y")
    await posts.delete(author, row.id)
    payloads = await pool.fetch("SELECT payload FROM outbox WHERE owner_id = $1 ORDER BY id", author)
    kinds = [events.decode(bytes(p["payload"])) for p in payloads]
    assert [k.type for k in kinds if isinstance(k, events.PostEvent)] == [
        "post_created",
        "post_updated",
        "post_deleted",
    ]
    assert await posts.update(author, row.id, "gone") is None  # no row, no event
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE owner_id = $1", author) == 3


class _WatchedBus(RedisStreamBus):
    """The real Redis bus, counting publishes in flight and refusing one owner's (a broken route)."""

    def __init__(
        self, *args: Any, refuse_author: int | None = None, hold: asyncio.Event | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = self.most_in_flight = 0
        self._refuse_author = refuse_author
        self._hold = hold  # publishes wait for it: a relay caught in the middle of its drain

    async def publish(self, queue: Queue, body: bytes, *, message_id: str) -> None:
        event = events.decode(body)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self._hold is not None:
                await self._hold.wait()
            if isinstance(event, events.PostEvent) and event.author_id == self._refuse_author:
                raise BusUnavailable("refused for this test")
            await asyncio.sleep(0.01)  # a confirm's round trip, so concurrent publishes overlap
            await super().publish(queue, body, message_id=message_id)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def watched(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[_WatchedBus]]]:
    prefix = f"test-outbox-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_url)
    buses: list[_WatchedBus] = []

    async def make(**kwargs: Any) -> _WatchedBus:
        bus = _WatchedBus(redis, node_id="test", consumer="c1", prefix=prefix, **kwargs)
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()
    for key in [k async for k in redis.scan_iter(f"{prefix}*")]:
        await redis.delete(key)
    await redis.aclose()


async def _stream_events(bus: RedisStreamBus, redis_url: str) -> list[tuple[str, int, int]]:
    """(type, author, post) of every post event on the bus's feed stream, in stream order."""
    redis = Redis.from_url(redis_url)
    try:
        entries = await redis.xrange(bus.streams["feed"])
    finally:
        await redis.aclose()
    decoded = [events.decode(fields[b"body"]) for _, fields in entries]
    return [(e.type, e.author_id, e.post_id) for e in decoded if isinstance(e, events.PostEvent)]


async def _stream_post_ids(bus: RedisStreamBus, redis_url: str) -> list[tuple[int, int]]:
    return [(author, post) for _, author, post in await _stream_events(bus, redis_url)]


async def test_a_batch_is_published_concurrently_and_in_order_per_owner(
    pool: asyncpg.Pool, redis_url: str, watched: Callable[..., Awaitable[_WatchedBus]]
) -> None:
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1002)
    posts = PostRepository(pool, Outbox(ids.next_id))
    authors = [ids.next_id() for _ in range(4)]
    written = {
        author: [(await posts.create(ids.next_id(), author, f"p{i}")).id for i in range(5)] for author in authors
    }
    bus = await watched()
    relay = OutboxRelay(pool, bus, _to_feed)

    assert await relay.drain_once() == 20
    assert await relay.pending() == 0
    assert bus.most_in_flight == len(authors)  # one publish in flight per owner, all owners at once
    published = await _stream_post_ids(bus, redis_url)
    assert sorted(published) == sorted((a, p) for a, ps in written.items() for p in ps)
    for author, post_ids in written.items():
        assert [p for a, p in published if a == author] == post_ids  # each owner's events in order


async def test_a_failed_owner_keeps_its_rows_and_the_confirmed_ones_are_not_republished(
    pool: asyncpg.Pool, redis_url: str, watched: Callable[..., Awaitable[_WatchedBus]]
) -> None:
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1003)
    posts = PostRepository(pool, Outbox(ids.next_id))
    good, bad = ids.next_id(), ids.next_id()
    good_posts = [(await posts.create(ids.next_id(), good, f"g{i}")).id for i in range(3)]
    bad_posts = [(await posts.create(ids.next_id(), bad, f"b{i}")).id for i in range(3)]
    bus = await watched(refuse_author=bad)
    relay = OutboxRelay(pool, bus, _to_feed)

    with pytest.raises(BusUnavailable):
        await relay.drain_once()
    assert relay.published == 3
    kept = await pool.fetch("SELECT owner_id FROM outbox")
    assert [row["owner_id"] for row in kept] == [bad] * 3  # the confirmed rows are gone
    assert await _stream_post_ids(bus, redis_url) == [(good, p) for p in good_posts]

    # The bus takes the owner again: the next round publishes only what was kept, in order.
    bus_ok = await watched()
    relay_ok = OutboxRelay(pool, bus_ok, _to_feed)
    assert await relay_ok.drain_once() == 3
    assert await _stream_post_ids(bus_ok, redis_url) == [(good, p) for p in good_posts] + [(bad, p) for p in bad_posts]
    assert await relay_ok.pending() == 0


async def test_two_relays_never_publish_one_owners_rows_out_of_order(
    pool: asyncpg.Pool, redis_url: str, watched: Callable[..., Awaitable[_WatchedBus]]
) -> None:
    # Relay A has taken a post's `post_created` and is still publishing it when the post is deleted. Relay B's
    # SKIP LOCKED skips A's row and would take the `post_deleted` after it, and its publish could win: the delete
    # applied before the create, a deleted post back in the feeds. B must leave that owner alone until A is done,
    # and still publish everybody else's rows.
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1006)
    posts = PostRepository(pool, Outbox(ids.next_id))
    author, other = ids.next_id(), ids.next_id()
    created = await posts.create(ids.next_id(), author, "deleted soon")
    release = asyncio.Event()
    relay_a = OutboxRelay(pool, slow := await watched(hold=release), _to_feed)
    drain_a = asyncio.create_task(relay_a.drain_once())
    try:
        await _until(lambda: slow.in_flight == 1)  # A holds the create's row and is publishing it
        assert await posts.delete(author, created.id)
        elsewhere = await posts.create(ids.next_id(), other, "another owner")
        relay_b = OutboxRelay(pool, fast := await watched(), _to_feed)

        assert await relay_b.drain_once() == 1  # only the other owner's row
        assert relay_b.deferred == 1
        assert await _stream_events(fast, redis_url) == [("post_created", other, elsewhere.id)]
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE owner_id = $1", author) == 2

        release.set()
        assert await drain_a == 1
        assert await relay_b.drain_once() == 1  # the delete, now that the create is out
        assert await _stream_events(fast, redis_url) == [
            ("post_created", other, elsewhere.id),
            ("post_created", author, created.id),
            ("post_deleted", author, created.id),
        ]
        assert await relay_b.pending() == 0
    finally:
        release.set()
        await asyncio.gather(drain_a, return_exceptions=True)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the relay never got there")


async def test_a_row_another_drain_holds_in_the_middle_of_an_owners_rows_cuts_the_batch_there(
    pool: asyncpg.Pool, redis_url: str, watched: Callable[..., Awaitable[_WatchedBus]]
) -> None:
    # The gap need not come first. Drain A holds r1 and is publishing it; drain B takes r2, defers it behind r1 and
    # is still publishing another owner's row; r3 is written; A's publish fails, which releases r1. Drain C now
    # sees r1 and r3 (r2 is B's): nothing comes before r1, but r2 comes before r3, so C publishes r1 alone.
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1007)
    posts = PostRepository(pool, Outbox(ids.next_id))
    owner, other = ids.next_id(), ids.next_id()
    r1 = (await posts.create(ids.next_id(), owner, "r1")).id
    release_a, release_b = asyncio.Event(), asyncio.Event()
    bus_a = await watched(hold=release_a, refuse_author=owner)
    drain_a = asyncio.create_task(OutboxRelay(pool, bus_a, _to_feed).drain_once())
    drain_b: asyncio.Task[int] | None = None
    try:
        await _until(lambda: bus_a.in_flight == 1)
        r2 = (await posts.create(ids.next_id(), owner, "r2")).id
        elsewhere = (await posts.create(ids.next_id(), other, "another owner")).id
        relay_b = OutboxRelay(pool, bus_b := await watched(hold=release_b), _to_feed)
        drain_b = asyncio.create_task(relay_b.drain_once())
        await _until(lambda: bus_b.in_flight == 1)  # B publishes the other owner's row, r2 deferred and locked
        assert relay_b.deferred == 1
        r3 = (await posts.create(ids.next_id(), owner, "r3")).id
        release_a.set()
        with pytest.raises(BusUnavailable):
            await drain_a  # r1 kept, and free again
        relay_c = OutboxRelay(pool, fast := await watched(), _to_feed)
        assert await relay_c.drain_once() == 1
        assert relay_c.deferred == 1  # r3, behind B's r2
        assert await _stream_events(fast, redis_url) == [("post_created", owner, r1)]

        release_b.set()
        assert await drain_b == 1
        assert await relay_c.drain_once() == 2
        assert await _stream_events(fast, redis_url) == [
            ("post_created", owner, r1),
            ("post_created", other, elsewhere),
            ("post_created", owner, r2),
            ("post_created", owner, r3),
        ]
        assert await relay_c.pending() == 0
    finally:
        release_a.set()
        release_b.set()
        await asyncio.gather(drain_a, *([drain_b] if drain_b else []), return_exceptions=True)


async def test_a_running_relay_comes_back_for_deferred_rows_before_its_sweep(
    pool: asyncpg.Pool, redis_url: str, watched: Callable[..., Awaitable[_WatchedBus]]
) -> None:
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1008)
    posts = PostRepository(pool, Outbox(ids.next_id))
    owner = ids.next_id()
    created = await posts.create(ids.next_id(), owner, "deleted soon")
    release = asyncio.Event()
    slow = await watched(hold=release)
    drain_a = asyncio.create_task(OutboxRelay(pool, slow, _to_feed).drain_once())
    relay_b = OutboxRelay(pool, fast := await watched(), _to_feed, sweep_interval=60)
    try:
        await _until(lambda: slow.in_flight == 1)
        assert await posts.delete(owner, created.id)
        relay_b.start()
        relay_b.nudge()
        await _until(lambda: relay_b.deferred >= 1)
        release.set()
        assert await drain_a == 1
        # No nudge, and the sweep is a minute away: only the relay's own quick return publishes the delete.
        await _until(lambda: relay_b.published == 1)
        assert await _stream_events(fast, redis_url) == [
            ("post_created", owner, created.id),
            ("post_deleted", owner, created.id),
        ]
    finally:
        release.set()
        await asyncio.gather(drain_a, return_exceptions=True)
        await relay_b.stop()


async def test_a_drain_carrying_a_late_post_logs_where_its_time_went(
    pool: asyncpg.Pool, watched: Callable[..., Awaitable[_WatchedBus]], caplog: pytest.LogCaptureFixture
) -> None:
    await pool.execute("DELETE FROM outbox")
    ids = IdGenerator(1005)
    posts = PostRepository(pool, Outbox(ids.next_id))
    author = ids.next_id()
    late = (await posts.create(ids.next_id(), author, "late")).id
    await asyncio.sleep(0.06)  # the post is 60 ms old before its drain starts
    relay = OutboxRelay(pool, await watched(), _to_feed, slow_delivery_ms=50)
    relay.nudge()

    with caplog.at_level("INFO", logger="sn.delivery.slow"):
        assert await relay.drain_once() == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sn.delivery.slow"]
    assert line.startswith(f"slow delivery: post {late} ")
    for phase in ("waited=", "acquire=", "select=", "order=", "route=", "publish=", "delete=", "commit="):
        assert phase in line
    assert line.endswith("; 1 rows")

    # A post younger than the threshold logs nothing.
    await posts.create(ids.next_id(), author, "on time")
    caplog.clear()
    quiet = OutboxRelay(pool, await watched(), _to_feed, slow_delivery_ms=5_000)
    with caplog.at_level("INFO", logger="sn.delivery.slow"):
        assert await quiet.drain_once() == 1
    assert [r for r in caplog.records if r.name == "sn.delivery.slow"] == []
