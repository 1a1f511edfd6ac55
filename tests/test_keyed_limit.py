"""sn.keyed_limit: holders per key, keys independent, nothing kept for keys no longer in use."""

from __future__ import annotations

import asyncio

import pytest

from sn.keyed_limit import KeyedLimit


async def _held_at_most(limit: KeyedLimit[int], keys: list[int]) -> dict[int, int]:
    """Run one task per key in `keys` (each holding a moment); the most that held each key at once."""
    inside: dict[int, int] = {}
    most: dict[int, int] = {}

    async def one(key: int) -> None:
        async with limit.hold(key):
            inside[key] = inside.get(key, 0) + 1
            most[key] = max(most.get(key, 0), inside[key])
            await asyncio.sleep(0.001)
            inside[key] -= 1

    await asyncio.gather(*(one(key) for key in keys))
    return most


async def test_one_key_is_held_at_most_n_at_a_time_and_other_keys_are_not_held_up() -> None:
    limit: KeyedLimit[int] = KeyedLimit(2)
    assert await _held_at_most(limit, [7] * 10 + [8] * 3) == {7: 2, 8: 2}
    assert limit.in_use() == 0  # no entry left behind


async def _taken_with_a_waiter(
    limit: KeyedLimit[int], key: int
) -> tuple[asyncio.Event, asyncio.Future[None], asyncio.Future[dict[int, int]]]:
    """`key` held until the returned event is set, and a second task waiting for it."""
    release = asyncio.Event()

    async def holder() -> None:
        async with limit.hold(key):
            await release.wait()

    task = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(_held_at_most(limit, [key]))
    await asyncio.sleep(0.01)
    return release, task, waiter


async def test_a_waiter_on_a_busy_key_does_not_block_a_free_key() -> None:
    limit: KeyedLimit[int] = KeyedLimit(1)
    release, task, waiter = await _taken_with_a_waiter(limit, 1)
    assert not waiter.done()  # key 1 is taken
    assert await asyncio.wait_for(_held_at_most(limit, [2]), 1) == {2: 1}
    assert limit.in_use() == 1
    release.set()
    await task
    assert await asyncio.wait_for(waiter, 1) == {1: 1}
    assert limit.in_use() == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    limit: KeyedLimit[int] = KeyedLimit(1)
    release, task, waiter = await _taken_with_a_waiter(limit, 5)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await task
    assert limit.in_use() == 0


async def test_zero_means_no_limit_and_a_negative_limit_is_refused() -> None:
    assert await _held_at_most(KeyedLimit(0), [3] * 5) == {3: 5}
    with pytest.raises(ValueError, match="per_key"):
        KeyedLimit(-1)


async def test_with_a_rate_starts_of_one_key_are_spaced_and_other_keys_start_at_once() -> None:
    limit: KeyedLimit[int] = KeyedLimit(0, rate=20)  # no cap on holders, at most 20 starts a second per key
    loop = asyncio.get_running_loop()
    starts: dict[int, list[float]] = {}

    async def one(key: int) -> None:
        async with limit.hold(key):
            starts.setdefault(key, []).append(loop.time())

    began = loop.time()
    await asyncio.gather(*(one(1) for _ in range(3)), one(2))
    first, _, third = sorted(starts[1])
    assert third - first >= 0.09  # two intervals of 50 ms
    assert starts[2][0] - began < 0.05  # key 2 waited for nobody
    # One at a time, each done before the next arrives: still spaced (the key's next slot outlives its holders).
    await one(3)
    await one(3)
    assert starts[3][1] - starts[3][0] >= 0.045
    await asyncio.sleep(0.06)
    assert limit.in_use() == 0  # forgotten once no slot is ahead
