"""Celebrity settings every worker applies, changeable at run time through /celebrity-settings.

The values live in one Redis hash; each worker re-reads it every second, so a change reaches
all workers and pods within a second without a restart or a broadcast channel to keep alive.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from redis.asyncio import Redis

log = logging.getLogger("sn.fanout.live_settings")

KEY = "sn:celebrity:settings"


class CelebritySettings(msgspec.Struct, frozen=True):
    celebrity_threshold: int
    batch_size: int
    batch_delay: float


class LiveSettings:
    def __init__(self, redis: Redis, defaults: CelebritySettings) -> None:
        self._redis = redis
        self.defaults = defaults
        self.current = defaults

    async def refresh(self) -> CelebritySettings:
        raw: dict[bytes, bytes] = await self._redis.hgetall(KEY)  # type: ignore[assignment]
        if raw:
            values = {k.decode(): v.decode() for k, v in raw.items()}
            self.current = CelebritySettings(
                celebrity_threshold=int(values.get("celebrity_threshold", self.defaults.celebrity_threshold)),
                batch_size=int(values.get("batch_size", self.defaults.batch_size)),
                batch_delay=float(values.get("batch_delay", self.defaults.batch_delay)),
            )
        else:
            self.current = self.defaults
        return self.current

    async def store(self, settings: CelebritySettings) -> None:
        await self._redis.hset(KEY, mapping={k: str(v) for k, v in msgspec.structs.asdict(settings).items()})
        self.current = settings

    async def poll(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # keep the last known values while Redis is away
                log.debug("celebrity settings refresh failed: %s", exc)
            await asyncio.sleep(interval)
