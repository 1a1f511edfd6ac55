"""The fan-out consumer (bus queue `feed`): a normal author's post reaches followers' feeds and sockets.

The post id goes into each follower's cached feed (one Lua call per 500 followers, only feeds that
exist), then one routing script call (``sn.realtime.eventlog``) delivers to every worker stream
holding an online follower. The event body is encoded once for all recipients.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from typing import Any

from sn.fanout.warmer import FeedWarmer
from sn.feed import FeedService
from sn.ids import timestamp_ms
from sn.metrics import metrics, observe_post_stage
from sn.pipeline import events
from sn.pipeline.slow_log import PhaseClock, report
from sn.protocol.messages import Event, event_to_json
from sn.realtime.eventlog import EventLog
from sn.realtime.presence import Presence
from sn.storage.social_cache import SocialCache

__all__ = ["FanoutConsumer", "realtime_body"]


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


def once_key(event: events.PostEvent, body: bytes) -> str:
    """Names one event: a post is created and deleted once; its updates differ by their body."""
    if event.type == "post_updated":
        return f"{event.type}:{event.post_id}:{hashlib.blake2b(body, digest_size=8).hexdigest()}"
    return f"{event.type}:{event.post_id}"


class FanoutConsumer:
    def __init__(
        self,
        *,
        feed: FeedService,
        social: SocialCache,
        presence: Presence,
        eventlog: EventLog,
        warmer: FeedWarmer,
        slow_delivery_ms: float = 0.0,
    ) -> None:
        self._slow_delivery_ms = slow_delivery_ms
        self._feed = feed
        self._warmer = warmer
        self._social = social
        self._presence = presence
        self._eventlog = eventlog
        self.handled = 0
        self.latencies: deque[float] = deque(maxlen=1000)

    async def handle(self, raw: bytes) -> None:
        event = events.decode(raw)
        if isinstance(event, events.FollowEvent):
            await self._feed.apply_follow(event.user_id, event.friend_id)
            # Their next read a cache hit: rebuilt in the background, paced (see FeedWarmer).
            self._warmer.schedule(event.user_id)
        else:
            clock, consumed_age = PhaseClock(), 0.0
            if event.type == "post_created":
                consumed_age = observe_post_stage("consumed", event.post_id)
            followers = await self._social.followers(event.author_id)
            clock.mark("followers")
            await self._feed.apply(event, followers)
            clock.mark("feeds")
            body = realtime_body(event)
            await self._eventlog.route_to_followers(body, event.author_id, followers, once_key=once_key(event, body))
            clock.mark("route")
            if event.type == "post_created":  # the id's timestamp is the post's creation time
                detail = f"; consumed at {consumed_age * 1000:.0f} ms, {len(followers)} followers"
                report("its fan-out", [event.post_id], self._slow_delivery_ms, clock, detail)
                lag = time.time() - timestamp_ms(event.post_id) / 1000
                metrics().fanout_latency.observe(lag)
                metrics().delivery_stage.labels("routed").observe(lag)
                metrics().queue_lag.set(lag)
        self.handled += 1

    def stats(self) -> dict[str, Any]:
        return {"handled": self.handled, "feed_warmups": self._warmer.stats()}
