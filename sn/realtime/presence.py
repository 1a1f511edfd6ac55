"""Presence: which workers' streams hold each user's sockets (Zulip's per-process queues, in Redis).

``sn:presence:{user}`` is a sorted set: member = a worker's stream key, score = when that entry
expires. Workers refresh their users' entries on a heartbeat; a crashed worker stops refreshing
and its entries are ignored once expired (and swept on the next write), so a dead worker stops
receiving routed events within one TTL. Stream keys include the node id and the worker name,
so pods and workers never collide.

Each worker also keeps ``sn:presence:online:{stream}``, the set of users it holds, written by the
same calls and expiring with the worker's heartbeats. A celebrity fan-out intersects that set
with the cached follower set inside Redis (`online_members`): the cost follows how many users are
online on each worker, not how many followers the author has, where looking up 100k followers'
presence keys held Redis for ~330 ms and a worker's loop for ~180 ms per celebrity post.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence

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

# KEYS[1]: the worker's online set, KEYS[2]: the registry of workers with one, KEYS[3..]: presence
# keys; ARGV: stream, expires_at, key_ttl, then the users (in KEYS order).
_REFRESH = """
local stream, expires, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 3, #KEYS do
  local key = KEYS[i]
  redis.call('ZADD', key, expires, stream)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', expires - 2 * ttl)
  redis.call('EXPIRE', key, ttl * 2)
