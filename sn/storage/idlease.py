"""Lease a Snowflake generator id from Redis so no two live processes share one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from redis.asyncio import Redis

from sn.ids import MAX_GENERATOR

log = logging.getLogger("sn.ids")

_COUNTER = "sn:idgen:next"
_LEASE = "sn:idgen:lease:{}"
LEASE_TTL_SECONDS = 60


class GeneratorLease:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self.generator_id = -1

    async def acquire(self) -> int:
        for _ in range(MAX_GENERATOR + 1):
            candidate = int(await self._redis.incr(_COUNTER)) % (MAX_GENERATOR + 1)
            if await self._redis.set(_LEASE.format(candidate), self._owner, nx=True, ex=LEASE_TTL_SECONDS):
                self.generator_id = candidate
                self._task = asyncio.create_task(self._renew(), name="idgen-lease")
                return candidate
        raise RuntimeError("no free id generator slot (1024 live processes?)")

    async def _renew(self) -> None:
        key = _LEASE.format(self.generator_id)
        while True:
            await asyncio.sleep(LEASE_TTL_SECONDS / 3)
            try:
                await self._redis.set(key, self._owner, ex=LEASE_TTL_SECONDS)
            except Exception:  # Redis down: keep the id; the lease is renewed when it returns
                log.warning("could not renew id generator lease %d", self.generator_id)

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.generator_id >= 0:
            with contextlib.suppress(Exception):
                if await self._redis.get(_LEASE.format(self.generator_id)) == self._owner.encode():
                    await self._redis.delete(_LEASE.format(self.generator_id))
