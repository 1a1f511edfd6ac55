from __future__ import annotations

import datetime as dt

from redis.asyncio import Redis

from sn.models import User
from sn.storage.cache import ProfileCache
from sn.storage.redis_mux import MuxRedis


def _user(user_id: int) -> User:
    return User(
        id=str(user_id),
        first_name="A",
        second_name="B",
        birthdate=dt.date(2000, 1, 1),
        biography="",
        city="C",
        gender="",
        interests=[],
    )


async def test_local_layer_serves_without_redis_and_forget_clears_it(aredis: Redis, amux: MuxRedis) -> None:
    cache = ProfileCache(aredis, ttl_seconds=60, local_size=2, local_seconds=30, reads=amux)
    encoded = await cache.put(_user(7_000_001))
    await aredis.delete("sn:user:v2:7000001")  # gone from Redis: the worker's copy still answers
    assert await cache.get_raw(7_000_001) == encoded
    await cache.forget(7_000_001)
    assert await cache.get_raw(7_000_001) is None


async def test_local_layer_is_bounded_and_expires(aredis: Redis, amux: MuxRedis) -> None:
    cache = ProfileCache(aredis, ttl_seconds=60, local_size=2, local_seconds=0.05, reads=amux)
    for user_id in (7_000_011, 7_000_012, 7_000_013):
        await cache.put(_user(user_id))
    assert len(cache._local) == 2
    await aredis.delete("sn:user:v2:7000013")
    import asyncio

    await asyncio.sleep(0.1)
    assert await cache.get_raw(7_000_013) is None  # local copy expired, Redis has none
