"""Handing sockets back to the balancer while this worker holds more than its share.

A balancer spreads *new* connections. WebSockets live for hours, so a node that comes back (a
restart, a crash, a scale-out) gets none of the clients that moved away while it was gone, and the
nodes that took them carry every fan-out to them alone for as long as those sockets live. Each
worker compares its count with every live worker's (the stats all workers publish each second,
sn.realtime.stats) and, while it is over the mean by more than the slack, closes a paced few of its
sockets with 1012 (Service Restart: "reconnect"). Their clients reconnect through the balancer with
``?since=`` and miss nothing: the replay covers the gap, as it does for any dropped socket.

With a round-robin balancer half of the handed-back clients land on this node again; the next
rounds see the counts that resulted, so the spread converges without any worker knowing the
balancer's policy. A worker that started less than ``warmup`` seconds ago does not count yet (its
node may not be in the balancer's rotation: clients handed back would all come straight back).

Plain code: `shed_count` decides, the hub closes the sockets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sn.realtime.stats import WorkerStats

__all__ = ["CLOSE_REBALANCE", "REBALANCE_REASON", "RebalancePolicy", "shed_count"]

CLOSE_REBALANCE = 1012  # RFC 6455 registry: Service Restart, the client should reconnect
REBALANCE_REASON = "rebalancing: reconnect with since"


@dataclass(frozen=True)
class RebalancePolicy:
    rate: float  # most sockets one worker hands back per second; 0: never
    slack: float = 0.25  # tolerated share over the mean
    min_excess: int = 100  # sockets over the mean worth moving at all
    warmup: float = 10.0  # seconds before a new worker counts as one to balance with


def shed_count(own: str, workers: Sequence[WorkerStats], *, now: float, elapsed: float, policy: RebalancePolicy) -> int:
    """How many of worker `own`'s sockets to hand back now, `elapsed` seconds after its last round.

    The mean is over the live workers that are warmed up (and `own`); sockets already closing are
    not in the counts the hub passes on, so a round never hands back the same socket twice.
    """
    if policy.rate <= 0:
        return 0
    mine = next((w for w in workers if w.worker == own), None)
    if mine is None:
        return 0
    counted = [w for w in workers if w.worker == own or now - w.started_at >= policy.warmup]
    if len(counted) < 2:
        return 0
    mean = sum(w.connections for w in counted) / len(counted)
    excess = mine.connections - mean
    if mine.connections <= mean * (1 + policy.slack) or excess < policy.min_excess:
        return 0
    return min(math.ceil(excess), math.floor(policy.rate * elapsed))
