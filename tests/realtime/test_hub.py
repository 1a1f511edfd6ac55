"""The hub's presence announcements against a real Redis: handshakes share batches, and a
failure to store presence reaches the handshakes that waited for it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Iterable

import pytest
import redis.exceptions
from redis.asyncio import Redis

from sn.realtime.eventlog import EventLog
from sn.realtime.hub import PRESENCE_TICK_SECONDS, Hub
from sn.realtime.presence import Presence, online_key
from sn.storage.redis_mux import MuxRedis
from sn.tasks import cancel_and_wait


class CountingPresence(Presence):
    """The real presence registry, counting how many times it is written."""

    writes = 0

    leave_calls = 0

    async def refresh(self, user_ids: Iterable[int], stream: str) -> int:
        self.writes += 1
        return await super().refresh(user_ids, stream)

    async def leave(self, user_ids: Iterable[int], stream: str) -> int:
        self.leave_calls += 1
        return await super().leave(user_ids, stream)


class Socket:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id


def make_hub(aredis: Redis, presence: Presence) -> Hub:
    async def followed_among(user_id: int, candidates: set[int]) -> set[int]:
        return set()

    return Hub(
        aredis,
        presence,
        EventLog(presence._redis),  # (unused by these tests: the same client as presence)
        node_id="test",
        worker_name=uuid.uuid4().hex[:8],
        followed_among=followed_among,
    )


async def _running(hub: Hub) -> asyncio.Task[None]:
    task = asyncio.create_task(hub.presence_loop())
    await asyncio.sleep(0.05)  # past its first full refresh
    return task


async def _stop(task: asyncio.Task[None], hub: Hub) -> None:
    await cancel_and_wait(task)
    # (Its stats still go when its presence cannot be written: the tests with no Redis.)
    with contextlib.suppress(redis.exceptions.ConnectionError):
        await hub.withdraw()  # its stats would otherwise count in the test server's /stats for 15 s


async def test_a_burst_of_handshakes_shares_a_few_presence_writes(aredis: Redis, amux: MuxRedis) -> None:
    presence = CountingPresence(amux)
    hub = make_hub(aredis, presence)
    task = await _running(hub)
    try:
        before = presence.writes
        users = list(range(7_000_000, 7_000_300))
        for user in users:
            hub.add(Socket(user))  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(hub.announce(user) for user in users)), 5)
        assert await presence.locate(users) == {hub.stream_key: users}
        assert presence.writes - before <= 2  # not 300
        # A second tab of a present user has nothing to wait for.
        hub.add(Socket(users[0]))  # type: ignore[arg-type]
        await asyncio.wait_for(hub.announce(users[0]), 0.05)
    finally:
        await _stop(task, hub)


async def test_a_handshake_whose_client_left_is_not_kept_waiting(aredis: Redis, amux: MuxRedis) -> None:
    hub = make_hub(aredis, Presence(amux))
    task = await _running(hub)
    try:
        socket = Socket(7_100_001)
        hub.add(socket)  # type: ignore[arg-type]
        waiting = asyncio.create_task(hub.announce(socket.user_id))
        await asyncio.sleep(0)
        hub.remove(socket)  # type: ignore[arg-type]  # (the client disconnected during the handshake)
        await asyncio.wait_for(waiting, 1)  # settled by the next batch, not by the next full refresh
    finally:
        await _stop(task, hub)


async def test_a_failed_presence_write_fails_the_waiting_handshakes(aredis: Redis) -> None:
    unreachable = MuxRedis("redis://127.0.0.1:1/0", connect_timeout=0.5)
    hub = make_hub(aredis, Presence(unreachable))
    hub.add(Socket(42))  # type: ignore[arg-type]
    waiting = asyncio.create_task(hub.announce(42))
    await asyncio.sleep(0)
    task = asyncio.create_task(hub.presence_loop())
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(waiting, 5)
        assert 42 in hub._pending_presence  # kept for the loop's next attempt
    finally:
        await _stop(task, hub)
        await unreachable.aclose()


class Ticks:
    """Drives the hub's refresh slices as the presence loop does, on a clock the test sets."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.now = 1000.0

    def tick(self, seconds: float = PRESENCE_TICK_SECONDS) -> list[int]:
        users, position = self.hub._next_refresh_slice(self.now)
        self.hub._refresh_position = position  # (the refresh succeeded)
        self.now += seconds
        return users


