"""Connection counts per user and per address in Redis: shared by workers, given back on close,
and a dead worker's counts stop counting once its alive key is gone."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from sn.realtime.connlimits import ADDRESS_PREFIX, ALIVE_PREFIX, USER_PREFIX, ConnectionLimits, Refusal, Slot
from sn.storage.redis_mux import MuxRedis


def _subject() -> tuple[int, str]:
    return uuid.uuid4().int % 10**15, f"10.0.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


async def _alive(limits: ConnectionLimits) -> asyncio.Task[None]:
    task = asyncio.create_task(limits.heartbeat())
    await asyncio.sleep(0.05)  # (its first SET)
    return task


async def test_limits_are_shared_by_workers_and_given_back(amux: MuxRedis, aredis: Redis) -> None:
    user, address = _subject()
    workers = [ConnectionLimits(amux, per_user=3, per_address=10) for _ in range(2)]
    beats = [await _alive(w) for w in workers]
    try:
        slots = [await workers[i % 2].acquire(user, address) for i in range(3)]
        assert all(isinstance(slot, Slot) for slot in slots)
        for worker in workers:
            refused = await worker.acquire(user, address)
            assert refused == Refusal("user", 3, 3)
        first = slots[0]
        assert isinstance(first, Slot)
        workers[0].release(first)
        for _ in range(100):
            if isinstance(await workers[1].acquire(user, address), Slot):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the released slot did not come back")
        counts = await aredis.hgetall(USER_PREFIX + str(user))
        assert sum(int(v) for v in counts.values()) == 3
    finally:
        for beat in beats:
            beat.cancel()


async def test_address_limit_counts_every_user(amux: MuxRedis) -> None:
    _, address = _subject()
    limits = ConnectionLimits(amux, per_user=0, per_address=2)
    beat = await _alive(limits)
    try:
        assert isinstance(await limits.acquire(1, address), Slot)
        assert isinstance(await limits.acquire(2, address), Slot)
        assert await limits.acquire(3, address) == Refusal("address", 2, 2)
    finally:
        beat.cancel()


async def test_a_dead_workers_counts_expire_with_its_alive_key(amux: MuxRedis, aredis: Redis) -> None:
    user, address = _subject()
    dead, alive = ConnectionLimits(amux, per_user=2, per_address=0), ConnectionLimits(amux, per_user=2, per_address=0)
    beats = [await _alive(dead), await _alive(alive)]
    try:
        assert isinstance(await dead.acquire(user, address), Slot)
        assert isinstance(await dead.acquire(user, address), Slot)
        assert isinstance(await alive.acquire(user, address), Refusal)
        beats[0].cancel()  # the worker is killed: nothing released, its alive key lapses
        await aredis.delete(ALIVE_PREFIX + dead.incarnation)
        assert isinstance(await alive.acquire(user, address), Slot)
        fields = await aredis.hkeys(USER_PREFIX + str(user))
        assert fields == [alive.incarnation.encode()]  # the dead one's field is gone too
    finally:
        for beat in beats:
            beat.cancel()


async def test_disabled_limits_touch_nothing(amux: MuxRedis, aredis: Redis) -> None:
    user, address = _subject()
    limits = ConnectionLimits(amux, per_user=0, per_address=0)
    assert not limits.enabled
    slot = await limits.acquire(user, address)
    assert slot == Slot(())
    limits.release(slot)
    assert not await aredis.exists(USER_PREFIX + str(user), ADDRESS_PREFIX + address)


async def test_close_removes_the_alive_key(amux: MuxRedis, aredis: Redis) -> None:
    limits = ConnectionLimits(amux, per_user=1, per_address=0)
    beat = await _alive(limits)
    assert await aredis.exists(ALIVE_PREFIX + limits.incarnation)
    beat.cancel()
    await limits.close()
    assert not await aredis.exists(ALIVE_PREFIX + limits.incarnation)
