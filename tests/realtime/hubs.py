"""A real Hub on the test Redis, with a private worker name so tests never share a stream."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from sn.realtime.eventlog import EventLog
from sn.realtime.hub import Hub
from sn.realtime.presence import Presence
from sn.storage.redis_mux import MuxRedis


def make_hub(aredis: Redis, amux: MuxRedis) -> Hub:
    async def followed_among(user_id: int, candidates: set[int]) -> set[int]:
        return set()

    return Hub(
        aredis,
        Presence(amux),
        EventLog(amux),
        node_id="test",
        worker_name=uuid.uuid4().hex[:8],
        followed_among=followed_among,
    )
