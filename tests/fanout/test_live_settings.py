"""Live celebrity settings: one worker's change reaches the others through Redis, and a hash that
is missing, partial or holds nonsense never stops the fan-out (real Redis, a database of its own:
the session server polls the shared one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sn.fanout.live_settings import KEY, CelebritySettings, LiveSettings

DEFAULTS = CelebritySettings(celebrity_threshold=1000, batch_size=100, batch_delay=0.1)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/4")
    await client.delete(KEY)
    yield client
    await client.delete(KEY)
    await client.aclose()


async def test_a_change_stored_by_one_worker_is_read_by_another(redis: Redis) -> None:
    writer, reader = LiveSettings(redis, DEFAULTS), LiveSettings(redis, DEFAULTS)
    assert await reader.refresh() == DEFAULTS
    changed = CelebritySettings(celebrity_threshold=5, batch_size=2, batch_delay=0.4)
    await writer.store(changed)
    assert writer.current == changed
    assert reader.current == DEFAULTS  # until its next refresh
    assert await reader.refresh() == changed


async def test_missing_fields_take_the_defaults_and_a_lost_hash_restores_them(redis: Redis) -> None:
    live = LiveSettings(redis, DEFAULTS)
    await redis.hset(KEY, "batch_size", "7")
    assert await live.refresh() == CelebritySettings(celebrity_threshold=1000, batch_size=7, batch_delay=0.1)
    await redis.delete(KEY)  # (Redis restarted empty)
    assert await live.refresh() == DEFAULTS


async def test_a_value_that_is_not_a_number_keeps_that_fields_default(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Written by hand or by an older version: the celebrity consumer refreshes before every post,
    # and an exception here would stop celebrity fan-outs on every worker.
    live = LiveSettings(redis, DEFAULTS)
    await redis.hset(KEY, mapping={"celebrity_threshold": "lots", "batch_size": "0", "batch_delay": "nan"})
    assert await live.refresh() == DEFAULTS
    assert "celebrity_threshold" in caplog.text
    assert "batch_size" in caplog.text
    assert "batch_delay" in caplog.text
    await redis.hset(KEY, "batch_delay", "0.5")
    assert (await live.refresh()).batch_delay == 0.5
