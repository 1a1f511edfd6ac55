"""Every worker's real-time counters, as plain numbers in Redis: what /stats reads.

Each hub publishes a ``WorkerStats`` once a second under ``WORKERS_KEY``; a reader (``/stats``,
a connection's ``get_stats``) needs only Redis and this module, not a hub: the numbers are the
interface, so monitoring never reaches into another worker's objects (nor its own).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

__all__ = [
    "STATS_TTL_SECONDS",
    "WORKERS_KEY",
    "WorkerStats",
    "cluster_stats",
    "publish",
    "websocket_summary",
    "withdraw",
]

WORKERS_KEY = "sn:rt:workers"
# A worker that has not published for this long is dead (a SIGKILL leaves its entry behind).
STATS_TTL_SECONDS = 15.0


class WorkerStats(msgspec.Struct):
    worker: str
    node: str
    pid: int
    connections: int
    users: int
    delivered: int
    slow_consumer_closes: int
    accepted: int
    updated_at: float
    extra: dict[str, Any] = {}
    started_at: float = 0.0  # (0 in an entry written before the field existed: long started)
    rebalance_closes: int = 0  # sockets handed back to the balancer (sn.realtime.rebalance)


async def publish(redis: Redis, stats: WorkerStats) -> None:
    await redis.hset(WORKERS_KEY, stats.worker, msgspec.json.encode(stats))


async def withdraw(redis: Redis, worker: str) -> None:
    await redis.hdel(WORKERS_KEY, worker)


async def cluster_stats(redis: Redis) -> list[WorkerStats]:
    """Every live worker's last published stats (entries older than the TTL are dead workers)."""
    raw = await redis.hgetall(WORKERS_KEY)
    now = time.time()
    alive = []
    for field, value in raw.items():
        stats = msgspec.json.decode(value, type=WorkerStats)
        if now - stats.updated_at <= STATS_TTL_SECONDS:
            alive.append(stats)
        else:
            await redis.hdel(WORKERS_KEY, field)
    return sorted(alive, key=lambda s: s.worker)


def websocket_summary(workers: Sequence[WorkerStats], active_users: int) -> dict[str, Any]:
    """The `websocket` part of /stats. ``active_users`` is counted from presence, not added up from
    the workers: a user with tabs on two workers is one user."""
    return {
        "total_connections": sum(w.connections for w in workers),
        "active_users": active_users,
        "connections_per_worker": {w.worker: w.connections for w in workers},
        "messages_delivered": sum(w.delivered for w in workers),
        "slow_consumer_closes": sum(w.slow_consumer_closes for w in workers),
        "rebalance_closes": sum(w.rebalance_closes for w in workers),
    }
