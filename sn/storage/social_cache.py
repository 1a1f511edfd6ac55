"""Follower/following lists and follower counts cached in Redis for the fan-out and feed reads.

A fan-out must not re-read "who follows X" from the database for every post, and a feed read
must know which of the user's followees are celebrities without a query. Sets carry a "0"
member so an empty list is still a cached answer. Counts live in one sorted set
``sn:follower_counts`` so "is X a celebrity" is one ZSCORE whatever the current threshold is
(the threshold can change at run time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from redis.asyncio import Redis

from sn.storage.friends import FriendRepository
from sn.storage.redis_mux import MuxRedis

log = logging.getLogger("sn.storage.social_cache")

COUNTS_KEY = "sn:follower_counts"
_STAGING_TTL = 300  # seconds: longer than any load of a follower list
_GENERATION_TTL = 86_400  # a generation only has to outlive the loads that started before it
_FOLLOWERS = "sn:followers:{}"
FOLLOWING_PREFIX = "sn:following:"
_FOLLOWING = FOLLOWING_PREFIX + "{}"
_EMPTY = "0"

# KEYS[1] following set, KEYS[2] counts; ARGV[1] threshold -> followees at or above it, or
# false when the following set is not cached.
_CELEBRITIES_FOLLOWED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if m ~= '0' then
    local s = redis.call('ZSCORE', KEYS[2], m)
    if s and tonumber(s) >= tonumber(ARGV[1]) then out[#out + 1] = m end
  end
end
return out
"""


# KEYS[1] the reader's following set, KEYS[2..] the candidates' follower sets; ARGV[1] the
# reader, ARGV[2..] the candidates -> the candidates the reader follows, or false when neither
# the reader's list nor every candidate's is cached. Follower sets of authors who just posted
# are there (their fan-out cached them), so a reconnect storm's replays rarely reach the database.
_FOLLOWED_AMONG = """
local out = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 2, #ARGV do
    if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then out[#out + 1] = ARGV[i] end
  end
  return out
end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return false end
  if redis.call('SISMEMBER', KEYS[i], ARGV[1]) == 1 then out[#out + 1] = ARGV[i] end
end
return out
"""


# KEYS[1] list, KEYS[2] its generation; ARGV[1] generation the load started from ('' = none),
# ARGV[2] ttl, ARGV[3..] members. Stores the list only if no change happened since.
_STORE_IF_CURRENT = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS[1] a list's generation, KEYS[2] the counts; ARGV[1] the generation the load started from,
# ARGV[2] the author, ARGV[3] the count. A load's count is written only if no follow change came
# since (that change recounted, and a late write of the older count would undo it).
_COUNT_IF_CURRENT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

