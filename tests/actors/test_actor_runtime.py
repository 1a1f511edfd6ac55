from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sn.actors.policy import RestartPolicy
from sn.actors.runtime import Actor, ActorRef, ActorStatus
from sn.actors.supervisor import Supervisor


class Recorder(Actor[Any]):
    """Records messages; raises on "boom"; shared log survives restarts."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(("start", id(self)))

    async def handle(self, message: Any) -> None:
        if message == "boom":
            raise RuntimeError("boom")
        self.log.append(message)

    async def on_stop(self) -> None:
        self.log.append(("stop", id(self)))


class Gated(Actor[int]):
    """Blocks in handle() until released, so tests control the interleaving."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.handled: list[int] = []

    async def handle(self, message: int) -> None:
        self.entered.set()
        await self.release.wait()
        self.handled.append(message)


def messages(log: list[Any]) -> list[Any]:
    return [item for item in log if not isinstance(item, tuple)]


async def test_actor_processes_messages_in_order_and_stops_cleanly() -> None:
    log: list[Any] = []
    ref: ActorRef[Any] = ActorRef(lambda: Recorder(log), name="rec")
    ref.start()
    assert all(ref.tell(i) for i in range(20))
    await ref.stop()  # drains the backlog before returning
    assert messages(log) == list(range(20))
    assert [item[0] for item in log if isinstance(item, tuple)] == ["start", "stop"]
    assert ref.status is ActorStatus.STOPPED
    assert ref.tell(99) is False  # stopped actors accept nothing


async def test_tell_on_a_full_mailbox_returns_false_without_blocking() -> None:
    actor = Gated()
    ref: ActorRef[int] = ActorRef(lambda: actor, name="gated", capacity=2)
    ref.start()
    assert ref.tell(1)
    await actor.entered.wait()  # 1 is in flight, the mailbox is empty again
    assert ref.tell(2)
    assert ref.tell(3)
    assert ref.tell(4) is False
    assert ref.mailbox.box.rejected == 1
    actor.release.set()
    await ref.stop()
    assert actor.handled == [1, 2, 3]


async def test_crash_restarts_a_fresh_instance_and_keeps_the_backlog() -> None:
    log: list[Any] = []
    instances: list[Recorder] = []

    def factory() -> Recorder:
        instances.append(Recorder(log))
        return instances[-1]

    async with Supervisor(RestartPolicy(max_restarts=3, window=60.0)) as sup:
        ref = sup.spawn(factory, name="rec")
        for message in ("a", "boom", "b", "c"):
            assert ref.tell(message)
        await ref.stop()
    assert messages(log) == ["a", "b", "c"]
    first, second = instances  # exactly one restart, with a fresh instance
    assert ref.actor is second
    # The crashed instance got on_stop before its replacement started.
    assert log.index(("stop", id(first))) < log.index(("start", id(second)))
    stats = sup.stats()
    assert (stats.crashes, stats.restarts, stats.failures) == (1, 1, 0)
    assert ref.status is ActorStatus.STOPPED


async def test_too_many_crashes_gives_up_and_reports_failure() -> None:
    failures: list[tuple[str, Exception]] = []
    sup = Supervisor(
        RestartPolicy(max_restarts=2, window=60.0),
        on_failure=lambda ref, exc: failures.append((ref.name, exc)),
    )
    log: list[Any] = []
    ref = sup.spawn(lambda: Recorder(log), name="flaky")
    for message in ("boom", "boom", "boom", "never"):
        assert ref.tell(message)
    await ref.wait()
    assert ref.status is ActorStatus.FAILED
    assert isinstance(ref.error, RuntimeError)
    assert "never" not in log  # backlog dropped once failed
    assert ref.tell("late") is False
    stats = sup.stats()
    assert (stats.crashes, stats.restarts, stats.failures) == (3, 2, 1)
    assert stats.recent_failures == ("flaky",)
    assert [name for name, _ in failures] == ["flaky"]
    assert "flaky" not in sup  # failed actors are forgotten, only counted
    await sup.stop()


async def test_restart_budget_refills_after_the_window() -> None:
    now = [0.0]
    sup = Supervisor(RestartPolicy(max_restarts=1, window=10.0), clock=lambda: now[0])
    log: list[Any] = []
    handled = asyncio.Event()

    class Signalling(Recorder):
        async def handle(self, message: Any) -> None:
            await super().handle(message)
            handled.set()

    ref = sup.spawn(lambda: Signalling(log), name="rec")
    ref.tell("boom")
    ref.tell("x")
    await handled.wait()  # "x" done, so the restart for the first boom happened
    now[0] = 11.0  # ...and has now left the window
    ref.tell("boom")
    ref.tell("y")
    await ref.stop()
    assert messages(log) == ["x", "y"]
    assert ref.status is ActorStatus.STOPPED
    assert sup.stats().restarts == 2


