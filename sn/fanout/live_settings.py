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


def _field(values: dict[str, str], name: str, default: float, *, kind: type[int | float], minimum: float) -> float:
    """One stored value, or the default when it is missing or unusable. /celebrity-settings only
    stores valid values, but the hash is plain Redis: a value written by hand must not raise here,
    where the celebrity consumer would fail every post on every worker."""
    raw = values.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    # (NaN and infinities are not usable either: no comparison admits them)
    if value is None or not minimum <= value < float("inf"):
        log.warning("celebrity setting %s=%r in %s is not usable; using %s", name, raw, KEY, default)
        return default
    return value


class LiveSettings:
    def __init__(self, redis: Redis, defaults: CelebritySettings) -> None:
        self._redis = redis
        self.defaults = defaults
        self.current = defaults

    async def refresh(self) -> CelebritySettings:
        raw: dict[bytes, bytes] = await self._redis.hgetall(KEY)  # type: ignore[assignment]
        values = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        defaults = self.defaults
        self.current = CelebritySettings(
            celebrity_threshold=int(
                _field(values, "celebrity_threshold", defaults.celebrity_threshold, kind=int, minimum=1)
            ),
            batch_size=int(_field(values, "batch_size", defaults.batch_size, kind=int, minimum=1)),
            batch_delay=_field(values, "batch_delay", defaults.batch_delay, kind=float, minimum=0),
        )
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