async def test_presence_is_refreshed_a_slice_at_a_time_covering_everyone_each_cycle(
    aredis: Redis, amux: MuxRedis
) -> None:
    """Every user is refreshed once per ttl/3, in equal slices, never all at once."""
    hub = make_hub(aredis, Presence(amux, ttl_seconds=30))
    clock = Ticks(hub)
    ticks_per_cycle = int(30 / 3 / PRESENCE_TICK_SECONDS)
    sockets = [Socket(8_000_000 + n) for n in range(200)]
    for socket in sockets:
        hub.add(socket)  # type: ignore[arg-type]
    slices = [clock.tick() for _ in range(ticks_per_cycle)]
    assert all(len(s) == 200 // ticks_per_cycle for s in slices)
    assert sorted(u for s in slices for u in s) == [s.user_id for s in sockets]
    # Mid-cycle, a user who left is skipped and a newcomer waits for the next cycle (it was
    # announced on arrival, which keeps it present until then).
    first = clock.tick()
    gone, newcomer = sockets[-1], Socket(9_000_000)
    hub.remove(gone)  # type: ignore[arg-type]
    hub.add(newcomer)  # type: ignore[arg-type]
    rest = [u for _ in range(ticks_per_cycle - 1) for u in clock.tick()]
    assert gone.user_id not in rest
    assert newcomer.user_id not in first + rest
    assert len(first) + len(rest) == 199
    assert newcomer.user_id in [u for _ in range(ticks_per_cycle) for u in clock.tick()]


async def test_slow_turns_make_slices_bigger_not_the_cycle_longer(aredis: Redis, amux: MuxRedis) -> None:
    """Turns of 2 s (a storm) instead of 0.5 s: the cycle still ends within ttl/3, so every entry
    is refreshed before it expires."""
    hub = make_hub(aredis, Presence(amux, ttl_seconds=30))
    clock = Ticks(hub)
    for n in range(200):
        hub.add(Socket(8_100_000 + n))  # type: ignore[arg-type]
    started = clock.now
    refreshed: list[int] = []
    while len(refreshed) < 200:
        refreshed += clock.tick(2.0)
    assert clock.now - started <= 30 / 3 + 2.0
    assert sorted(refreshed) == [8_100_000 + n for n in range(200)]


async def test_a_failed_refresh_slice_is_tried_again(aredis: Redis) -> None:
    unreachable = MuxRedis("redis://127.0.0.1:1/0", connect_timeout=0.5)
    hub = make_hub(aredis, Presence(unreachable, ttl_seconds=30))
    for n in range(100):
        hub.add(Socket(8_200_000 + n))  # type: ignore[arg-type]
    hub._pending_presence.clear()  # (only the refresh slices matter here)
    task = asyncio.create_task(hub.presence_loop())
    try:
        await asyncio.wait({task}, timeout=5)
        assert task.done()
        assert isinstance(task.exception(), redis.exceptions.ConnectionError)
        assert hub._refresh_position == 0  # the restarted loop refreshes the same slice
    finally:
        await cancel_and_wait(task)
        await unreachable.aclose()
        with contextlib.suppress(redis.exceptions.ConnectionError):
            await hub.withdraw()


async def test_departures_are_written_in_batches_and_a_return_is_never_lost(aredis: Redis, amux: MuxRedis) -> None:
    presence = CountingPresence(amux)
    hub = make_hub(aredis, presence)
    task = await _running(hub)
    try:
        base = secrets.randbelow(10**12) * 1000  # (not shared with another run's leftovers)
        sockets = [Socket(base + n) for n in range(300)]
        for socket in sockets:
            hub.add(socket)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(hub.announce(s.user_id) for s in sockets)), 3)
        users = [s.user_id for s in sockets]
        writes_before = presence.leave_calls
        for socket in sockets:
            hub.remove(socket)  # type: ignore[arg-type]  # a storm of disconnects in one loop turn
        back = sockets[7]
        hub.add(back)  # type: ignore[arg-type]  # ...and one of them back before it was written
        await asyncio.wait_for(hub.announce(back.user_id), 3)
        for _ in range(50):
            await asyncio.sleep(0.02)
            if await presence.locate(users) == {hub.stream_key: [back.user_id]}:
                break
        assert await presence.locate(users) == {hub.stream_key: [back.user_id]}
        assert await aredis.smembers(online_key(hub.stream_key)) == {str(back.user_id).encode()}
        assert presence.leave_calls - writes_before <= 2  # one batch (maybe two), not 299 calls
        # Departures still pending when the worker stops are written as it withdraws, and so is
        # everyone it still lists (sockets that outlived the shutdown's wait).
        await cancel_and_wait(task)  # (a plain cancel can be lost in 3.11's wait_for: see sn.tasks)
        stuck = Socket(base + 1000)
        hub.add(stuck)  # type: ignore[arg-type]
        await presence.refresh([stuck.user_id], hub.stream_key)
        hub.remove(back)  # type: ignore[arg-type]  # (no loop left to write it)
        await hub.withdraw()
        assert await presence.locate([back.user_id, stuck.user_id]) == {}
        assert not await aredis.exists(online_key(hub.stream_key))
    finally:
        await _stop(task, hub)