async def test_crash_in_on_start_is_handled_like_a_crash_in_handle() -> None:
    class BadStart(Recorder):
        async def on_start(self) -> None:
            raise ValueError("cannot start")

    sup = Supervisor(RestartPolicy(max_restarts=1, window=60.0))
    ref = sup.spawn(lambda: BadStart([]), name="bad")
    await ref.wait()
    assert ref.status is ActorStatus.FAILED
    assert isinstance(ref.error, ValueError)
    assert (sup.stats().crashes, sup.stats().restarts) == (2, 1)


async def test_stop_without_drain_finishes_in_flight_message_and_drops_backlog() -> None:
    actor = Gated()
    ref: ActorRef[int] = ActorRef(lambda: actor, name="gated")
    ref.start()
    for i in (1, 2, 3):
        ref.tell(i)
    await actor.entered.wait()
    stopping = asyncio.create_task(ref.stop(drain=False))
    await asyncio.sleep(0)
    assert not stopping.done()  # stop really waits for the in-flight message
    actor.release.set()
    await stopping
    assert actor.handled == [1]
    assert ref.status is ActorStatus.STOPPED


async def test_stop_cancels_a_stuck_actor_after_the_grace_period() -> None:
    actor = Gated()  # never released
    ref: ActorRef[int] = ActorRef(lambda: actor, name="stuck")
    ref.start()
    ref.tell(1)
    await actor.entered.wait()
    await ref.stop(grace_period=0.01)
    assert ref.status is ActorStatus.STOPPED
    assert actor.handled == []
    task = ref.task
    assert task is not None
    assert task.cancelled()


async def test_actor_can_stop_itself_without_deadlock() -> None:
    handled: list[int] = []

    class SelfStopper(Actor[int]):
        def __init__(self, ref: list[ActorRef[int]]) -> None:
            self.ref = ref

        async def handle(self, message: int) -> None:
            handled.append(message)
            if message == 2:
                await self.ref[0].stop()

    holder: list[ActorRef[int]] = []
    ref: ActorRef[int] = ActorRef(lambda: SelfStopper(holder), name="self")
    holder.append(ref)
    ref.start()
    for i in (1, 2, 3):
        ref.tell(i)
    assert ref.tell(4)  # still open: the actor has not run yet
    await asyncio.wait_for(ref.wait(), timeout=1.0)
    assert handled == [1, 2, 3, 4]  # stop(drain=True) from inside flushes the backlog
    assert ref.status is ActorStatus.STOPPED


async def test_supervisor_rejects_duplicate_names_and_stops_everything_on_exit() -> None:
    log: list[Any] = []
    async with Supervisor() as sup:
        a = sup.spawn(lambda: Recorder(log), name="a")
        b = sup.spawn(lambda: Recorder(log), name="b")
        with pytest.raises(ValueError, match="already running"):
            sup.spawn(lambda: Recorder(log), name="a")
        assert len(sup) == 2
        assert sup.get("a") is a
        a.tell("from a")
        b.tell("from b")
    assert sorted(messages(log)) == ["from a", "from b"]
    assert a.status is b.status is ActorStatus.STOPPED
    assert len(sup) == 0
    assert sup.stats().running == 0


async def test_start_twice_is_an_error() -> None:
    ref: ActorRef[Any] = ActorRef(lambda: Recorder([]), name="twice")
    ref.start()
    with pytest.raises(RuntimeError, match="already started"):
        ref.start()
    await ref.stop()
    assert ref.status is ActorStatus.STOPPED


async def test_stop_before_start_needs_no_task() -> None:
    ref: ActorRef[Any] = ActorRef(lambda: Recorder([]), name="never")
    await ref.stop()
    assert ref.status is ActorStatus.STOPPED
    assert ref.tell(1) is False


async def test_unsupervised_actor_fails_on_first_crash() -> None:
    log: list[Any] = []
    exits: list[ActorStatus] = []
    ref: ActorRef[Any] = ActorRef(lambda: Recorder(log), name="solo", on_exit=lambda r: exits.append(r.status))
    ref.start()
    ref.tell("boom")
    ref.tell("after")
    await ref.wait()
    assert ref.status is ActorStatus.FAILED
    assert exits == [ActorStatus.FAILED]
    assert "after" not in log
