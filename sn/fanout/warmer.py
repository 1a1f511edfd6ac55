"""Feed warm-ups after a follow change, in the background and paced.

A follow drops the follower's cached feed (the request does it at once, so their next read is
right); rebuilding it ahead of that read is an optimisation. The rebuild reads the newest posts
of everyone the user follows: on Citus a multi-shard query. Done inline by the fan-out consumer,
a burst of follows ran one per follow at once on every worker, and normal posts in flight (same
queue, same loop, same database) waited behind them. Here a worker rebuilds one feed at a time,
at most `rate` a second; a user waiting twice is rebuilt once, and not at all when a read rebuilt
the feed meanwhile; past `capacity` waiting users, new ones are skipped: their next read rebuilds
the feed, as it would have without a warm-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("sn.fanout.warmer")

# Rebuilds one user's feed; False when there was nothing to do (the feed is cached already).
Rebuild = Callable[[int], Awaitable[bool]]


class FeedWarmer:
    def __init__(self, rebuild: Rebuild, *, rate: float, capacity: int = 10_000) -> None:
        self._rebuild = rebuild
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._enabled = rate > 0
        self._capacity = capacity
        self._waiting: dict[int, None] = {}  # insertion-ordered set: first scheduled, first warmed
        self._wake = asyncio.Event()
        self.warmed = 0
        self.cached = 0
        self.skipped = 0
        self.failed = 0

    def schedule(self, user_id: int) -> bool:
        """Queue a warm-up; False when it was not queued (warm-ups off, or too many waiting)."""
        if not self._enabled:
            return False
        if user_id in self._waiting:
            return True
        if len(self._waiting) >= self._capacity:
            self.skipped += 1
            return False
        self._waiting[user_id] = None
        self._wake.set()
        return True

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self) -> None:
        while True:
            while not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            user_id = next(iter(self._waiting))
            del self._waiting[user_id]
            started = time.monotonic()
            try:
                if not await self._rebuild(user_id):
                    self.cached += 1  # a read since the follow change rebuilt it: no query, no pause
                    continue
                self.warmed += 1
            except Exception as exc:  # a warm-up is optional: the next read rebuilds the feed
                self.failed += 1
                log.warning("feed warm-up of user %d failed: %r", user_id, exc)
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    def stats(self) -> dict[str, int]:
        return {
            "waiting": self.waiting,
            "warmed": self.warmed,
            "cached": self.cached,
            "skipped": self.skipped,
            "failed": self.failed,
        }
