"""Noticing that Redis lost this worker's real-time state, and rebuilding it.

Everything the real-time path keeps in Redis is soft state that a worker writes once and then
only refreshes: its users' presence and its online set, its stream and the router's consumer
group, the event log its sockets replay from, the event id counter. A Redis that restarts
without persistence, a failover to a replica that had not received the last writes, or a
FLUSHALL leaves the workers running with all of it gone: the loops reconnect, but nothing is
routed to the open sockets any more, and they stay open and silent.

Each worker checks once a second (and at once when its router reads NOGROUP or UNBLOCKED):

- the epoch key: a random token the first worker writes (SET NX) and every worker remembers.
  Missing (or another token) means the data set is not the one this worker registered in.
- the server's run_id: another Redis process (a restart, a failover). If the epoch survived,
  the data may still be missing recent writes: the event id counter below the highest id this
  worker delivered says the log lost events.

On a loss the worker re-registers every socket it holds (the router's group first, so that an
entry routed the moment presence is back is read), and tells each open socket to refetch its
feed (``resync``): what was logged for it in between is gone and cannot be replayed. The
counter starts again above every id handed out before (see ``sn.realtime.eventlog``), so the
sockets' cursors keep increasing. A restart that lost nothing only re-registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from sn.realtime.eventlog import COUNTER_KEY
from sn.realtime.hub import Hub

log = logging.getLogger("sn.realtime.recovery")

EPOCH_KEY = "sn:rt:epoch"
CHECK_INTERVAL_SECONDS = 1.0
RESYNC_MESSAGE = "the server lost recent events (its Redis restarted); refetch the feed"

# KEYS[1] epoch, KEYS[2] event counter; ARGV[1] a new epoch token -> {the epoch (set if missing),
# the counter (false if missing)}: one round trip per check.
_PROBE = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
"""

# KEYS[1] event counter, KEYS[2] epoch; ARGV[1] a floor: the counter is raised to it (never
# lowered); ARGV[2] a new epoch token, or '' to keep the epoch.
_RAISE_COUNTER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""


class RedisRecovery:
    def __init__(
        self,
        redis: Redis,
        hub: Hub,
        *,
        ensure_stream: Callable[[], Awaitable[None]],
        on_recovered: Callable[[], Awaitable[None]] | None = None,
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._redis = redis
        self._hub = hub
        self._ensure_stream = ensure_stream
        self._on_recovered = on_recovered
        self._interval = interval
        self._probe = redis.register_script(_PROBE)
        self._raise_counter = redis.register_script(_RAISE_COUNTER)
        self._epoch: bytes | None = None
        self._run_id: str | None = None
        self._wake = asyncio.Event()
        self.recoveries = 0
        self.resyncs_sent = 0
        self.last_recovery_at: float | None = None

    def suspect(self) -> None:
        """Check now (the router read NOGROUP/UNBLOCKED: its stream or group is gone)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()

    async def check(self) -> bool:
        """One check; returns whether a recovery ran. What this worker remembers (epoch, run_id)
        changes only once a recovery is done: a recovery cut short is started again next time."""
        info: Any = await self._redis.info("server")
        run_id = str(info.get("run_id", ""))
        # A new token each time: after a loss, the first worker to look writes one that no worker
        # remembers, so every worker sees the change (whichever looks first).
        epoch, counter = await self._probe(keys=[EPOCH_KEY, COUNTER_KEY], args=[secrets.token_hex(8)])
        if self._epoch is None:  # the first check: this is the data set the worker registered in
            self._epoch, self._run_id = epoch, run_id
            return False
        lost = epoch != self._epoch
        if not lost and run_id == self._run_id:
            return False
        new_epoch = None
        if not lost and int(counter or 0) < self._hub.max_event_id:
            # Another server, and it lacks events this worker delivered (a failover that lost
            # writes). The other workers may not have delivered as far: a new epoch tells them.
            lost, new_epoch = True, secrets.token_hex(8).encode()
        await self._recover(lost=lost, new_epoch=new_epoch, reason="epoch" if epoch != self._epoch else "run_id")
        self._epoch, self._run_id = new_epoch or epoch, run_id
        return True

    async def _recover(self, *, lost: bool, new_epoch: bytes | None, reason: str) -> None:
        started = time.monotonic()
        log.warning(
            "Redis %s: re-registering %d sockets of %d users%s",
            "lost this worker's state" if lost else "changed (restart or failover)",
            self._hub.connections,
            self._hub.users,
            " and sending each a resync" if lost else "",
            extra={"reason": reason},
        )
        # The group before presence: from the moment presence is back, entries are routed here.
        await self._ensure_stream()
        if lost:
            # A counter that survived below the ids already handed out (a failover that lost
            # writes) is raised past them, as a missing one starts (see sn.realtime.eventlog).
            floor = max(self._hub.max_event_id + 1, int(time.time() * 1000) * 1000)
            await self._raise_counter(keys=[COUNTER_KEY, EPOCH_KEY], args=[floor, new_epoch or b""])
        await self._hub.reregister()
        if self._on_recovered is not None:
            await self._on_recovered()
        if lost:
            self.resyncs_sent += self._hub.resync_all(RESYNC_MESSAGE)
        self.recoveries += 1
        self.last_recovery_at = time.time()
        log.warning("Redis recovery done in %.0f ms", (time.monotonic() - started) * 1000)
