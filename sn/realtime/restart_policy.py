"""Restart-intensity policy (Erlang's "max R restarts in T seconds"), pure.

Restarting a crashed loop (``SupervisedLoop``) fixes transient faults (a dropped
Redis connection, one poisoned message).  Restarting it forever turns a permanent
fault into a hot loop that burns CPU and floods logs, so past a rate limit we
give up and report the loop as failed for a human (or a health check) to see.

Kept apart from the loop's asyncio code so the decision is testable with plain
numbers instead of sleeps.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RestartDecision", "RestartPolicy", "RestartTracker"]


class RestartDecision(enum.Enum):
    RESTART = "restart"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Allow at most ``max_restarts`` restarts within any ``window`` seconds."""

    max_restarts: int = 3
    window: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.window <= 0:
            raise ValueError(f"window must be > 0, got {self.window}")

    def recent(self, restart_times: Sequence[float], now: float) -> int:
        """How many of ``restart_times`` fall inside the window ending at ``now``."""
        horizon = now - self.window
        return sum(1 for t in restart_times if t > horizon)

    def decide(self, restart_times: Sequence[float], now: float) -> RestartDecision:
        """Given earlier restart timestamps, may an actor that crashed at ``now`` restart?"""
        if self.recent(restart_times, now) < self.max_restarts:
            return RestartDecision.RESTART
        return RestartDecision.GIVE_UP


class RestartTracker:
    """Remembers one actor's recent restarts and applies a policy to each crash."""

    __slots__ = ("_times", "crashes", "policy", "restarts")

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        # Only timestamps inside the window matter, and there are at most
        # max_restarts of those; pruning keeps memory O(max_restarts).
        self._times: deque[float] = deque()
        self.crashes = 0
        self.restarts = 0

    @property
    def restart_times(self) -> tuple[float, ...]:
        return tuple(self._times)

    def on_crash(self, now: float) -> RestartDecision:
        """Record a crash at ``now`` and decide; a RESTART is counted as done."""
        self.crashes += 1
        horizon = now - self.policy.window
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        decision = self.policy.decide(self._times, now)
        if decision is RestartDecision.RESTART:
            self._times.append(now)
            self.restarts += 1
        return decision
