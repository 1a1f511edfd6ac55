"""The router actor against a real Redis stream: batched delivery, acks, and claiming what a
dead predecessor left pending."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis

from sn.protocol.encoding import PayloadCache
from sn.protocol.messages import Event, event_to_json
from sn.realtime.router import GROUP, StreamRouter
from sn.storage.redis_mux import MuxRedis
from tests.realtime.hubs import make_hub


class Recorder:
    """Stands in for a socket's connection actor: records what the router hands it."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.events: list[Event] = []

    def deliver(self, event: Event, payloads: PayloadCache) -> None:
        self.events.append(event)


def entry(event_id: int, recipients: str) -> dict[str, bytes | str | int]:
    body = event_to_json(Event(event_id=0, type="post_created", post_id=str(event_id), author_user_id="1"))
    return {"e": event_id, "b": body, "r": recipients}


async def _until(predicate: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


async def test_router_delivers_to_recipients_and_acks(aredis: Redis, amux: MuxRedis) -> None:
    hub = make_hub(aredis, amux)
    alice, bob = Recorder(1), Recorder(2)
    hub._by_user = {1: [alice], 2: [bob]}  # type: ignore[dict-item]
    router = StreamRouter(aredis, hub)
    task = asyncio.create_task(router.run())
    try:
        await asyncio.sleep(0.2)  # the group exists once run() started
        await aredis.xadd(hub.stream_key, entry(7, "1,2"))
        await aredis.xadd(hub.stream_key, entry(8, "2"))
        await _until(lambda: len(bob.events) == 2)
        assert [e.event_id for e in alice.events] == [7]
        assert [e.post_id for e in bob.events] == ["7", "8"]
        pending = await aredis.xpending(hub.stream_key, GROUP)
        assert pending["pending"] == 0  # everything acknowledged
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await aredis.delete(hub.stream_key)


async def test_entries_left_by_a_dead_consumer_are_claimed(aredis: Redis, amux: MuxRedis) -> None:
    hub = make_hub(aredis, amux)
    carol = Recorder(3)
    hub._by_user = {3: [carol]}  # type: ignore[dict-item]
    await aredis.xgroup_create(hub.stream_key, GROUP, id="$", mkstream=True)
    await aredis.xadd(hub.stream_key, entry(11, "3"))
    # A previous incarnation read it and died before acknowledging.
    await aredis.xreadgroup(GROUP, "dead-worker", {hub.stream_key: ">"}, count=10)
    await asyncio.sleep(0.15)
    router = StreamRouter(aredis, hub, consumer="new-worker", claim_idle_ms=100)
    task = asyncio.create_task(router.run())
    try:
        await _until(lambda: len(carol.events) == 1)
        assert carol.events[0].event_id == 11
        assert router.claimed == 1
        assert (await aredis.xpending(hub.stream_key, GROUP))["pending"] == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await aredis.delete(hub.stream_key)
