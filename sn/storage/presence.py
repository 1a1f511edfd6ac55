"""Presence: which workers' streams hold each user's sockets (Zulip's per-process queues, in Redis).

``sn:presence:{user}`` is a sorted set: member = a worker's stream key, score = when that entry
expires. Workers refresh their users' entries on a heartbeat; a crashed worker stops refreshing
and its entries are ignored once expired (and swept on the next write), so a dead worker stops
receiving routed events within one TTL. Stream keys include the node id and the worker name,
so pods and workers never collide.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from sn.storage.redis_mux import MuxRedis

_KEY = "sn:presence:{}"

# KEYS: presence keys; ARGV[1]: now. Returns, per key, a list of live stream keys.
_LOOKUP = """
local now = tonumber(ARGV[1])
local result = {}
for i, key in ipairs(KEYS) do
  result[i] = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')
end
return result
"""

# KEYS: presence keys; ARGV: stream, expires_at, key_ttl. One call refreshes a whole worker.
_REFRESH = """
local stream, expires, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, expires, stream)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', expires - 2 * ttl)
  redis.call('EXPIRE', key, ttl * 2)
end
return #KEYS
"""


def presence_key(user_id: int) -> str:
    return _KEY.format(user_id)


class Presence:
    CHUNK = 500

    def __init__(self, redis: MuxRedis, *, ttl_seconds: float = 30.0) -> None:
        # Every socket's arrival and departure, and every fan-out's lookup, is a call here: on the
        # multiplexed client a reconnect storm's thousands of calls pipeline on one connection.
        self._redis = redis
        self.ttl = ttl_seconds
        self._lookup = redis.script(_LOOKUP)
        self._refresh = redis.script(_REFRESH)

    async def refresh(self, users: Iterable[int], stream: str) -> int:
        keys = [presence_key(u) for u in users]
        expires = time.time() + self.ttl
        for start in range(0, len(keys), self.CHUNK):
            await self._refresh(keys=keys[start : start + self.CHUNK], args=[stream, expires, int(self.ttl)])
        return len(keys)

    async def leave(self, user_id: int, stream: str) -> None:
        await self._redis.execute("ZREM", presence_key(user_id), stream)

    async def locate(self, users: Sequence[int]) -> dict[str, list[int]]:
        """Group the online users among `users` by the stream of each worker holding a socket of theirs."""
        by_stream: dict[str, list[int]] = defaultdict(list)
        now = time.time()
        for start in range(0, len(users), self.CHUNK):
            chunk = users[start : start + self.CHUNK]
            streams = await self._lookup(keys=[presence_key(u) for u in chunk], args=[now])
            for user, found in zip(chunk, streams, strict=True):
                for stream in found:
                    by_stream[stream.decode() if isinstance(stream, bytes) else stream].append(user)
        return dict(by_stream)
