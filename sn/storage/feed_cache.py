"""The per-user feed cache in Redis: the newest N post ids of the people a user follows.

One sorted set per user, ``sn:feed:{user_id}``. Every member has score 0 and the set is ordered
lexicographically: a member is ``<post id, 19 digits>:<author id>``, so lexical order is id order
(ids are time-ordered) and a ``before=<id>`` cursor is a lex range. Carrying the author id lets a
cache miss on a post body be read from the author's shard.

Three sentinel members, all sorting before any real id, record the set's state in the set itself
(one key, one round trip):

- ``BUILDING``: a reader is rebuilding it from the database. Fan-out already writes into it, so a
  post committed during the rebuild is not lost; if the key is deleted meanwhile (a follow or an
  unfollow), the rebuild's result is stale and is discarded. Each rebuild also holds a token
  (``<key>:rebuild``); only the newest rebuild may commit, so a slow reader that started before
  an invalidation cannot overwrite the result of one that started after it.
- ``COMPLETE``: the set holds the user's whole feed (it has fewer than N posts): a short page is
  the end of the feed.
- ``PARTIAL``: older posts exist beyond the set: a page that runs past its end is read from the
  database.

A key without COMPLETE or PARTIAL is a miss.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from sn.storage.redis_mux import Arg, MuxRedis

COMPLETE = "0000000000000000000"
BUILDING = "0000000000000000001"
PARTIAL = "0000000000000000002"
_REAL_MIN = "(" + PARTIAL  # exclusive lower bound: every real member sorts after the sentinels
_REAL_MAX = "+"
_KEY = "sn:feed:{}"
# Shared by every FeedCache (followers' feeds and authors' own lists): a deleted post's id.
_TOMBSTONE_PREFIX = "sn:feed:deleted:"
_TOMBSTONE = _TOMBSTONE_PREFIX + "{}"
_TOMBSTONE_TTL = 86_400  # longer than any redelivery of the post's events
_REBUILD_TOKEN_TTL = 60  # seconds: longer than any rebuild query; a crashed reader's token expires

# Shared by the scripts: drop the oldest real members beyond `max`; trimming makes the set partial.
_TRIM = """
local function trim(key, max)
  local sentinels = redis.call('ZLEXCOUNT', key, '-', '[' .. PARTIAL)
  local real = redis.call('ZCARD', key) - sentinels
  if real > max then
    redis.call('ZREMRANGEBYRANK', key, sentinels, sentinels + real - max - 1)
    if redis.call('ZREM', key, COMPLETE) == 1 then redis.call('ZADD', key, 0, PARTIAL) end
  end
end
"""
_PRELUDE = f"local COMPLETE, BUILDING, PARTIAL = '{COMPLETE}', '{BUILDING}', '{PARTIAL}'\n" + _TRIM

# KEYS[1]: the post's deletion tombstone, KEYS[2..]: feeds; ARGV: member, max. Only feeds that
# exist are touched: an absent feed is rebuilt on its next read, so writing into it would waste
# memory on users who are not reading. A deleted post is never added (see remove_posts).
_ADD = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local max = tonumber(ARGV[2])
local touched = 0
for i = 2, #KEYS do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', key, 0, ARGV[1])
    trim(key, max)
    touched = touched + 1
  end
end
return touched
"""
)

# KEYS: feeds; ARGV: members to remove.
_REMOVE = """
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('ZREM', key, unpack(ARGV))
end
return removed
"""

# KEYS[1]: feed, KEYS[2]: its rebuild token; ARGV: token, complete (0/1), ttl, max, tombstone key
# prefix, members... Returns 0 when the rebuild was invalidated while it ran (BUILDING gone, or a
# newer rebuild took over: only the latest reader's result, read after the invalidation, may be
# stored). A member whose post was deleted meanwhile (the rebuild read the database before the
# deletion committed) is left out: its tombstone says so.
_COMMIT = (
    _PRELUDE
    + """
local key = KEYS[1]
if redis.call('GET', KEYS[2]) ~= ARGV[1] or not redis.call('ZSCORE', key, BUILDING) then return 0 end
redis.call('DEL', KEYS[2])
for i = 6, #ARGV, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ARGV) do
    -- (the post id as text: a 19-digit id does not survive Lua's numbers)
    local post = string.match(ARGV[j], '^0*(%d+):')
    if not post or redis.call('EXISTS', ARGV[5] .. post) == 0 then
      chunk[#chunk + 1] = 0
      chunk[#chunk + 1] = ARGV[j]
    end
  end
  if #chunk > 0 then redis.call('ZADD', key, unpack(chunk)) end
end
redis.call('ZREM', key, BUILDING)
if ARGV[2] == '1' then redis.call('ZADD', key, 0, COMPLETE) else redis.call('ZADD', key, 0, PARTIAL) end
trim(key, tonumber(ARGV[4]))
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return 1
"""
)


def member(post_id: int, author_id: int) -> str:
    return f"{post_id:019d}:{author_id}"


