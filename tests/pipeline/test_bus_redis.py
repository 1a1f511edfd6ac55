"""What only the Redis Streams bus has to get right: orphans, not stealing, lost groups, dead entries."""

from __future__ import annotations

import asyncio
from typing import Any

from sn.pipeline.redis_bus import GROUP, RedisStreamBus
from tests.pipeline.conftest import Inbox, RedisHarness, eventually, eventually_true


async def test_entries_of_a_crashed_consumer_are_claimed(redis_harness: RedisHarness) -> None:
    bus = await redis_harness.make(claim_idle=0.3, claim_interval=0.1)
    assert isinstance(bus, RedisStreamBus)
    stream = bus.streams["feed"]
    await bus.publish("feed", b'{"orphan":1}', message_id="o1")
    # A worker reads the entry and dies before acking it.
    raw = redis_harness.client()
    reply: Any = await raw.xreadgroup(GROUP, "crashed-worker", {stream: ">"}, count=10)
    assert len(reply[0][1]) == 1

    inbox = Inbox()
    redis_harness.consume(bus, "feed", inbox)
    waited = await eventually(lambda: inbox.bodies == [b'{"orphan":1}'], what="the orphan to be claimed")
    assert waited >= 0.2, "claimed before it was idle for claim_idle"
    await eventually(lambda: bus.stats()["consumed"] == 1)
    await eventually_true(lambda: _nothing_pending(raw, stream), what="the claimed entry to be acknowledged")


async def test_a_slow_entry_of_a_live_consumer_is_not_stolen(redis_harness: RedisHarness) -> None:
    # The fast own-retry scan must only look at a consumer's own entries: a short retry_delay on
    # both buses, a handler slower than it, and the entry must still run exactly once.
    first = await redis_harness.make(retry_delay=0.05)
    second = await redis_harness.make(retry_delay=0.05)
    inbox = Inbox(delay=0.6)
    redis_harness.consume(first, "feed", inbox)
    redis_harness.consume(second, "feed", inbox)
    await first.publish("feed", b'{"slow":1}', message_id="s1")

    await eventually(lambda: inbox.bodies == [b'{"slow":1}'], what="the slow message")
    await asyncio.sleep(0.3)
    assert inbox.calls == {b'{"slow":1}': 1}


async def test_a_lost_group_is_recreated(redis_harness: RedisHarness) -> None:
    bus = await redis_harness.make()
    assert isinstance(bus, RedisStreamBus)
    inbox = Inbox()
    redis_harness.consume(bus, "feed", inbox)
    await bus.publish("feed", b'{"n":1}', message_id="n1")
    await eventually(lambda: len(inbox.bodies) == 1)

    # What a Redis restarted without persistence looks like: the stream and its group are gone.
    await redis_harness.client().delete(bus.streams["feed"])
    await asyncio.sleep(0.1)
    await bus.publish("feed", b'{"n":2}', message_id="n2")
    await eventually(lambda: inbox.bodies == [b'{"n":1}', b'{"n":2}'], what="delivery after the group was lost")


async def test_dead_entry_records_where_it_came_from(redis_harness: RedisHarness) -> None:
    bus = await redis_harness.make(max_deliveries=2)
    assert isinstance(bus, RedisStreamBus)
    inbox = Inbox(fail=lambda body, attempt: True)
    redis_harness.consume(bus, "celebrity", inbox)
    await bus.publish("celebrity", b'{"bad":1}', message_id="bad-1")

    await eventually(lambda: bus.stats()["dead_lettered"] == 1, what="dead-lettering")
    raw = redis_harness.client()
    entries: Any = await raw.xrange(bus.dead_stream)
    [(_, fields)] = entries
    assert fields[b"body"] == b'{"bad":1}'
    assert fields[b"id"] == b"bad-1"
    assert fields[b"stream"] == bus.streams["celebrity"].encode()
    assert fields[b"deliveries"] == b"2"
    assert inbox.calls[b'{"bad":1}'] == 2
    await eventually_true(
        lambda: _nothing_pending(raw, bus.streams["celebrity"]), what="the dead entry to be acknowledged"
    )


async def _nothing_pending(raw: Any, stream: str) -> bool:
    pending: Any = await raw.xpending(stream, GROUP)
    return bool(pending["pending"] == 0)
