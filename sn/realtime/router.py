"""The router actor: reads this worker's Redis stream and delivers into connection mailboxes.

Entries are written by `EventLog.route` (one per batch of recipients on this worker). The
router reads with a consumer group (XREADGROUP COUNT >= 100), delivers, then XACKs the batch.
A worker that died with entries read but not acknowledged leaves them pending under its old
consumer name; the restarted worker (same stream key: node id + Sanic worker name) claims
them with XAUTOCLAIM, and the connection state machines drop anything already delivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import msgspec
import redis.exceptions
from redis.asyncio import Redis

from sn.metrics import observe_post_stage
from sn.protocol.encoding import PayloadCache
from sn.protocol.messages import event_from_json
from sn.realtime.hub import Hub

log = logging.getLogger("sn.realtime.router")

GROUP = "router"
READ_COUNT = 200
CLAIM_IDLE_MS = 10_000


class StreamRouter:
    def __init__(
        self, redis: Redis, hub: Hub, *, consumer: str | None = None, claim_idle_ms: int = CLAIM_IDLE_MS
    ) -> None:
        self._redis = redis
        self._claim_idle_ms = claim_idle_ms
        self._hub = hub
        self._stream = hub.stream_key
        self._consumer = consumer or f"pid-{os.getpid()}"
        self.entries = 0
        self.claimed = 0
        self.lag_ms = 0.0
        self.on_lost: Callable[[], None] | None = None  # the stream or its group is gone

    async def ensure_stream(self) -> None:
        """Create the stream and group if they are gone, reading from the stream's start: every
        entry in a recreated stream was routed after it was lost, and is for this worker."""
        await self._ensure_group("0")

    async def _ensure_group(self, start: str = "$") -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id=start, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[bytes]:
        payloads = PayloadCache()  # one encode per event body for the whole batch
        ids = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            event = msgspec.structs.replace(event_from_json(fields[b"b"]), event_id=int(fields[b"e"]))
            recipients = [int(r) for r in fields[b"r"].split(b",") if r]
            if event.event_id > self._hub.max_event_id:
                self._hub.max_event_id = event.event_id
            reached = self._hub.deliver(event, recipients, payloads)
            # Written to the sockets' transports by now. Not a celebrity's batches ('p': paced by
            # design), nor the test endpoint's posts (any id), nor entries that reached no socket
            # (a restarted worker claiming what its predecessor left: its sockets are gone).
            if reached and event.type == "post_created" and b"p" not in fields and event.post_id.isdigit():
                observe_post_stage("dispatched", int(event.post_id))
        self.entries += len(entries)
        return ids

    async def _claim_stuck(self) -> None:
        start = "0-0"
        while True:
            result: Any = await self._redis.xautoclaim(
                self._stream, GROUP, self._consumer, self._claim_idle_ms, start_id=start, count=READ_COUNT
            )
            start, entries = result[0], result[1]
            if entries:
                self.claimed += len(entries)
                await self._redis.xack(self._stream, GROUP, *self._deliver(entries))
            if start in (b"0-0", "0-0") or not entries:
                return

    async def run(self) -> None:
        await self._ensure_group()
        await self._claim_stuck()
        rounds = 0
        while True:
            try:
                response: Any = await self._redis.xreadgroup(
                    GROUP, self._consumer, {self._stream: ">"}, count=READ_COUNT, block=1000
                )
            except redis.exceptions.ResponseError as exc:
                # NOGROUP: the stream expired while idle, or Redis lost it (restarted empty,
                # flushed); UNBLOCKED: it was deleted under a blocked read (FLUSHALL).
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    if self.on_lost is not None:
                        self.on_lost()
                    await self.ensure_stream()
                    continue
                raise
            for _stream, entries in response or ():
                if entries:
                    ids = self._deliver(entries)
                    await self._redis.xack(self._stream, GROUP, *ids)
            rounds += 1
            if rounds % 50 == 0:
                await self._claim_stuck()
            # Yield even when the stream is busy, so socket writers get the loop.
            await asyncio.sleep(0)
