"""Celebrities: the decision, the throttle and its bookkeeping, in one place.

- The decision (``QueueRouter``, asked by the outbox relay for every post): an author with at
  least the live threshold of followers is a celebrity, and their posts travel on the bus queue
  `celebrity` instead of `feed`. The queue is separate and consumed one message at a time, so a
  celebrity backlog never delays normal posts.
- The throttle (``CelebrityActor``): the post is not copied into follower feeds (readers pull it,
  see FeedService); online followers are notified in batches of `batch_size` with `batch_delay`
  between batches (live settings, ``sn.fanout.live_settings``), and the pauses yield the event loop
  to everything else.
- Its keys: progress of running fan-outs, counters and the recent ones, read back by
  ``celebrity_report`` for /celebrity-stats.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from sn.fanout.live_settings import LiveSettings
from sn.fanout.normal import once_key as _once_key
from sn.fanout.normal import realtime_body
from sn.feed import FeedService
from sn.pipeline import events
from sn.pipeline.bus import Queue
from sn.realtime.eventlog import EventLog, celebrity_batch
from sn.realtime.presence import Presence
from sn.storage.social_cache import SocialCache
from sn.tasks import cancel_and_wait

__all__ = ["CELEB_RECENT", "CELEB_RUNNING", "CELEB_STATS", "CelebrityActor", "QueueRouter", "celebrity_report"]

log = logging.getLogger("sn.fanout.celebrity")

CELEB_STATS = "sn:celeb:stats"
CELEB_RUNNING = "sn:celeb:running"
CELEB_RECENT = "sn:celeb:recent"
CELEB_PLAN_PREFIX = "sn:celeb:plan:"  # + an event's once key: its fan-out's batch count (see CelebrityActor.handle)
RECENT_KEPT = 20


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
        body = realtime_body(event)
        job = f"{event.type}:{event.post_id}"
        once = _once_key(event, body)
        # A fan-out of this event that ran before (its worker was killed and the bus redelivered
        # the message, or the message came twice): this run resumes it with the first run's batch
        # count, kept a day, so each user falls in the batch they were in, and a batch already
        # routed is not routed again (its once key). Re-run whole, it sent the post a second time
        # to every follower the first run had reached: 11,700 copies in one topology run.
        resumed = await self._planned_batches(once)
        if resumed is None:
            # Logged before the online followers are read: one who comes online after that read
            # (and so is in no batch) replays it from the log. One who is in both gets it once (the
            # socket drops a replayed post arriving again live, the replay gives each post once).
            # (A resumed fan-out's entry was logged by its first run.)
            await self._eventlog.route(body, event.author_id, {})
        online = await self._online_followers(event.author_id)
        # Worker by worker in turn, so every batch spreads its deliveries over the workers. Each
        # user once: a user on two workers (two tabs, or a dead worker's online set that has not
        # expired yet) is found on both by the batch's own presence check below.
        users = list(
            dict.fromkeys(user for row in itertools.zip_longest(*online.values()) for user in row if user is not None)
        )
        # A user's batch is a function of their id (celebrity_batch): a replay reads from the
        # batch's tag in the log whether the client has already seen the user's batch.
        count = resumed or await self._plan(once, max(1, math.ceil(len(users) / settings.batch_size)))
        progress = {
            "author_id": str(event.author_id),
            "post_id": str(event.post_id),
            "type": event.type,
            # The cached count (None until known): counting 100k rows here competed with the
            # requests of the moment; a cold list's background load caches it.
            "followers": await self._social.cached_follower_count(event.author_id),
            "online": len(users),
            "sent": 0,
            "started_at": started,
            "planned_batches": count,
            "resumed": resumed is not None,
        }
        await self._redis.hset(CELEB_RUNNING, job, msgspec.json.encode(progress))
        batches = skipped = 0
        try:
            planned: list[list[int]] = [[] for _ in range(count)]
            for user in users:
                planned[celebrity_batch(user, count)].append(user)
            sent = 0
            for number, batch in enumerate(planned):
                # Where each user is now, looked up in the batch's own atomic log-and-route, not
                # where the snapshot above found them: a follower whose socket moved to another
                # worker since (a rebalancing round, a node restart) gets it there, and one
                # between two sockets finds this entry in the log when they reconnect.
                event_id, _ = await self._eventlog.route_to_followers(
                    body, event.author_id, batch, once_key=f"{once}:{count}:{number}", batch=(number, count)
                )
                sent += len(batch)
                progress["sent"] = sent
                if event_id == 0:  # routed by the run this one resumes: no pause for it
                    skipped += 1
                    continue
                batches += 1
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hincrby(CELEB_STATS, "batches_sent", 1)
                    pipe.hset(CELEB_RUNNING, job, msgspec.json.encode(progress))
                    await pipe.execute()
                if number + 1 < count:
                    await asyncio.sleep(settings.batch_delay)
        finally:
            await self._redis.hdel(CELEB_RUNNING, job)
        duration = time.time() - started
        summary = {
            **progress,
            "batches": batches,
            "batches_routed_before": skipped,
            "duration_seconds": round(duration, 3),
            "finished_at": time.time(),
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(CELEB_STATS, "fanouts_completed", 1)
            pipe.lpush(CELEB_RECENT, msgspec.json.encode(summary))
            pipe.ltrim(CELEB_RECENT, 0, RECENT_KEPT - 1)
            await pipe.execute()
        self.fanouts += 1
        self.batches += batches
        followers = progress["followers"]
        if followers is None:  # the background load may have counted them meanwhile
            followers = await self._social.cached_follower_count(event.author_id)
        audience = f"of {followers} followers" if followers is not None else "followers (total not counted yet)"
        resumed_note = f" (resumed: {skipped} of {count} batches were routed before)" if resumed is not None else ""
        log.info(
            "celebrity fan-out %s: %d online %s, %d batches, %.2fs%s",
            job,
            len(users),
            audience,
            batches,
            duration,
            resumed_note,
        )

    async def _planned_batches(self, once: str) -> int | None:
        """The batch count of a fan-out of this event that started before (None: none did)."""
        raw = await self._redis.get(CELEB_PLAN_PREFIX + once)
        return int(raw) if raw is not None else None

    async def _plan(self, once: str, count: int) -> int:
        """Record this fan-out's batch count, kept a day as the once keys are; a run that recorded
        one first (the same message twice at once) wins, and this run follows its plan."""
        earlier = await self._redis.set(CELEB_PLAN_PREFIX + once, count, nx=True, ex=86400, get=True)
        return int(earlier) if earlier is not None else count

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


async def celebrity_report(redis: Redis) -> dict[str, Any]:
    """The fan-outs in progress, the counters and the recent fan-outs (newest first)."""
    raw_counters: dict[bytes, bytes] = await redis.hgetall(CELEB_STATS)  # type: ignore[assignment]
    counters = {key.decode(): int(value) for key, value in raw_counters.items()}
    return {
        "fanouts_in_progress": [msgspec.json.decode(v) for v in (await redis.hgetall(CELEB_RUNNING)).values()],
        "batches_sent": counters.get("batches_sent", 0),
        "fanouts_completed": counters.get("fanouts_completed", 0),
        "recent_fanouts": [msgspec.json.decode(v) for v in await redis.lrange(CELEB_RECENT, 0, -1)],
    }
