"""`FeedBus` on Redis Streams: the default, so a deployment needs no RabbitMQ.

Layout, under `prefix` ("sn" in production): streams sn:bus:feed and sn:bus:celebrity, each read by
the consumer group `sn-pipeline`; sn:bus:dead collects entries that failed `max_deliveries` times.
Groups are created at id 0, not $, so entries published before the group existed are delivered too.

Delivery. XREADGROUP ">" gives each entry to one consumer and records it in the group's pending
list (PEL) with a delivery count of 1; XACK after the handler returns removes it. A handler
exception leaves the entry pending, and two scans bring pending entries back:

- every `retry_delay` (1 s) the consumer claims *its own* entries idle that long. Own only, because
  another consumer's entry may merely be slow in its handler; its own are never in flight during
  the scan, since one loop reads, handles and scans in turn. So a transient failure is retried after
  1–2 s, and what a previous run under the same consumer name left pending is picked up at start.
- every `claim_interval` (5 s) it claims entries of *any* consumer idle for `claim_idle` (30 s):
  those of a worker that crashed or stopped for good.

Both claim with XCLAIM, which bumps the delivery count and re-checks the idle time (so of two
workers racing for an orphan only one gets it). The count XPENDING reported decides first: an entry
already delivered `max_deliveries` times is copied to the dead stream and acked in one MULTI.

Entries are handled concurrently, up to `prefetch` per batch. Redis being unreachable is retried
with backoff (redis-py reconnects on the next command); a lost group (Redis restarted empty) is
recreated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from sn.pipeline.bus import QUEUES, BusUnavailable, Handler, Queue

log = logging.getLogger("sn.pipeline.redis_bus")

GROUP = "sn-pipeline"
# "Redis is unreachable right now"; OSError covers our own timeouts (TimeoutError is one).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
MAX_BACKOFF = 5.0
# A consumer with nothing pending and silent this long is a stopped worker: forget its name, or
# names derived from pids pile up in XINFO forever. A live consumer polls every second.
STALE_CONSUMER_MS = 3_600_000


class Entry(NamedTuple):
    entry_id: str
    message_id: str
    body: bytes


class RedisStreamBus:
    def __init__(
        self,
        redis: Redis,
        *,
        node_id: str,
        consumer: str,
        max_deliveries: int = 5,
        maxlen: int = 100_000,
        prefix: str = "sn",
        retry_delay: float = 1.0,
        claim_idle: float = 30.0,
        claim_interval: float = 5.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self._redis = redis
        self._node_id = node_id
        # Consumer names must be unique per process (a consumer retries its own pending entries),
        # so the node id is part of it: "worker-1" on two hosts must not be one consumer.
        self.consumer_name = f"{node_id}:{consumer}"
        self._max_deliveries = max_deliveries
        self._maxlen = maxlen
        self._retry_delay = retry_delay
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_interval = claim_interval
        self._publish_timeout = publish_timeout
        self.streams: dict[Queue, str] = {queue: f"{prefix}:bus:{queue}" for queue in QUEUES}
        self.dead_stream = f"{prefix}:bus:dead"
        self._state: bool | None = None
        self._closed = asyncio.Event()
        self._counters = dict.fromkeys(
            ("published", "publish_failures", "consumed", "handler_failures", "retried", "dead_lettered"), 0
        )

    @property
    def kind(self) -> str:
        return "redis-streams"

    @property
    def connected(self) -> bool:
        return bool(self._state)

    def stats(self) -> dict[str, object]:
        return {"kind": self.kind, "connected": self.connected, **self._counters}

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout):
                for stream in self.streams.values():
                    await self._ensure_group(stream)
        except (*UNREACHABLE, RedisError) as exc:
            # Not fatal: consume() creates the groups once Redis answers, and the redis client
            # reconnects by itself on the next command.
            self._transition(False, exc)
        else:
            self._transition(True)

    async def close(self) -> None:
        # The Redis client belongs to the caller; only the consume loops stop.
        self._closed.set()

    async def publish(self, queue: Queue, body: bytes, *, message_id: str) -> None:
        fields: dict[FieldT, EncodableT] = {"body": body, "id": message_id, "node": self._node_id}
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._redis.xadd(self.streams[queue], fields, maxlen=self._maxlen, approximate=True)
        except (*UNREACHABLE, RedisError) as exc:  # down, or refusing writes (OOM, read-only replica)
            self._counters["publish_failures"] += 1
            if isinstance(exc, UNREACHABLE):
                self._transition(False, exc)
            raise BusUnavailable(f"redis did not take the message: {exc!r}") from exc
        self._counters["published"] += 1
        self._transition(True)

    async def consume(self, queue: Queue, handler: Handler, *, prefetch: int = 64) -> None:
        stream = self.streams[queue]
        loop = asyncio.get_running_loop()
        backoff = 0.2
        group_ready = False
        next_retry = next_claim = 0.0  # both scans run first thing, for what a previous run left
        task = asyncio.current_task()
        while not self._closed.is_set():
            if task is not None and task.cancelling():
                # Python 3.11's asyncio.wait_for, which redis-py sends commands with, drops a
                # cancellation that lands as the send completes (fixed in 3.12): the loop would
                # run on forever. Honour the request it swallowed.
                raise asyncio.CancelledError
            try:
                if not group_ready:
                    await self._ensure_group(stream)
                    group_ready = True
                now = loop.time()
                if now >= next_retry:
                    await self._reclaim(stream, handler, self.consumer_name, int(self._retry_delay * 1000), prefetch)
                    next_retry = now + self._retry_delay
                if now >= next_claim:
                    await self._reclaim(stream, handler, None, self._claim_idle_ms, prefetch)
                    await self._forget_stale_consumers(stream)
                    next_claim = now + self._claim_interval
                # Block no longer than until the next retry scan, so retries keep their pace.
                block_ms = max(1, min(1000, int((next_retry - loop.time()) * 1000)))
                reply = await self._redis.xreadgroup(
                    GROUP, self.consumer_name, {stream: ">"}, count=prefetch, block=block_ms
                )
                self._transition(True)
                await self._handle(stream, handler, _entries(reply))
                backoff = 0.2
            except UNREACHABLE as exc:
                self._transition(False, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except ResponseError as exc:
                # The stream or its group is gone (Redis restarted empty, key deleted or flushed):
                # NOGROUP on the next command, UNBLOCKED for an XREADGROUP blocked at the time.
                if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    group_ready = False
                    continue
                log.error("redis: %s on %s; retrying", exc, stream)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _handle(self, stream: str, handler: Handler, entries: list[Entry]) -> None:
        if not entries:
            return
        results = await asyncio.gather(*(self._run(handler, stream, entry) for entry in entries))
        done = [entry.entry_id for entry, ok in zip(entries, results, strict=True) if ok]
        if done:
            await self._redis.xack(stream, GROUP, *done)

    async def _run(self, handler: Handler, stream: str, entry: Entry) -> bool:
        try:
            await handler(entry.body)
        except Exception as exc:
            self._counters["handler_failures"] += 1
            log.warning("%s: message %s failed, will retry: %r", stream, entry.message_id, exc)
            return False
        self._counters["consumed"] += 1
        return True

    async def _reclaim(self, stream: str, handler: Handler, owner: str | None, idle_ms: int, count: int) -> None:
        """Claim pending entries idle for `idle_ms` (of `owner`, or of anyone) and run them again."""
        pending = await self._redis.xpending_range(stream, GROUP, "-", "+", count, consumername=owner, idle=idle_ms)
        if not pending:
            return
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        claimed = await self._redis.xclaim(stream, GROUP, self.consumer_name, idle_ms, list(deliveries))
        # Entries trimmed away by MAXLEN are not returned: XCLAIM drops them from the PEL (Redis 7).
        entries = [_entry(record) for record in claimed if isinstance(record, tuple | list)]
        dead = [entry for entry in entries if deliveries.get(entry.entry_id, 0) >= self._max_deliveries]
        retry = [entry for entry in entries if entry not in dead]
        if dead:
            await self._dead_letter(stream, dead, deliveries)
        if retry:
            self._counters["retried"] += len(retry)
            await self._handle(stream, handler, retry)

    async def _dead_letter(self, stream: str, entries: list[Entry], deliveries: dict[str, int]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                record: dict[FieldT, EncodableT] = {
                    "body": entry.body,
                    "id": entry.message_id,
                    "stream": stream,
                    "entry": entry.entry_id,
                    "deliveries": deliveries[entry.entry_id],
                    "node": self._node_id,
                }
                pipe.xadd(self.dead_stream, record, maxlen=self._maxlen, approximate=True)
            pipe.xack(stream, GROUP, *(entry.entry_id for entry in entries))
            await pipe.execute()
        self._counters["dead_lettered"] += len(entries)
        for entry in entries:
            times = deliveries[entry.entry_id]
            log.error("%s: message %s failed %d times, dead-lettered", stream, entry.message_id, times)

    async def _forget_stale_consumers(self, stream: str) -> None:
        for info in await self._redis.xinfo_consumers(stream, GROUP):
            name = _text(info["name"])
            if name != self.consumer_name and int(info["pending"]) == 0 and int(info["idle"]) > STALE_CONSUMER_MS:
                await self._redis.xgroup_delconsumer(stream, GROUP, name)

    def _transition(self, up: bool, exc: BaseException | None = None) -> None:
        if up == self._state:
            return
        previous, self._state = self._state, up
        if not up:
            log.warning("redis lost: %s", exc)
        elif previous is False:
            log.warning("redis regained")  # as loud as "lost", so whoever sees one sees both


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(record: Any) -> Entry:
    entry_id, fields = record[0], record[1] or {}
    body = fields.get(b"body", fields.get("body", b""))
    message_id = fields.get(b"id", fields.get("id", b""))
    return Entry(_text(entry_id), _text(message_id), body.encode() if isinstance(body, str) else body)


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP's reply for one stream: [[name, records]] in RESP2, {name: [records]} in RESP3."""
    if not reply:
        return []
    records = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    return [_entry(record) for record in records]
