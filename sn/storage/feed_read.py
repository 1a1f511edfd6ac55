"""The cached feed page in one Redis round trip.

A feed read used to be three: "which of my followees are celebrities" (their posts are pulled on
read, not fanned out), the page of post ids from the feed set, then an MGET of the bodies. On a
cached feed those three calls were most of the request's CPU (redis-py costs more per call than
Redis does), so the common case now runs as one script that answers with the finished JSON array.

The script steps aside (status ``FALLBACK``) whenever the answer needs more than the cache holds:
the following set or the feed set is not cached, a followed user is a celebrity, or the page runs
past the end of a partial feed set. `FeedService` then takes its general path, which handles all
of those. Missing post bodies (evicted or expired) come back as holes for the caller to fill from
PostgreSQL, so a page never needs a second script call.

The script derives post keys (``sn:post:<id>``) from the feed members it reads, so on a Redis
Cluster the feed and its posts would need one hash slot; sn runs one Redis (plus replicas).
"""

from __future__ import annotations

from dataclasses import dataclass

from sn.storage.feed_cache import COMPLETE, PARTIAL, parse_member
from sn.storage.redis_mux import MuxRedis

FALLBACK = 0
WHOLE = 1
WITH_HOLES = 2
# Up to this many celebrities, look each up in the following set; beyond, score each followee.
_FEW_CELEBRITIES = 256

# KEYS[1] feed set, KEYS[2] following set, KEYS[3] follower counts.
# ARGV[1] celebrity threshold, ARGV[2] upper lex bound, ARGV[3] offset, ARGV[4] limit,
# ARGV[5] post key prefix.
# Returns {0} (fall back), {1, json array} or {2, members, bodies with false for misses}.
_SCRIPT = f"""
local following, counts, threshold = KEYS[2], KEYS[3], ARGV[1]
-- Is any followee a celebrity? Check from whichever side is smaller: usually there are few
-- celebrities (often none: one ZCOUNT), while a user may follow thousands.
local celebrities = redis.call('ZCOUNT', counts, threshold, '+inf')
if celebrities > 0 then
  if redis.call('EXISTS', following) == 0 then return {{{FALLBACK}}} end
  if celebrities <= {_FEW_CELEBRITIES} then
    local names = redis.call('ZRANGE', counts, threshold, '+inf', 'BYSCORE')
    for _, followed in ipairs(redis.call('SMISMEMBER', following, unpack(names))) do
      if followed == 1 then return {{{FALLBACK}}} end
    end
  else
    local followees = redis.call('SMEMBERS', following)
    -- unpack() is bounded by Lua's C stack: score the followees in chunks.
    for start = 1, #followees, 1000 do
      local chunk = {{}}
      for i = start, math.min(start + 999, #followees) do chunk[#chunk + 1] = followees[i] end
      local scores = redis.call('ZMSCORE', counts, unpack(chunk))
      for i, score in ipairs(scores) do
        if score and chunk[i] ~= '0' and tonumber(score) >= tonumber(threshold) then return {{{FALLBACK}}} end
      end
    end
  end
end
local feed = KEYS[1]
local state = redis.call('ZRANGE', feed, '[{COMPLETE}', '[{PARTIAL}', 'BYLEX')
local complete, partial = false, false
for _, s in ipairs(state) do
  if s == '{COMPLETE}' then complete = true elseif s == '{PARTIAL}' then partial = true end
end
if not complete and not partial then return {{{FALLBACK}}} end
local limit = tonumber(ARGV[4])
local members = redis.call('ZRANGE', feed, ARGV[2], '({PARTIAL}', 'BYLEX', 'REV', 'LIMIT', ARGV[3], limit)
if #members < limit and partial then return {{{FALLBACK}}} end
if #members == 0 then return {{{WHOLE}, '[]'}} end
local keys = {{}}
for i, m in ipairs(members) do keys[i] = ARGV[5] .. string.match(m, '^0*(%d+):') end
local bodies = redis.call('MGET', unpack(keys))
for i = 1, #members do
  if not bodies[i] then return {{{WITH_HOLES}, members, bodies}} end
end
return {{{WHOLE}, '[' .. table.concat(bodies, ',') .. ']'}}
"""


@dataclass(frozen=True, slots=True)
class CachedPage:
    """A page the script could answer: `body` when every post was cached, else `keys` (post id,
    author id) in order with `bodies` holding None where the post body must be read elsewhere."""

    body: bytes | None
    keys: list[tuple[int, int]]
    bodies: list[bytes | None]


class FeedReader:
    def __init__(self, redis: MuxRedis, *, feed_prefix: str, following_prefix: str, counts_key: str) -> None:
        self._script = redis.script(_SCRIPT)
        self._feed_prefix = feed_prefix
        self._following_prefix = following_prefix
        self._counts_key = counts_key

    async def page(
        self, user_id: int, *, threshold: int, offset: int, limit: int, before: int | None, post_prefix: str
    ) -> CachedPage | None:
        """The page from the cache alone, or None when the general path must answer."""
        upper = f"({before:019d}:" if before is not None else "+"
        keys = [f"{self._feed_prefix}{user_id}", f"{self._following_prefix}{user_id}", self._counts_key]
        reply = await self._script(keys=keys, args=[threshold, upper, offset, limit, post_prefix])
        status = reply[0]
        if status == WHOLE:
            return CachedPage(body=reply[1], keys=[], bodies=[])
        if status == WITH_HOLES:
            members, bodies = reply[1], reply[2]
            return CachedPage(body=None, keys=[parse_member(m) for m in members], bodies=list(bodies))
        return None
