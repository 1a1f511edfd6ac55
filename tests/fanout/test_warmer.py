"""sn.fanout.warmer: warm-ups in order, once per waiting user, bounded, a failure skipped, off at rate 0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sn.fanout.warmer import FeedWarmer


class _Rebuilds:
    def __init__(self, fail: set[int] | None = None, cached: set[int] | None = None) -> None:
        self.done: list[int] = []
        self._fail = fail or set()
        self._cached = cached or set()

    async def __call__(self, user_id: int) -> bool:
        if user_id in self._fail:
            raise RuntimeError("database away")
        if user_id in self._cached:
            return False
        self.done.append(user_id)
        return True


async def _run_until(warmer: FeedWarmer, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    task = asyncio.ensure_future(warmer.run())
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_users_are_warmed_in_order_and_a_user_scheduled_twice_once() -> None:
    rebuilds = _Rebuilds()
    warmer = FeedWarmer(rebuilds, rate=1000)
    for user in (3, 1, 3, 2):
        assert warmer.schedule(user)
    assert warmer.waiting == 3
    await _run_until(warmer, lambda: len(rebuilds.done) == 3)
    assert rebuilds.done == [3, 1, 2]
    assert warmer.stats() == {"waiting": 0, "warmed": 3, "cached": 0, "skipped": 0, "failed": 0}


async def test_past_capacity_new_users_are_skipped_and_a_failure_does_not_stop_the_rest() -> None:
    rebuilds = _Rebuilds(fail={1})
    warmer = FeedWarmer(rebuilds, rate=1000, capacity=2)
    assert warmer.schedule(1)
    assert warmer.schedule(2)
    assert not warmer.schedule(3)  # full: its next read rebuilds the feed
    await _run_until(warmer, lambda: warmer.stats()["warmed"] + warmer.stats()["failed"] == 2)
    assert rebuilds.done == [2]
    assert warmer.stats() == {"waiting": 0, "warmed": 1, "cached": 0, "skipped": 1, "failed": 1}
    assert warmer.schedule(3)  # room again


async def test_warm_ups_are_paced_one_at_a_time() -> None:
    # Rate 20/s: the third warm-up cannot start before ~0.1 s (two intervals) have passed.
    starts: list[float] = []

    async def rebuild(user_id: int) -> bool:
        starts.append(asyncio.get_running_loop().time())
        return True

    warmer = FeedWarmer(rebuild, rate=20)
    for user in (1, 2, 3):
        warmer.schedule(user)
    await _run_until(warmer, lambda: len(starts) == 3)
    assert starts[2] - starts[0] >= 0.09


async def test_a_feed_cached_meanwhile_is_not_rebuilt_and_costs_no_pause() -> None:
    # Rate 1/s: were the cached users paced, the three would take two seconds; the timeout is one.
    rebuilds = _Rebuilds(cached={1, 2})
    warmer = FeedWarmer(rebuilds, rate=1)
    for user in (1, 2, 3):
        warmer.schedule(user)
    await _run_until(warmer, lambda: warmer.stats()["warmed"] == 1, timeout=1.0)
    assert rebuilds.done == [3]
    assert warmer.stats()["cached"] == 2


def test_rate_zero_turns_warm_ups_off() -> None:
    warmer = FeedWarmer(_Rebuilds(), rate=0)
    assert not warmer.schedule(1)
    assert warmer.waiting == 0