# KEYS[1] list, KEYS[2] its generation, KEYS[3] the filled staging set; ARGV[1] generation, ARGV[2] ttl.
_SWAP_IF_CURRENT = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SADD', KEYS[3], '0')
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
redis.call('RENAME', KEYS[3], KEYS[1])
return 1
"""


class SocialCache:
    CHUNK = 1000  # members per Redis command when a list is big

    def __init__(self, redis: Redis, friends: FriendRepository, *, reads: MuxRedis, ttl_seconds: int = 3600) -> None:
        self._redis = redis
        # Cached-list reads (every reconnect with `since`, every fan-out) and the scripts run on
        # every cache miss of a list are on the multiplexed client.
        self._reads = reads
        self._friends = friends
        self._ttl = ttl_seconds
        self._celebrities_followed = redis.register_script(_CELEBRITIES_FOLLOWED)
        self._store = reads.script(_STORE_IF_CURRENT)
        self._swap = reads.script(_SWAP_IF_CURRENT)
        self._followed_among = reads.script(_FOLLOWED_AMONG)
        self._count_if_current = reads.script(_COUNT_IF_CURRENT)

    async def _cached_list(
        self, key: str, load: Callable[[], Awaitable[list[int]]], *, pause: float = 0.0
    ) -> tuple[list[int], str | None]:
        """The cached id set at `key`, loading and caching it on a miss; also, when it was loaded,
        the generation the load started from (None: it came from the cache).

        A follow or unfollow while the list is being loaded would otherwise be undone: the loader
        read the database before the change, and writing that list after the change's
        invalidation would keep it stale for the whole TTL. Every change bumps `<key>:gen`; the
        load is stored (by a script, atomically) only if the generation it started from is still
        current, and otherwise answered once without being cached.
        """
        members = await self._read_set(key)
        if members:
            return [int(m) for m in members if m != b"0"], None
        generation_key = f"{key}:gen"
        raw_generation = await self._reads.get(generation_key)
        generation = raw_generation.decode() if isinstance(raw_generation, bytes) else ""
        loaded = await load()
        if len(loaded) <= self.CHUNK:
            await self._store(keys=[key, generation_key], args=[generation, self._ttl, _EMPTY, *loaded])
            return loaded, generation
        # A celebrity's list: one 100k-member SADD (in MULTI) held Redis for ~150 ms, stalling every
        # other command of every worker. Fill a private key in small commands, then swap it in.
        staging = f"{key}:loading:{secrets.token_hex(4)}"
        swapped = False
        try:
            for start in range(0, len(loaded), self.CHUNK):
                if start and pause:
                    await asyncio.sleep(pause / 10)
                chunk = loaded[start : start + self.CHUNK]
                # The EXPIRE: a load that dies half-way leaves nothing behind. Both in one write
                # on the multiplexed client (a redis-py pipeline per chunk cost ~3 ms of CPU).
                await self._reads.execute_many([("SADD", staging, *chunk), ("EXPIRE", staging, _STAGING_TTL)])
            swapped = bool(await self._swap(keys=[key, generation_key, staging], args=[generation, self._ttl]))
        finally:
            if not swapped:
                with contextlib.suppress(Exception):
                    await self._redis.delete(staging)
        return loaded, generation

    async def _read_set(self, key: str) -> list[bytes]:
        """SMEMBERS, but a big set is read in SSCAN pages so Redis never serialises it in one reply."""
        size = int(await self._reads.execute("SCARD", key))
        if size <= self.CHUNK:
            return list(await self._reads.execute("SMEMBERS", key))
        members: list[bytes] = []
        cursor = b"0"
        while True:
            cursor, page = await self._reads.execute("SSCAN", key, cursor, "COUNT", self.CHUNK)
            members.extend(page)
            if cursor == b"0":
                break
        # SSCAN may return a member twice (a rehash during the scan). These sets are only ever
        # replaced or deleted whole, never edited, so a count that no longer matches means the key
        # changed under the scan (an invalidation, a reload): read it in one reply instead, or
        # report a miss if it is gone, rather than return part of a list.
        unique = list(dict.fromkeys(members))
        if len(unique) == size and int(await self._reads.execute("SCARD", key)) == size:
            return unique
        return list(await self._reads.execute("SMEMBERS", key))

    @staticmethod
    def followers_key(author_id: int) -> str:
        """Where the author's follower set is cached (with a "0" member), for intersections in Redis."""
        return _FOLLOWERS.format(author_id)

    async def followers(self, author_id: int) -> list[int]:
        followers, _ = await self._followers(author_id, pause=0.0)
        return followers

    async def followers_among_uncached(self, author_id: int, candidates: Sequence[int]) -> list[int]:
        """Which of ``candidates`` follow the author, asked of the database (the list is not cached)."""
        return await self._friends.followers_among(author_id, candidates)

    async def warm_followers(self, author_id: int, *, pause: float = 0.05) -> None:
        """Load and cache the author's follower list in the background, spread out so that it
        does not compete with requests (a celebrity's 100k rows and 100 Redis writes)."""
        _, loaded = await self._followers(author_id, pause=pause)
        if loaded and not await self._reads.execute("EXISTS", _FOLLOWERS.format(author_id)):
            # A follow change during the load voided it; the author's next post tries again.
            log.info("follower list of %d changed while it was loaded: not cached", author_id)

    async def _followers(self, author_id: int, *, pause: float) -> tuple[list[int], bool]:
        """The follower list, cached or loaded (pages ``pause`` apart); also whether it was loaded.
        A load's count comes for free, kept unless a follow change came since."""
        key = _FOLLOWERS.format(author_id)
        followers, generation = await self._cached_list(
            key, lambda: self._friends.followers(author_id, pause=pause), pause=pause
        )
        if generation is None:
            return followers, False
        await self._count_if_current(keys=[f"{key}:gen", COUNTS_KEY], args=[generation, str(author_id), len(followers)])
        return followers, True

    async def following(self, user_id: int) -> list[int]:
        following, _ = await self._cached_list(_FOLLOWING.format(user_id), lambda: self._friends.following(user_id))
        return following

    async def followed_among(self, user_id: int, candidates: Collection[int]) -> set[int]:
        """Which of ``candidates`` the user follows: from whichever cached sets answer it, else
        from the user's following list (loaded on a miss)."""
        if not candidates:
            return set()
        authors = list(candidates)
        keys = [_FOLLOWING.format(user_id), *(_FOLLOWERS.format(a) for a in authors)]
        found = await self._followed_among(keys=keys, args=[user_id, *authors])
        if found is None:
            return set(await self.following(user_id)) & set(authors)
        return {int(member) for member in found}

    async def has_at_least_followers(self, author_id: int, threshold: int) -> bool:
        """Whether the author is at or above ``threshold``: the cached count, else a bounded
        database check (the outbox relay asks this for every post, in order, so a full count of a
        celebrity's followers there held up every post behind it)."""
        score = await self._redis.zscore(COUNTS_KEY, str(author_id))
        if score is not None:
            return int(score) >= threshold
        return await self._friends.has_at_least_followers(author_id, threshold)

    async def cached_follower_count(self, author_id: int) -> int | None:
        score = await self._redis.zscore(COUNTS_KEY, str(author_id))
        return None if score is None else int(score)

    async def follower_count(self, author_id: int) -> int:
        score = await self._redis.zscore(COUNTS_KEY, str(author_id))
        if score is not None:
            return int(score)
        count = await self._friends.follower_count(author_id)
        await self._redis.zadd(COUNTS_KEY, {str(author_id): count})
        return count

    async def celebrities_followed(self, user_id: int, threshold: int) -> list[int]:
        found = await self._celebrities_followed(keys=[_FOLLOWING.format(user_id), COUNTS_KEY], args=[threshold])
        if found is None:
            await self.following(user_id)
            found = await self._celebrities_followed(keys=[_FOLLOWING.format(user_id), COUNTS_KEY], args=[threshold])
        return [int(m) for m in found or []]

    async def follow_changed(self, user_id: int, friend_id: int) -> None:
        """Drop both sides' cached lists (and void loads in flight) and recount the followee."""
        keys = (_FOLLOWING.format(user_id), _FOLLOWERS.format(friend_id))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys)
            for key in keys:
                pipe.incr(f"{key}:gen")
                pipe.expire(f"{key}:gen", _GENERATION_TTL)
            await pipe.execute()
        count = await self._friends.follower_count(friend_id)
        await self._redis.zadd(COUNTS_KEY, {str(friend_id): count})

    async def celebrity_count(self, threshold: int) -> int:
        return int(await self._redis.zcount(COUNTS_KEY, threshold, "+inf"))

    async def celebrities(self, threshold: int, limit: int = 1000) -> list[tuple[int, int]]:
        rows: Any = await self._redis.zrange(
            COUNTS_KEY, "+inf", threshold, desc=True, byscore=True, withscores=True, offset=0, num=limit
        )
        return [(int(member), int(score)) for member, score in rows]