def parse_member(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    post, _, author = text.partition(":")
    return int(post), int(author)


def feed_key(user_id: int) -> str:
    return _KEY.format(user_id)


@dataclass(frozen=True, slots=True)
class FeedPage:
    """A page read from the cache. `hit` False: no usable cache; `exhausted`: the page ran past the
    end of a PARTIAL set, so the caller must read this page from the database instead."""

    hit: bool
    keys: list[tuple[int, int]]
    exhausted: bool = False


class FeedCache:
    # Fan-out touches followers' feeds in chunks of this many keys per script call: big enough to
    # amortise round trips, small enough that one call never blocks Redis for long.
    CHUNK = 500

    def __init__(self, redis: Redis, *, size: int, ttl_seconds: int, mux: MuxRedis, prefix: str = "sn:feed:") -> None:
        # The same structure also caches each author's own newest posts (prefix
        # "sn:authorposts:"), which feed reads merge in for celebrities.
        self._prefix = prefix
        self._redis = redis
        self._size = size
        self._ttl = ttl_seconds
        # A fan-out's chunks go out in one write on the multiplexed client, run in order.
        self._mux = mux
        self._add = mux.script(_ADD)
        self._remove = mux.script(_REMOVE)
        self._commit = redis.register_script(_COMMIT)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def size(self) -> int:
        return self._size

    def key(self, owner_id: int) -> str:
        return f"{self._prefix}{owner_id}"

    async def page(self, user_id: int, *, offset: int, limit: int, before: int | None) -> FeedPage:
        key = self.key(user_id)
        upper = "(" + f"{before:019d}:" if before is not None else _REAL_MAX
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(key, "[" + COMPLETE, "[" + PARTIAL, bylex=True)
            pipe.zrange(key, upper, _REAL_MIN, desc=True, bylex=True, offset=offset, num=limit)
            sentinels, members = await pipe.execute()
        state = {s.decode() if isinstance(s, bytes) else s for s in sentinels}
        if COMPLETE not in state and PARTIAL not in state:
            return FeedPage(hit=False, keys=[])
        keys = [parse_member(m) for m in members]
        exhausted = len(keys) < limit and PARTIAL in state
        return FeedPage(hit=True, keys=keys, exhausted=exhausted)

    def _token_key(self, owner_id: int) -> str:
        return f"{self._prefix}{owner_id}:rebuild"

    async def begin_rebuild(self, user_id: int) -> str:
        """Mark the set as being rebuilt; returns the token `commit_rebuild` must present."""
        token = secrets.token_hex(8)
        key = self.key(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {BUILDING: 0})
            pipe.expire(key, self._ttl)
            pipe.set(self._token_key(user_id), token, ex=_REBUILD_TOKEN_TTL)
            await pipe.execute()
        return token

    async def commit_rebuild(self, user_id: int, token: str, keys: Sequence[tuple[int, int]]) -> bool:
        """Store a rebuild's result: `keys` are (post_id, author_id), newest first, at most size."""
        complete = "1" if len(keys) < self._size else "0"
        args = [token, complete, str(self._ttl), str(self._size), _TOMBSTONE_PREFIX, *(member(p, a) for p, a in keys)]
        return bool(await self._commit(keys=[self.key(user_id), self._token_key(user_id)], args=args))

    async def add_post(self, recipients: Iterable[int], post_id: int, author_id: int) -> int:
        """Insert a post into the existing feeds of `recipients`; returns how many were touched."""
        args: list[Arg] = [member(post_id, author_id), str(self._size)]
        keys = [self.key(r) for r in recipients]
        tombstone = _TOMBSTONE.format(post_id)
        calls = [self._add.call([tombstone, *chunk], args) for chunk in _chunks(keys, self.CHUNK)]
        results = await self._mux.run_scripts(calls)
        return sum(int(result) for result in results)

    async def remove_posts(self, recipients: Iterable[int], posts: Sequence[tuple[int, int]]) -> int:
        if not posts:
            return 0
        # Tombstones first: the pipeline may run a post's creation after its deletion (two
        # consumers, or one batch handled concurrently); the add then finds the tombstone instead
        # of putting the deleted post back for good.
        async with self._redis.pipeline(transaction=False) as pipe:
            for post_id, _ in posts:
                pipe.set(_TOMBSTONE.format(post_id), 1, ex=_TOMBSTONE_TTL)
            await pipe.execute()
        values: list[Arg] = [member(p, a) for p, a in posts]
        keys = [self.key(r) for r in recipients]
        results = await self._mux.run_scripts([self._remove.call(chunk, values) for chunk in _chunks(keys, self.CHUNK)])
        return sum(int(result) for result in results)

    async def exists(self, user_id: int) -> bool:
        """Whether the user's feed is cached (or being rebuilt: BUILDING is a member too)."""
        return bool(await self._redis.exists(self.key(user_id)))

    async def invalidate(self, user_id: int) -> None:
        await self._redis.delete(self.key(user_id), self._token_key(user_id))


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
