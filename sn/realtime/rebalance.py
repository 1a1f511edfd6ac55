"""Handing sockets back to the balancer while this worker holds more than its share.

A balancer spreads *new* connections. WebSockets live for hours, so a node that comes back (a
restart, a crash, a scale-out) gets none of the clients that moved away while it was gone, and the
nodes that took them carry every fan-out to them alone for as long as those sockets live. Each
worker compares its count with every live worker's (the stats all workers publish each second,
sn.realtime.stats) and, while it is over the mean by more than the slack, closes a paced few of its
sockets with 1012 (Service Restart: "reconnect"). Their clients reconnect through the balancer with
``?since=`` and miss nothing: the replay covers the gap, as it does for any dropped socket.

With a round-robin balancer half of the handed-back clients land on this node again (HAProxy here
sends WebSockets to the node with the fewest, deploy/haproxy/haproxy.cfg); the next
rounds see the counts that resulted, so the spread converges without any worker knowing the
balancer's policy. A worker that started less than ``warmup`` seconds ago does not count yet (its
node may not be in the balancer's rotation: clients handed back would all come straight back), nor
does one whose stats stopped coming (its node was killed: the same, until its entry expires).

An imbalance must also last: a worker sheds only after `hold` heartbeats in a row over the line,
so the passing lead one worker takes while thousands of clients connect at once is left alone.

Plain code: `shed_count` decides one round, `Rebalancer` keeps the rounds' state; the hub closes
the sockets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sn.realtime.stats import WorkerStats

__all__ = ["CLOSE_REBALANCE", "REBALANCE_REASON", "RebalancePolicy", "Rebalancer", "excess", "shed_count"]

CLOSE_REBALANCE = 1012  # RFC 6455 registry: Service Restart, the client should reconnect
REBALANCE_REASON = "rebalancing: reconnect with since"


@dataclass(frozen=True)
class RebalancePolicy:
    rate: float  # most sockets one worker hands back per second; 0: never
    slack: float = 0.25  # tolerated share over the mean
    min_excess: int = 100  # sockets over the mean worth moving at all
    warmup: float = 5.0  # seconds before a new worker counts as one to balance with
    hold: int = 3  # heartbeats in a row over the line before any socket is handed back
    # A worker whose stats are older than this (3 missed heartbeats) is likely dead: not one to hand
    # sockets to. Its entry lives STATS_TTL_SECONDS (15 s) for /stats; counted that long, a killed
    # node's last counts pulled the mean down and the survivors shed sockets that could only come
    # back to them, ~50 a second for 15 s after a node loss (a topology run's clients back in 16.5 s).
    fresh: float = 3.0


def excess(own: str, workers: Sequence[WorkerStats], *, now: float, policy: RebalancePolicy) -> float:
    """Sockets worker `own` holds over the mean, when over the line (slack and minimum); else 0.

    The mean is over the live workers that are warmed up (and `own`); sockets already closing are
    not in the counts the hub passes on, so a round never hands back the same socket twice.
    """
    mine = next((w for w in workers if w.worker == own), None)
    if policy.rate <= 0 or mine is None:
        return 0.0
    counted = [
        w
        for w in workers
        if w.worker == own or (now - w.started_at >= policy.warmup and now - w.updated_at <= policy.fresh)
    ]
    if len(counted) < 2:
        return 0.0
    mean = sum(w.connections for w in counted) / len(counted)
    over = mine.connections - mean
    if mine.connections <= mean * (1 + policy.slack) or over < policy.min_excess:
        return 0.0
    return over


def shed_count(own: str, workers: Sequence[WorkerStats], *, now: float, elapsed: float, policy: RebalancePolicy) -> int:
    """How many of worker `own`'s sockets to hand back, `elapsed` seconds after its last round:
    the excess over the mean, at most the rate's worth."""
    over = excess(own, workers, now=now, policy=policy)
    return min(math.ceil(over), math.floor(policy.rate * elapsed)) if over else 0


class Rebalancer:
    """One worker's rounds: the time since the last one (the rate's budget) and how long it has been over."""

    def __init__(self, policy: RebalancePolicy, now: float) -> None:
        self.policy = policy
        self._last_round = now
        self._rounds_over = 0

    def decide(self, own: str, workers: Sequence[WorkerStats], *, now: float, wall: float) -> int:
        """`now` is monotonic (the rate's clock), `wall` the stats' clock (time.time())."""
        elapsed, self._last_round = min(now - self._last_round, 2.0), now
        over = excess(own, workers, now=wall, policy=self.policy)
        self._rounds_over = self._rounds_over + 1 if over else 0
        if self._rounds_over < self.policy.hold:
            return 0
        return shed_count(own, workers, now=wall, elapsed=elapsed, policy=self.policy)
