"""The `FeedBus` contract, checked the same way on Redis Streams and on RabbitMQ (real brokers)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

import pytest

from sn.pipeline.bus import BusUnavailable, FeedBus
from tests.pipeline.conftest import BusHarness, Inbox, eventually
from tests.proxy import TcpProxy


async def publish_until_accepted(bus: FeedBus, body: bytes, message_id: str, within: float = 15.0) -> float:
    """Publish, retrying on BusUnavailable as the outbox would; return how long it took."""
    started = time.monotonic()
    while True:
        try:
            await bus.publish("feed", body, message_id=message_id)
            return time.monotonic() - started
        except BusUnavailable:
            if time.monotonic() - started > within:
                raise
            await asyncio.sleep(0.1)


async def test_roundtrip(bus_harness: BusHarness) -> None:
    bus = await bus_harness.make()
    assert bus.kind == bus_harness.kind
    assert bus.connected
    inbox = Inbox()
    bus_harness.consume(bus, "feed", inbox)
    for n in range(3):
        await bus.publish("feed", b'{"n":%d}' % n, message_id=f"m{n}")

    await eventually(lambda: len(inbox.bodies) == 3, what="3 messages")
    assert sorted(inbox.bodies) == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    stats = bus.stats()
    assert stats["published"] == 3
    assert stats["consumed"] == 3
    assert stats["connected"] is True
    assert stats["kind"] == bus_harness.kind


async def test_messages_wait_for_a_consumer(bus_harness: BusHarness) -> None:
    publisher = await bus_harness.make()
    await publisher.publish("feed", b'{"kept":1}', message_id="k1")
    await publisher.publish("celebrity", b'{"kept":2}', message_id="k2")
    await publisher.close()

    # A different bus instance (a worker started later) finds them in the broker.
    worker = await bus_harness.make()
    feed, celebrity = Inbox(), Inbox()
    bus_harness.consume(worker, "feed", feed)
    bus_harness.consume(worker, "celebrity", celebrity)
    await eventually(lambda: bool(feed.bodies and celebrity.bodies), what="both queues delivered")
    assert feed.bodies == [b'{"kept":1}']
    assert celebrity.bodies == [b'{"kept":2}']


async def test_failed_message_is_retried_until_it_succeeds(bus_harness: BusHarness) -> None:
    bus = await bus_harness.make(max_deliveries=5)
    inbox = Inbox(fail=lambda body, attempt: attempt <= 2)  # fails twice, then works
    bus_harness.consume(bus, "feed", inbox)
    await bus.publish("feed", b'{"flaky":1}', message_id="f1")

    await eventually(lambda: inbox.bodies == [b'{"flaky":1}'], what="the retried message")
    assert inbox.calls[b'{"flaky":1}'] == 3
    stats = bus.stats()
    assert (stats["handler_failures"], stats["consumed"], stats["dead_lettered"]) == (2, 1, 0)
    assert await bus_harness.dead_bodies() == []


async def test_poison_message_is_dead_lettered_without_blocking_the_queue(bus_harness: BusHarness) -> None:
    poison = b'{"poison":true}'
    bus = await bus_harness.make(max_deliveries=3)
    inbox = Inbox(fail=lambda body, attempt: body == poison)
    # prefetch=1: the poison message holds the only slot, so later messages get through only if
    # the failed one really leaves the way.
    bus_harness.consume(bus, "feed", inbox, prefetch=1)
    await bus.publish("feed", poison, message_id="p")
    for n in range(3):
        await bus.publish("feed", b'{"ok":%d}' % n, message_id=f"ok{n}")

    await eventually(lambda: len(inbox.bodies) == 3, what="the messages behind the poison one")
    assert bus.stats()["dead_lettered"] == 0, "later messages must not wait for the poison one to be given up"
    await eventually(lambda: bus.stats()["dead_lettered"] == 1, what="dead-lettering")
    assert inbox.calls[poison] == 3
    await eventually(lambda: inbox.calls[poison] == 3, within=0.5)  # and never again after that
    assert await bus_harness.dead_bodies() == [poison]

    await bus.publish("feed", b'{"after":1}', message_id="after")
    await eventually(lambda: b'{"after":1}' in inbox.bodies, what="a message after the dead-lettering")
    assert inbox.calls[poison] == 3


async def test_celebrity_backlog_does_not_delay_feed(bus_harness: BusHarness) -> None:
    bus = await bus_harness.make()
    for chunk in range(10):
        await asyncio.gather(
            *(bus.publish("celebrity", b'{"c":%d}' % i, message_id=f"c{i}") for i in range(chunk * 50, chunk * 50 + 50))
        )
    slow = Inbox(delay=0.05)
    feed = Inbox()
    bus_harness.consume(bus, "celebrity", slow, prefetch=4)
    bus_harness.consume(bus, "feed", feed)
    await eventually(lambda: len(slow.bodies) >= 4, what="the celebrity backlog to be under way")

    await bus.publish("feed", b'{"feed":1}', message_id="f")
    latency = await eventually(lambda: feed.bodies == [b'{"feed":1}'], within=5, what="the feed message")
    assert latency < 1.0
    assert len(slow.bodies) < 200, "the celebrity backlog should still be far from drained"


async def test_broker_outage(bus_harness: BusHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=bus_harness.logger)
    with TcpProxy(*bus_harness.address) as proxy:
        bus = await bus_harness.make(proxy=proxy)
        inbox = Inbox()
        bus_harness.consume(bus, "feed", inbox)
        await bus.publish("feed", b'{"before":1}', message_id="b")
        await eventually(lambda: inbox.bodies == [b'{"before":1}'], what="the message before the outage")

        proxy.cut()
        started = time.monotonic()
        with pytest.raises(BusUnavailable):
            await bus.publish("feed", b'{"lost":1}', message_id="l")
        assert time.monotonic() - started < 6.0
        await eventually(lambda: not bus.connected, what="connected to turn false")
        with pytest.raises(BusUnavailable):
            await bus.publish("feed", b'{"lost":2}', message_id="l2")
        assert cast("int", bus.stats()["publish_failures"]) >= 2

        proxy.restore()
        await publish_until_accepted(bus, b'{"after":1}', "a")
        # The consume() started before the outage picks it up by itself.
        await eventually(lambda: b'{"after":1}' in inbox.bodies, what="the running consumer to resume")
        assert bus.connected

    kind = "rabbitmq" if bus_harness.kind == "rabbitmq" else "redis"
    messages = [r.getMessage() for r in caplog.records if r.name == bus_harness.logger]
    assert sum(m.startswith(f"{kind} lost") for m in messages) == 1, messages
    assert sum(m.startswith(f"{kind} regained") for m in messages) == 1, messages


async def test_start_while_broker_is_down(bus_harness: BusHarness) -> None:
    with TcpProxy(*bus_harness.address) as proxy:
        proxy.cut()
        started = time.monotonic()
        bus = await bus_harness.make(proxy=proxy)  # must not raise
        assert time.monotonic() - started < 6.0
        assert not bus.connected
        inbox = Inbox()
        bus_harness.consume(bus, "feed", inbox)  # may start before the broker is there

        proxy.restore()
        await publish_until_accepted(bus, b'{"late":1}', "late")
        await eventually(lambda: inbox.bodies == [b'{"late":1}'], what="the consumer started during the outage")
        assert bus.connected
