"""A celebrity post is in the event log before its online followers are read: a follower who comes
online between that read and the first batch replays it (else they would get it neither live nor
on replay). Real Redis (a database of its own) and PostgreSQL; the actor is the server's."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from sn.fanout.celebrity import CELEB_RUNNING, CelebrityActor
from sn.fanout.live_settings import CelebritySettings, LiveSettings
from sn.feed import FeedService
from sn.pipeline import events
from sn.pipeline.outbox import Outbox
from sn.protocol.messages import event_from_json
from sn.realtime import eventlog as eventlog_module
from sn.realtime.eventlog import EventLog
from sn.realtime.presence import Presence
from sn.storage.cache import PostCache
from sn.storage.feed_cache import FeedCache
from sn.storage.friends import FriendRepository
from sn.storage.posts import PostRepository
from sn.storage.redis_mux import MuxRedis
from sn.storage.social_cache import SocialCache
from tests.support import forget_test_streams

# Fresh ids on each run: presence and follower keys of a run a moment ago are still in Redis.
_ids = itertools.count(random.randrange(10**12, 10**13, 10**6))


class Components:
    def __init__(self, redis: Redis, mux: MuxRedis, pool: asyncpg.Pool) -> None:
        ids = itertools.count(80_000_000)
        friends = FriendRepository(pool)
        self.social = SocialCache(redis, friends, reads=mux)
        self.presence = Presence(mux, ttl_seconds=30)
        self.eventlog = EventLog(mux)
        live = LiveSettings(redis, CelebritySettings(celebrity_threshold=2, batch_size=100, batch_delay=0.0))
        feed = FeedService(
            feeds=FeedCache(redis, size=100, ttl_seconds=60, mux=mux),
            author_posts=FeedCache(redis, size=100, ttl_seconds=60, mux=mux, prefix="sn:authorposts:"),
            posts=PostRepository(pool, Outbox(lambda: next(ids))),
            post_cache=PostCache(redis, ttl_seconds=60, reads=mux),
            social=self.social,
            celebrity_threshold=lambda: live.current.celebrity_threshold,
        )
        self.redis = redis
        self.live = live
        self.feed = feed


@pytest.fixture
async def components(redis_url: str, database_url: str) -> AsyncIterator[Components]:
    url = redis_url.rsplit("/", 1)[0] + "/5"
    redis, mux = Redis.from_url(url), MuxRedis(url, timeout=5, connect_timeout=5)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield Components(redis, mux, pool)
    finally:
        await forget_test_streams(mux)
        await pool.close()
        await mux.aclose()
        await redis.aclose()


async def test_a_follower_coming_online_during_the_fanout_finds_the_post_in_the_log(
    components: Components,
) -> None:
    author, online_follower, latecomer = next(_ids), next(_ids), next(_ids)
    stream = f"test:stream:{next(_ids)}"
    c = components
    # The follower set cached as the server caches it (a "0" marker with the ids).
    await c.redis.sadd(c.social.followers_key(author), "0", online_follower, latecomer)
    await c.presence.refresh([online_follower], stream)
    cursor = int(await c.redis.get(eventlog_module.COUNTER_KEY) or 0)
    replayed: list[str] = []

    class Observed(CelebrityActor):
        async def _online_followers(self, author_id: int) -> dict[str, list[int]]:
            online = await super()._online_followers(author_id)
            assert online == {stream: [online_follower]}  # the latecomer is not online yet...
            # ...and connects now, with the cursor it had: its replay must hold the post.
            replay = await c.eventlog.replay(cursor, {author}, limit=10)
            replayed.extend(event_from_json(body).post_id for _, body in replay.events)
            return online

    actor = Observed(redis=c.redis, feed=c.feed, social=c.social, presence=c.presence, eventlog=c.eventlog, live=c.live)
    post_id = next(_ids)
    await actor.handle(
        events.encode(events.PostEvent(type="post_created", post_id=post_id, author_id=author, text="hi"))
    )
    assert replayed == [str(post_id)]
    assert actor.fanouts == 1
    # Logged at the start and with its one batch: a replay after all of it still gives it once.
    assert [
        event_from_json(body).post_id for _, body in (await c.eventlog.replay(cursor, {author}, limit=10)).events
    ] == [str(post_id)]


async def _stream_recipients(redis: Redis, stream: str) -> list[int]:
    entries = await redis.xrange(stream)
    return [int(user) for _, fields in entries for user in fields[b"r"].split(b",") if user]


async def test_a_follower_who_moved_to_another_worker_gets_the_batch_where_they_are_now(
    components: Components,
) -> None:
    """The online followers are read once, at the start; a batch goes out seconds later. A follower
    whose socket moved meanwhile (handed back by a rebalancing round, or their node restarted) is
    reached on the worker they are on when their batch goes, not on the one the snapshot named."""
    author, mover, stayer = next(_ids), next(_ids), next(_ids)
    old_stream, new_stream = f"test:stream:{next(_ids)}", f"test:stream:{next(_ids)}"
    c = components
    await c.redis.sadd(c.social.followers_key(author), "0", mover, stayer)
    await c.presence.refresh([mover, stayer], old_stream)

    class Moving(CelebrityActor):
        async def _online_followers(self, author_id: int) -> dict[str, list[int]]:
            online = await super()._online_followers(author_id)
            assert online == {old_stream: sorted([mover, stayer])}
            # The mover's socket closes on the old worker and opens on the new one before the batch.
            await c.presence.leave([mover], old_stream)
            await c.presence.refresh([mover], new_stream)
            return online

    actor = Moving(redis=c.redis, feed=c.feed, social=c.social, presence=c.presence, eventlog=c.eventlog, live=c.live)
    await actor.handle(
        events.encode(events.PostEvent(type="post_created", post_id=next(_ids), author_id=author, text="moved"))
    )
    assert await _stream_recipients(c.redis, new_stream) == [mover]
    assert await _stream_recipients(c.redis, old_stream) == [stayer]
    # The batches' entries are paced: the delivery metric leaves a celebrity's batches out.
    assert all(b"p" in fields for _, fields in await c.redis.xrange(new_stream))


async def test_a_follower_listed_on_two_workers_is_one_place_in_the_batches(components: Components) -> None:
    """A dead worker's online set lives until it expires: its users, already reconnected elsewhere,
    are listed twice. They take one place in the batches (not two: a node loss made every celebrity
    fan-out half as long again), and each worker holding them is still reached."""
    author = next(_ids)
    followers = [next(_ids) for _ in range(3)]
    dead, live = f"test:stream:{next(_ids)}", f"test:stream:{next(_ids)}"
    c = components
    await c.redis.sadd(c.social.followers_key(author), "0", *followers)
    await c.presence.refresh(followers, dead)
    await c.presence.refresh(followers, live)
    one_per_batch = LiveSettings(c.redis, CelebritySettings(celebrity_threshold=2, batch_size=1, batch_delay=0.0))
    actor = CelebrityActor(
        redis=c.redis, feed=c.feed, social=c.social, presence=c.presence, eventlog=c.eventlog, live=one_per_batch
    )
    await actor.handle(
        events.encode(events.PostEvent(type="post_created", post_id=next(_ids), author_id=author, text="twice"))
    )
    assert actor.batches == 3
    assert sorted(await _stream_recipients(c.redis, live)) == sorted(followers)
    assert sorted(await _stream_recipients(c.redis, dead)) == sorted(followers)


async def _log_entries_of(redis: Redis, body_marker: bytes, after: int) -> list[dict[bytes, bytes]]:
    entries = await redis.xrange(eventlog_module.LOG_KEY, f"{after + 1}-0", "+")
    return [fields for _, fields in entries if body_marker in fields[b"b"]]


async def test_a_fanout_cut_short_and_redelivered_resumes_and_sends_nobody_the_post_twice(
    components: Components,
) -> None:
    """The worker running a celebrity fan-out dies (SIGKILL on its node) after a few batches; the
    bus redelivers the message to another worker. That run takes the first run's batch count and
    routes only the batches not routed yet: every online follower gets the post once, and the log
    holds one start entry and each batch once."""
    author = next(_ids)
    followers = [next(_ids) for _ in range(40)]
    stream = f"test:stream:{next(_ids)}"
    c = components
    await c.redis.sadd(c.social.followers_key(author), "0", *followers)
    await c.presence.refresh(followers, stream)
    cursor = int(await c.redis.get(eventlog_module.COUNTER_KEY) or 0)
    paced = LiveSettings(c.redis, CelebritySettings(celebrity_threshold=2, batch_size=5, batch_delay=0.1))
    text = f"resumed {next(_ids)}"
    message = events.encode(events.PostEvent(type="post_created", post_id=next(_ids), author_id=author, text=text))

    def actor() -> CelebrityActor:
        return CelebrityActor(
            redis=c.redis, feed=c.feed, social=c.social, presence=c.presence, eventlog=c.eventlog, live=paced
        )

    first = asyncio.create_task(actor().handle(message))
    async with asyncio.timeout(10):
        while len(await _stream_recipients(c.redis, stream)) < 15:  # three of its eight batches
            await asyncio.sleep(0.01)
    first.cancel()  # the worker dies mid fan-out
    with contextlib.suppress(asyncio.CancelledError):
        await first
    reached_first = await _stream_recipients(c.redis, stream)
    assert 15 <= len(reached_first) < len(followers)

    second = actor()
    await second.handle(message)  # the redelivery
    recipients = await _stream_recipients(c.redis, stream)
    assert sorted(recipients) == sorted(followers)  # each once
    assert second.batches == 8 - len(reached_first) // 5
    logged = await _log_entries_of(c.redis, text.encode(), cursor)
    assert [fields.get(b"c") for fields in logged] == [None] + [f"{k}/8".encode() for k in range(8)]

    # A third delivery of the same message, after the fan-out finished: nothing routed, nothing logged.
    third = actor()
    await third.handle(message)
    assert third.batches == 0
    assert sorted(await _stream_recipients(c.redis, stream)) == sorted(followers)
    assert len(await _log_entries_of(c.redis, text.encode(), cursor)) == 9
    # The fan-out is not left "in progress" for the operators.
    running = await c.redis.hgetall(CELEB_RUNNING)
    assert not any(str(author).encode() in value for value in running.values())
