"""Fixed-window rate limits counted in Redis, so every worker and pod shares one budget."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds until the window resets (meaningful when not allowed)


class RateLimiter:
    def __init__(self, redis: Redis, *, window_seconds: int) -> None:
        self._redis = redis
        self._window = window_seconds

    async def hit(self, bucket: str, subject: str, limit: int) -> Verdict:
        if limit <= 0:
            return Verdict(True, 0)
        now = time.time()
        window_index = int(now // self._window)
        key = f"sn:rl:{bucket}:{subject}:{window_index}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self._window + 1)
            count, _ = await pipe.execute()
        if int(count) <= limit:
            return Verdict(True, 0)
        retry_after = max(1, int((window_index + 1) * self._window - now) + 1)
        return Verdict(False, retry_after)
