"""Lease a Snowflake generator id from Redis so no two live processes share one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

from redis.asyncio import Redis

from sn.ids import MAX_GENERATOR

log = logging.getLogger("sn.ids")

_COUNTER = "sn:idgen:next"
_LEASE = "sn:idgen:lease:{}"
LEASE_TTL_SECONDS = 60


# Renew only a lease we still hold: after a long Redis outage the lease may have expired and been
# taken by another process, and blindly re-setting it would make two processes share an id. One
# that nobody holds (expired, or Redis lost its data) is taken back: switching ids is what opens a
# window for two processes to use one.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


class GeneratorLease:
    def __init__(self, redis: Redis, on_change: Callable[[int], None] | None = None) -> None:
        self._redis = redis
        self._renew_script = redis.register_script(_RENEW)
        self.on_change = on_change
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self.generator_id = -1

    async def _claim(self) -> int:
        for _ in range(MAX_GENERATOR + 1):
            candidate = int(await self._redis.incr(_COUNTER)) % (MAX_GENERATOR + 1)
            if await self._redis.set(_LEASE.format(candidate), self._owner, nx=True, ex=LEASE_TTL_SECONDS):
                return candidate
        raise RuntimeError("no free id generator slot (1024 live processes?)")

    async def acquire(self) -> int:
        self.generator_id = await self._claim()
        self._task = asyncio.create_task(self._renew(), name="idgen-lease")
        return self.generator_id

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL_SECONDS / 3)
            try:
                await self.renew()
            except Exception:  # Redis down: keep the id; the lease is checked again when it returns
                log.warning("could not renew id generator lease %d", self.generator_id)

    async def renew(self) -> None:
        """Extend the lease, or take another id if it was lost (also called at once when Redis is
        found to have lost its data: until then a new process could claim this same id)."""
        held = await self._renew_script(keys=[_LEASE.format(self.generator_id)], args=[self._owner, LEASE_TTL_SECONDS])
        if not held:
            # Lost while Redis was away (or with its data); another process may own the id now.
            lost = self.generator_id
            self.generator_id = await self._claim()
            log.warning("id generator lease %d lost; now using %d", lost, self.generator_id)
            if self.on_change is not None:
                self.on_change(self.generator_id)

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.generator_id >= 0:
            with contextlib.suppress(Exception):
                if await self._redis.get(_LEASE.format(self.generator_id)) == self._owner.encode():
                    await self._redis.delete(_LEASE.format(self.generator_id))
