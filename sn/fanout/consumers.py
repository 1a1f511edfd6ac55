"""The fan-out consumer (bus queue `feed`) and the celebrity actor (bus queue `celebrity`).

Normal authors: the post id goes into each follower's cached feed (one Lua call per 500
followers, only feeds that exist), then one routing script call delivers to every worker stream
holding an online follower. The event body is encoded once for all recipients.

Celebrities (follower count >= the live threshold): the post is not copied into follower feeds
(readers pull it, see FeedService); online followers are notified in batches of `batch_size`
with `batch_delay` between batches. The celebrity queue is separate and consumed one message at
a time, so a celebrity backlog never delays normal posts, and the pauses between batches yield
the event loop to everything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import deque
from typing import Any

import msgspec
from redis.asyncio import Redis

from sn.fanout.live_settings import LiveSettings
from sn.feed import FeedService
from sn.ids import timestamp_ms
from sn.metrics import metrics
from sn.pipeline import events
from sn.pipeline.bus import Queue
from sn.protocol.messages import Event, event_to_json
from sn.realtime.eventlog import EventLog
from sn.realtime.presence import Presence
from sn.storage.social_cache import SocialCache
from sn.tasks import cancel_and_wait

log = logging.getLogger("sn.fanout.consumers")

CELEB_STATS = "sn:celeb:stats"
CELEB_RUNNING = "sn:celeb:running"
CELEB_RECENT = "sn:celeb:recent"


def realtime_body(event: events.PostEvent) -> bytes:
    """The event as the routers decode it; event_id is filled in per routing call."""
    return event_to_json(
        Event(
            event_id=0,
            type=event.type,
            post_id=str(event.post_id),
            author_user_id=str(event.author_id),
            post_text=event.text,
            created_at=event.created_at,
        )
    )


def _once_key(event: events.PostEvent, body: bytes) -> str:
    """Names one event: a post is created and deleted once; its updates differ by their body."""
    if event.type == "post_updated":
        return f"{event.type}:{event.post_id}:{hashlib.blake2b(body, digest_size=8).hexdigest()}"
    return f"{event.type}:{event.post_id}"


class QueueRouter:
    """Decides which bus queue an event travels on (used by the outbox relay)."""

    def __init__(self, social: SocialCache, live: LiveSettings) -> None:
        self._social = social
        self._live = live

    async def __call__(self, event: events.PipelineEvent) -> Queue:
        threshold = self._live.current.celebrity_threshold
        if isinstance(event, events.PostEvent) and await self._social.has_at_least_followers(
            event.author_id, threshold
        ):
            return "celebrity"
        return "feed"


class FanoutConsumer:
    def __init__(self, *, feed: FeedService, social: SocialCache, presence: Presence, eventlog: EventLog) -> None:
        self._feed = feed
        self._social = social
        self._presence = presence
        self._eventlog = eventlog
        self.handled = 0
        self.latencies: deque[float] = deque(maxlen=1000)

    async def handle(self, raw: bytes) -> None:
        event = events.decode(raw)
        if isinstance(event, events.FollowEvent):
            await self._feed.apply_follow(event.user_id, event.friend_id)
            # Warm the follower's feed so their next read is a cache hit.
            await self._feed.rebuild(event.user_id)
        else:
            followers = await self._social.followers(event.author_id)
            await self._feed.apply(event, followers)
            body = realtime_body(event)
            await self._eventlog.route_to_followers(body, event.author_id, followers, once_key=_once_key(event, body))
            if event.type == "post_created":  # the id's timestamp is the post's creation time
                lag = time.time() - timestamp_ms(event.post_id) / 1000
                metrics().fanout_latency.observe(lag)
                metrics().queue_lag.set(lag)
        self.handled += 1

    def stats(self) -> dict[str, Any]:
        return {"handled": self.handled}


class CelebrityActor:
    def __init__(
        self,
        *,
        redis: Redis,
        feed: FeedService,
        social: SocialCache,
        presence: Presence,
        eventlog: EventLog,
        live: LiveSettings,
    ) -> None:
        self._redis = redis
        self._feed = feed
        self._social = social
        self._presence = presence
        self._eventlog = eventlog
        self._live = live
        self.fanouts = 0
        self.batches = 0
        self._warming: dict[int, asyncio.Task[None]] = {}  # follower lists being cached, by author

    async def handle(self, raw: bytes) -> None:
        event = events.decode(raw)
        if not isinstance(event, events.PostEvent):
            return
        settings = await self._live.refresh()
        started = time.time()
        await self._feed.apply(event, followers=None)  # pull on read: only the author's own list
        online = await self._online_followers(event.author_id)
        # Worker by worker in turn, so every batch spreads its deliveries over the workers.
        pairs = [
            pair
            for row in itertools.zip_longest(*([(stream, user) for user in users] for stream, users in online.items()))
            for pair in row
            if pair is not None
        ]
        job = f"{event.type}:{event.post_id}"
        body = realtime_body(event)
        progress = {
            "author_id": str(event.author_id),
            "post_id": str(event.post_id),
            "type": event.type,
            # The cached count (None until known): counting 100k rows here competed with the
            # requests of the moment; a cold list's background load caches it.
            "followers": await self._social.cached_follower_count(event.author_id),
            "online": len(pairs),
            "sent": 0,
            "started_at": started,
        }
        await self._redis.hset(CELEB_RUNNING, job, msgspec.json.encode(progress))
        batches = 0
        try:
            for start in range(0, max(len(pairs), 1), settings.batch_size):
                batch: dict[str, list[int]] = {}
                for stream, user in pairs[start : start + settings.batch_size]:
                    batch.setdefault(stream, []).append(user)
                await self._eventlog.route(body, event.author_id, batch)
                batches += 1
                progress["sent"] = min(start + settings.batch_size, len(pairs))
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hincrby(CELEB_STATS, "batches_sent", 1)
                    pipe.hset(CELEB_RUNNING, job, msgspec.json.encode(progress))
                    await pipe.execute()
                if start + settings.batch_size < len(pairs):
                    await asyncio.sleep(settings.batch_delay)
        finally:
            await self._redis.hdel(CELEB_RUNNING, job)
        duration = time.time() - started
        summary = {**progress, "batches": batches, "duration_seconds": round(duration, 3), "finished_at": time.time()}
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(CELEB_STATS, "fanouts_completed", 1)
            pipe.lpush(CELEB_RECENT, msgspec.json.encode(summary))
            pipe.ltrim(CELEB_RECENT, 0, 19)
            await pipe.execute()
        self.fanouts += 1
        self.batches += batches
        followers = progress["followers"]
        if followers is None:  # the background load may have counted them meanwhile
            followers = await self._social.cached_follower_count(event.author_id)
        audience = f"of {followers} followers" if followers is not None else "followers (total not counted yet)"
        log.info("celebrity fan-out %s: %d online %s, %d batches, %.2fs", job, len(pairs), audience, batches, duration)

    async def _online_followers(self, author_id: int) -> dict[str, list[int]]:
        """The author's online followers by worker stream, found from the online side: each
        worker's online users checked against the cached follower set inside Redis, so 100k
        followers are never read into Python nor looked up one by one.

        When the follower set is not cached, the online users are checked against the database
        a page at a time (index lookups), and the list is cached in the background, spread out:
        loading 100k rows and caching them before the first notification took ~300 ms of both
        cores at once, and normal posts in flight waited for it.
        """
        streams = await self._presence.streams()
        online = await self._presence.online_members(self._social.followers_key(author_id), streams)
        if online is not None:
            return online
        online = {}
        for stream in streams:
            found: list[int] = []
            async for users in self._presence.online_users(stream):
                found += await self._social.followers_among_uncached(author_id, users)
            if found:
                online[stream] = sorted(found)
        self._warm_followers(author_id)  # (after: not at the same moment as the lookups above)
        return online

    def _warm_followers(self, author_id: int) -> None:
        if author_id in self._warming:
            return
        task = asyncio.create_task(self._social.warm_followers(author_id), name=f"warm-followers-{author_id}")
        self._warming[author_id] = task
        task.add_done_callback(lambda done: self._warmed(author_id, done))

    def _warmed(self, author_id: int, task: asyncio.Task[None]) -> None:
        self._warming.pop(author_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("caching the followers of %d failed: %r", author_id, task.exception())

    async def stop(self) -> None:
        """Cancel background cache loads (the worker is stopping)."""
        for task in list(self._warming.values()):
            await cancel_and_wait(task)