end
if #KEYS > 2 then redis.call('SADD', KEYS[1], unpack(ARGV, 4)) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[2], stream)
return #KEYS - 2
"""

# KEYS[1]: the worker's online set, KEYS[2..]: the users' presence keys; ARGV: stream, then the
# users (in KEYS order).
_LEAVE = """
for i = 2, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('SREM', KEYS[1], unpack(ARGV, 2))
return #KEYS - 1
"""

# KEYS[1]: the registry of workers' streams; ARGV[1]: the online sets' key prefix -> the streams
# whose online set exists (a dead worker's expired: its entry is removed).
_LIVE_STREAMS = """
local live = {}
for _, stream in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. stream) == 1 then
    live[#live + 1] = stream
  else
    redis.call('SREM', KEYS[1], stream)
  end
end
return live
"""

# KEYS[1]: a set of user ids (an author's cached followers), KEYS[2]: a worker's online set;
# ARGV: SSCAN cursor, page size -> {next cursor, the page's members that are in KEYS[1]}, or false
# when KEYS[1] is not there (not cached). A page at a time: one SINTER of a 5k online set with a
# 100k follower set held Redis for 6 ms, two workers' in one script for 16 ms.
_ONLINE_PAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local page = redis.call('SSCAN', KEYS[2], ARGV[1], 'COUNT', ARGV[2])
local found = {}
for _, member in ipairs(page[2]) do
  if redis.call('SISMEMBER', KEYS[1], member) == 1 then found[#found + 1] = member end
end
return {page[1], found}
"""


# KEYS[1]: a worker's online set, KEYS[2..]: other workers' online sets; ARGV: SSCAN cursor, page
# size -> {next cursor, the page's members also in one of KEYS[2..]}. A page at a time, like
# _ONLINE_PAGE: counting distinct users must not hold Redis for a whole set.
_SHARED_PAGE = """
local page = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local shared = {}
for _, member in ipairs(page[2]) do
  for i = 2, #KEYS do
    if redis.call('SISMEMBER', KEYS[i], member) == 1 then
      shared[#shared + 1] = member
      break
    end
  end
end
return {page[1], shared}
"""


def presence_key(user_id: int) -> str:
    return _KEY.format(user_id)


ONLINE_PREFIX = "sn:presence:online:"
# The streams of the workers that keep an online set, written with it (so a user announced on a
# worker is always findable through this registry). A dead worker's entry goes when a reader
# finds its online set expired.
STREAMS_KEY = "sn:presence:streams"


def online_key(stream: str) -> str:
    return ONLINE_PREFIX + stream


class Presence:
    CHUNK = 500
    # Users per refresh call: ~9 us of Redis time each, so a call holds Redis for about a
    # millisecond rather than the ~5 ms of a 500-user call that other commands queued behind.
    REFRESH_CHUNK = 100

    def __init__(self, redis: MuxRedis, *, ttl_seconds: float = 30.0) -> None:
        # Every socket's arrival and departure, and every fan-out's lookup, is a call here: on the
        # multiplexed client a reconnect storm's thousands of calls pipeline on one connection.
        self._redis = redis
        self.ttl = ttl_seconds
        self._lookup = redis.script(_LOOKUP)
        self._refresh = redis.script(_REFRESH)
        self._leave = redis.script(_LEAVE)
        self._online_page = redis.script(_ONLINE_PAGE)
        self._live_streams = redis.script(_LIVE_STREAMS)
        self._shared_page = redis.script(_SHARED_PAGE)

    async def refresh(self, users: Iterable[int], stream: str) -> int:
        """Mark ``users`` present on ``stream`` for another ttl (and keep the worker's online set)."""
        ids = list(users)
        expires = time.time() + self.ttl
        online = online_key(stream)
        for start in range(0, len(ids), self.REFRESH_CHUNK):
            chunk = ids[start : start + self.REFRESH_CHUNK]
            await self._refresh(
                keys=[online, STREAMS_KEY, *(presence_key(u) for u in chunk)],
                args=[stream, expires, int(self.ttl), *chunk],
            )
        return len(ids)

    async def leave(self, users: Iterable[int], stream: str) -> int:
        """``users`` no longer have sockets on ``stream``."""
        ids = list(users)
        online = online_key(stream)
        for start in range(0, len(ids), self.REFRESH_CHUNK):
            chunk = ids[start : start + self.REFRESH_CHUNK]
            await self._leave(keys=[online, *(presence_key(u) for u in chunk)], args=[stream, *chunk])
        return len(ids)

    async def forget_worker(self, stream: str) -> None:
        """Drop ``stream``'s online set: a worker starting under the name of one that died (same
        node and worker name) must not inherit its users."""
        await asyncio.gather(
            self._redis.execute("DEL", online_key(stream)), self._redis.execute("SREM", STREAMS_KEY, stream)
        )

    async def streams(self) -> list[str]:
        """The streams of the workers holding users now (dead workers' entries are swept)."""
        members = await self._live_streams(keys=[STREAMS_KEY], args=[ONLINE_PREFIX])
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def online_users(self, stream: str) -> AsyncIterator[list[int]]:
        """The users online on ``stream``, a page at a time (SSCAN: no long command)."""
        seen: set[int] = set()  # (SSCAN may return a member twice)
        cursor: bytes | str = "0"
        while True:
            cursor, page = await self._redis.execute("SSCAN", online_key(stream), cursor, "COUNT", self.CHUNK)
            users = [user for user in map(int, page) if user not in seen]
            seen.update(users)
            if users:
                yield users
            if cursor in (b"0", "0"):
                return

    async def online_members(self, set_key: str, streams: Sequence[str]) -> dict[str, list[int]] | None:
        """The members of the id set at ``set_key`` online on each of ``streams`` (workers with none
        are left out), or None when ``set_key`` does not exist (or stops existing meanwhile)."""
        if not await self._redis.execute("EXISTS", set_key):
            return None
        found: dict[str, list[int]] = {}
        for stream in streams:
            members: set[int] = set()  # (SSCAN may return a member twice)
            cursor: bytes | str = "0"
            while True:
                page = await self._online_page(keys=[set_key, online_key(stream)], args=[cursor, self.CHUNK])
                if page is None:
                    return None
                cursor, matched = page
                members.update(int(member) for member in matched)
                if cursor in (b"0", "0"):
                    break
            if members:
                found[stream] = sorted(members)
        return found

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

    async def count_online(self, streams: Sequence[str]) -> int:
        """Distinct users online on ``streams``: one user with tabs on two workers counts once.

        The sum of the online sets' sizes, less each set's members already in an earlier set
        (users on several workers are few, so only those come back to Python)."""
        total = 0
        for index, stream in enumerate(streams):
            total += int(await self._redis.execute("SCARD", online_key(stream)))
            earlier = [online_key(s) for s in streams[:index]]
            if not earlier:
                continue
            shared: set[int] = set()  # (SSCAN may return a member twice)
            cursor: bytes | str = "0"
            while True:
                cursor, members = await self._shared_page(
                    keys=[online_key(stream), *earlier], args=[cursor, self.CHUNK]
                )
                shared.update(int(member) for member in members)
                if cursor in (b"0", "0"):
                    break
            total -= len(shared)
        return total
