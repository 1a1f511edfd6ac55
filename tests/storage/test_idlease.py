"""The generator-id lease against real Redis: unique among live holders, lost leases are replaced."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from sn.storage import idlease
from sn.storage.idlease import GeneratorLease


async def test_live_leases_never_share_an_id(aredis: Redis) -> None:
    leases = [GeneratorLease(aredis) for _ in range(20)]
    ids = [await lease.acquire() for lease in leases]
    try:
        assert len(set(ids)) == len(ids)
    finally:
        for lease in leases:
            await lease.release()


async def test_lost_lease_is_replaced_not_stolen_back(aredis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idlease, "LEASE_TTL_SECONDS", 1)
    changes: list[int] = []
    lease = GeneratorLease(aredis, on_change=changes.append)
    original = await lease.acquire()
    key = f"sn:idgen:lease:{original}"
    await aredis.set(key, "another-process")  # our lease expired and someone else took the id
    try:
        import asyncio

        for _ in range(50):
            if changes:
                break
            await asyncio.sleep(0.05)
        assert changes
        assert changes[-1] != original
        assert await aredis.get(key) == b"another-process"  # not taken back
    finally:
        await lease.release()
        await aredis.delete(key)


async def test_a_lease_nobody_holds_is_taken_back_not_switched(aredis: Redis) -> None:
    # Redis lost its data (restart without persistence, FLUSHALL): the id is still ours to use,
    # and switching would open a window in which another process claims the id we are using.
    changes: list[int] = []
    lease = GeneratorLease(aredis, on_change=changes.append)
    original = await lease.acquire()
    key = f"sn:idgen:lease:{original}"
    try:
        await aredis.delete(key)
        await lease.renew()
        assert changes == []
        assert lease.generator_id == original
        assert await aredis.get(key) is not None
        assert 0 < await aredis.ttl(key) <= idlease.LEASE_TTL_SECONDS
    finally:
        await lease.release()
