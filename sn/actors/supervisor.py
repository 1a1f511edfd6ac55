"""Supervisor: owns a set of actors, restarts crashed ones within a rate limit.

The supervisor is the only place that knows about time and restart history;
``ActorRef`` just asks it "restart or give up?" via the crash callback and
``RestartTracker`` answers with pure arithmetic.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from sn.actors.policy import RestartDecision, RestartPolicy, RestartTracker
from sn.actors.runtime import Actor, ActorRef, ActorStatus

__all__ = ["FailureCallback", "Supervisor", "SupervisorStats"]

M = TypeVar("M")

FailureCallback = Callable[[ActorRef[Any], Exception], None]


class SupervisorStats(msgspec.Struct, frozen=True):
    """Snapshot for /metrics and health checks; counters are cumulative."""

    running: int
    crashes: int
    restarts: int
    failures: int
    recent_failures: tuple[str, ...]


class Supervisor:
    """Spawn, restart and stop actors.  Use as ``async with Supervisor() as sup:``."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_failure: FailureCallback | None = None,
        keep_failed: int = 100,
    ) -> None:
        self.policy = policy or RestartPolicy()
        # Monotonic: restart windows must not jump with NTP adjustments.
        self._clock = clock
        self._on_failure = on_failure
        self._actors: dict[str, ActorRef[Any]] = {}
        self._trackers: dict[str, RestartTracker] = {}
        self._crashes = 0
        self._restarts = 0
        self._failures = 0
        # Bounded: with one actor per connection, an unbounded list of failed
        # names would be a slow memory leak under a persistent fault.
        self._recent_failures: deque[str] = deque(maxlen=keep_failed)

    def __len__(self) -> int:
        return len(self._actors)

    def __contains__(self, name: object) -> bool:
        return name in self._actors

    def __iter__(self) -> Iterator[ActorRef[Any]]:
        return iter(list(self._actors.values()))

    def get(self, name: str) -> ActorRef[Any] | None:
        return self._actors.get(name)

    def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str,
        capacity: int = 1024,
        batch_size: int = 64,
        policy: RestartPolicy | None = None,
    ) -> ActorRef[M]:
        """Create and start a supervised actor; names must be unique among live actors."""
        if name in self._actors:
            raise ValueError(f"an actor named {name!r} is already running")
        ref: ActorRef[M] = ActorRef(
            factory,
            name=name,
            capacity=capacity,
            batch_size=batch_size,
            on_crash=self._handle_crash,
            on_exit=self._handle_exit,
        )
        self._actors[name] = ref
        self._trackers[name] = RestartTracker(policy or self.policy)
        ref.start()
        return ref

    def stats(self) -> SupervisorStats:
        return SupervisorStats(
            running=len(self._actors),
            crashes=self._crashes,
            restarts=self._restarts,
            failures=self._failures,
            recent_failures=tuple(self._recent_failures),
        )

    def restarts_of(self, name: str) -> int:
        """Restarts of a live actor (0 if unknown)."""
        tracker = self._trackers.get(name)
        return tracker.restarts if tracker is not None else 0

    async def stop(self, *, drain: bool = True, grace_period: float | None = None) -> None:
        """Stop every actor concurrently and wait for all of them."""
        refs = list(self._actors.values())
        await asyncio.gather(*(ref.stop(drain=drain, grace_period=grace_period) for ref in refs))

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------- callbacks

    def _handle_crash(self, ref: ActorRef[Any], exc: Exception) -> RestartDecision:
        self._crashes += 1
        tracker = self._trackers[ref.name]
        decision = tracker.on_crash(self._clock())
        if decision is RestartDecision.RESTART:
            self._restarts += 1
        return decision

    def _handle_exit(self, ref: ActorRef[Any]) -> None:
        # Identity check: never drop a different ref that happens to share the name.
        if self._actors.get(ref.name) is ref:
            del self._actors[ref.name]
            self._trackers.pop(ref.name, None)
        if ref.status is ActorStatus.FAILED:
            self._failures += 1
            self._recent_failures.append(ref.name)
            if self._on_failure is not None and ref.error is not None:
                self._on_failure(ref, ref.error)
