"""Routing of real-time events to worker streams, and the event log reconnecting clients replay.

`route` runs one Lua script per batch that (1) takes the next event id from a counter,
(2) appends the event to the global log ``sn:rt:log`` and (3) appends one entry per owning
worker stream carrying the recipients of that stream. Being one atomic script is what makes
event ids increase per recipient: every worker stream receives entries in id order, and each
worker's router reads its stream in order. The event body is encoded once by the caller and
shared by every stream entry.

Replay reads the log after the client's last id and keeps the events of authors the user
follows. The log is capped (count, and an age limit checked on read); a client whose cursor is
older than what the log holds is told to resync over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from sn.realtime.log_tail import LogEntry, LogTail
from sn.realtime.presence import ONLINE_PREFIX, STREAMS_KEY, presence_key
from sn.storage.redis_mux import Arg, MuxRedis, ScriptCall

LOG_KEY = "sn:rt:log"
COUNTER_KEY = "sn:rt:event_seq"
ROUTED_PREFIX = "sn:rt:routed:"  # + an event's once_key + chunk: that chunk was routed (kept a day)
# A counter that is not there (a new Redis, or one that restarted empty) starts at the clock in
# milliseconds times 1000, not at 1: open sockets hold cursors from the lost counter, and ids
# starting again from 1 would sit below them and be dropped as already delivered. Clock-based,
# each new start lies above the last one's ids (unless more than a million events a second were
# logged in between), so ids only ever grow for a socket; ~1.8e15 stays below 2^53 (JavaScript).

# KEYS[1] log, KEYS[2] counter, KEYS[3..] streams; ARGV: body, author, now_ms, log_maxlen,
# stream_maxlen, then one comma-separated recipient list per stream. Its stream entries are
# marked paced ('p'): off the normal fan-out path (an admin's test post), they stay out of the
# delivery metric, as a celebrity's batches do (late by design, see _ROUTE_FOLLOWERS).
_ROUTE = """
local id = redis.call('INCR', KEYS[2])
local first = id == 1  -- a new counter: its first entry is marked ('s'), see replay
if first then id = tonumber(ARGV[3]) * 1000; redis.call('SET', KEYS[2], string.format('%d', id)) end
id = string.format('%d', id)  -- (Lua would print an id of 15+ digits as 1.7e+15)
local sid = id .. '-1'
if first then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], sid, 'b', ARGV[1], 'a', ARGV[2], 't', ARGV[3], 's', '1')
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], sid, 'b', ARGV[1], 'a', ARGV[2], 't', ARGV[3])
end
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[5], '*', 'e', id, 'b', ARGV[1], 'r', ARGV[i + 3], 'p', '1')
  redis.call('EXPIRE', KEYS[i], 3600)
end
return id
"""


# KEYS[1] log, KEYS[2] counter, KEYS[3] the registry of workers' online sets, KEYS[4..] presence
# keys of followers; ARGV: body, author, now_ms, log_maxlen, stream_maxlen, now (seconds, float),
# the most workers for which to use online sets, the online sets' key prefix, a key marking this
# chunk of this event as routed ('' for none), a celebrity batch's tag 'k/n' (batch k of n, see
# celebrity_batch; its stream entries are marked paced, see _ROUTE) or '', then the follower ids
# (same order as their keys). The tag is logged with the entry ('c'): a replay tells by it that a
# user was in a batch the client has already seen (EventLog.replay).
# The mark makes a redelivered bus message (at least once: a confirm or an ack lost in a broker
# outage) route nothing the second time: routed again, it would reach sockets under a new event
# id, and clients would show the post twice.
# Presence is looked up inside the script: a socket registered before it runs gets the event
# live, one registered after finds it in the log when it replays. No window loses an event.
# Two ways to look it up: with few workers, one SMISMEMBER of the whole chunk per worker's online
# set (about 0.6 us of Redis per follower and worker); with many, one ZRANGEBYSCORE per
# follower's presence key (about 7.5 us per follower: 75 ms of Redis time for a 10k-follower
# post, during which every other command waits). They differ only for a user whose departure was
# never written: the online set keeps them until their worker's set expires, the presence key
# until its entry does; the worker holding no socket for them drops the event either way.
_ROUTE_FOLLOWERS = """
if ARGV[9] ~= '' and not redis.call('SET', ARGV[9], '1', 'NX', 'EX', 86400) then return {0, 0} end
local id = redis.call('INCR', KEYS[2])
local first = id == 1  -- a new counter: its first entry is marked ('s'), see replay
if first then id = tonumber(ARGV[3]) * 1000; redis.call('SET', KEYS[2], string.format('%d', id)) end
id = string.format('%d', id)  -- (Lua would print an id of 15+ digits as 1.7e+15)
local fields = {'b', ARGV[1], 'a', ARGV[2], 't', ARGV[3]}
if first then fields[#fields + 1] = 's'; fields[#fields + 1] = '1' end
if ARGV[10] ~= '' then fields[#fields + 1] = 'c'; fields[#fields + 1] = ARGV[10] end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], id .. '-1', unpack(fields))
local count = #KEYS - 3
local delivered = 0
local function send(stream, recipients)
  local r = table.concat(recipients, ',')
  if ARGV[10] ~= '' then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], '*', 'e', id, 'b', ARGV[1], 'r', r, 'p', '1')
  else
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], '*', 'e', id, 'b', ARGV[1], 'r', r)
  end
  redis.call('EXPIRE', stream, 3600)
  delivered = delivered + #recipients
end
if count == 0 then return {id, 0} end
local streams = {}
for _, stream in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('EXISTS', ARGV[8] .. stream) == 1 then
    streams[#streams + 1] = stream
  else
    redis.call('SREM', KEYS[3], stream)  -- a dead worker's: its online set expired
  end
end
if #streams <= tonumber(ARGV[7]) then
  for _, stream in ipairs(streams) do
    local flags = redis.call('SMISMEMBER', ARGV[8] .. stream, unpack(ARGV, 11, 10 + count))
    local recipients = {}
    for i, flag in ipairs(flags) do
      if flag == 1 then recipients[#recipients + 1] = ARGV[i + 10] end
    end
    if #recipients > 0 then send(stream, recipients) end
  end
  return {id, delivered}
end
local min = '(' .. ARGV[6]
local by_stream, order = {}, {}
for i = 4, #KEYS do
  for _, stream in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], min, '+inf')) do
    if not by_stream[stream] then by_stream[stream] = {}; order[#order + 1] = stream end
    table.insert(by_stream[stream], ARGV[i + 7])
  end
end
for _, stream in ipairs(order) do send(stream, by_stream[stream]) end
return {id, delivered}
"""


_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: ids that differ in low bits spread over all batches


def celebrity_batch(user_id: int, batches: int) -> int:
    """Which of a celebrity fan-out's `batches` batches holds `user_id`: a function of the id alone,
    so a replay knows a user's batch from the batch's tag in the log without the fan-out's list."""
    return (((user_id * _GOLDEN) & 0xFFFFFFFFFFFFFFFF) >> 32) % batches


def _batch(tag: bytes | None) -> tuple[int, int] | None:
    if not tag:
        return None
    k, _, n = tag.partition(b"/")
    return int(k), int(n)


async def _nothing() -> list[tuple[bytes, dict[bytes, bytes]]]:
    return []


@dataclass(frozen=True, slots=True)
class Replay:
    events: list[tuple[int, bytes]]  # (event_id, body), ascending
    gap: bool  # the cursor is older than the log (or the id counter was reset): resync
    oldest_available: int | None


class EventLog:
    ROUTE_CHUNK = 1000
    # Up to this many workers, presence is asked of each worker's online set (see _ROUTE_FOLLOWERS).
    ONLINE_SET_MAX_WORKERS = 12

    def __init__(
        self,
        mux: MuxRedis,
        *,
        log_maxlen: int = 100_000,
        stream_maxlen: int = 10_000,
        max_age_seconds: float = 600,
    ) -> None:
        # Replays (once per reconnecting socket) and fan-out routing (all chunks in one write)
        # share the worker's multiplexed connection.
        self._mux = mux
        self._log_maxlen = log_maxlen
        self._stream_maxlen = stream_maxlen
        self._max_age_ms = int(max_age_seconds * 1000)
        # Replays read the log through this worker's copy of its tail (see log_tail).
        self._tail = LogTail(self._read_log, max_age_ms=self._max_age_ms)
        self._route = mux.script(_ROUTE)
        self._route_followers = mux.script(_ROUTE_FOLLOWERS)

    async def route(self, body: bytes, author_id: int, deliveries: Mapping[str, Sequence[int]]) -> int:
        streams = list(deliveries)
        args: list[Arg] = [
            body,
            author_id,
            int(time.time() * 1000),
            self._log_maxlen,
            self._stream_maxlen,
        ]
        args += [",".join(map(str, deliveries[s])) for s in streams]
        return int(await self._route(keys=[LOG_KEY, COUNTER_KEY, *streams], args=args))

    async def route_to_followers(
        self,
        body: bytes,
        author_id: int,
        followers: Sequence[int],
        *,
        once_key: str | None = None,
        batch: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """Log the event and deliver it to the online ones among `followers` in one atomic step
        per chunk; returns (last event id, sockets' users reached). With ``once_key`` (naming the
        event), a chunk already routed under it is not routed again: (0, 0) when none was.
        ``batch``: (k, n), a celebrity's batch k of n (see `celebrity_batch`): logged with its tag,
        its stream entries paced (out of the delivery metric)."""
        now = time.time()
        calls: list[ScriptCall] = []
        # Chunked so one script never blocks Redis for long; an empty list still logs the event.
        for start in range(0, max(len(followers), 1), self.ROUTE_CHUNK):
            chunk = followers[start : start + self.ROUTE_CHUNK]
            args: list[Arg] = [
                body,
                author_id,
                int(now * 1000),
                self._log_maxlen,
                self._stream_maxlen,
                repr(now),
                self.ONLINE_SET_MAX_WORKERS,
                ONLINE_PREFIX,
                f"{ROUTED_PREFIX}{once_key}:{start}" if once_key else "",
                f"{batch[0]}/{batch[1]}" if batch else "",
                *chunk,
            ]
            keys = [LOG_KEY, COUNTER_KEY, STREAMS_KEY, *(presence_key(f) for f in chunk)]
            calls.append(self._route_followers.call(keys, args))
        results = await self._mux.run_scripts(calls)
        return max(int(result[0]) for result in results), sum(int(result[1]) for result in results)

    async def replay(
        self,
        since: int,
        authors: Collection[int] | Callable[[set[int]], Awaitable[Collection[int]]],
        *,
        limit: int,
        user_id: int | None = None,
    ) -> Replay:
        """The logged events after `since` by `authors`, or a gap. `authors` may be a coroutine
        function, given the authors of the entries to filter and answering which of them count:
        it is called only when there are such entries, so a client that missed nothing (the
        common reconnect) costs no follow lookup, and one that did asks only about those authors.

        With ``user_id``, a celebrity post whose batch holding that user lies at or before `since`
        is left out: the client has it. Its batches are logged one by one over 10 s or more, so a
        client reconnecting in between finds later batches' entries after its cursor, and was sent
        the post again (12 % of the celebrity deliveries of a topology run, 21,590 copies)."""
        now_ms = int(time.time() * 1000)
        anchor = self._tail.anchor
        counter, head, at_anchor = await asyncio.gather(
            self._get(COUNTER_KEY),
            self._xrange("-", "+", 1),
            self._xrange(f"{anchor[0]}-1", f"{anchor[0]}-1", 1) if anchor else _nothing(),
        )
        if anchor is not None:  # is the worker's copy of the log still a copy of this log?
            self._tail.verify(anchor[0], int(at_anchor[0][1][b"t"]) if at_anchor else None)
        current = int(counter or 0)
        oldest = int(head[0][0].split(b"-")[0]) if head else None
        if since == 0 and oldest is not None and b"s" in head[0][1]:
            # A client that has seen no event, and the log still holds its very first entry:
            # nothing was trimmed, so everything is there to replay. (Elsewhere 0 lies below the
            # log, whose ids start at the clock: the client resyncs.)
            since = oldest - 1
        if since > current:
            return Replay([], gap=True, oldest_available=oldest)
        if since >= current:
            return Replay([], gap=False, oldest_available=oldest)
        if oldest is None or since + 1 < oldest:
            return Replay([], gap=True, oldest_available=oldest)
        entries = await self._tail.after(since, current, now_ms)
        if entries is None or (entries and now_ms - entries[0].logged_ms > self._max_age_ms):
            # Too much logged since, or older than the replay window: the client must resync
            # rather than get a partial replay.
            return Replay([], gap=True, oldest_available=oldest)
        if callable(authors):
            authors = set(await authors({entry.author_id for entry in entries})) if entries else set()
        events: list[tuple[int, bytes]] = []
        # A celebrity post is logged when its fan-out starts and again with each batch (every
        # batch is one atomic log-and-route): the client gets it once, at its first entry.
        seen: set[bytes] = set()
        for entry in entries:
            if entry.author_id in authors and entry.body not in seen:
                seen.add(entry.body)
                if user_id is not None and self._had_its_batch(entry.body, user_id, since):
                    continue
                events.append((entry.event_id, entry.body))
                if len(events) > limit:
                    return Replay([], gap=True, oldest_available=oldest)
        return Replay(events, gap=False, oldest_available=oldest)

    def _had_its_batch(self, body: bytes, user_id: int, since: int) -> bool:
        """Was the batch of celebrity post `body` that holds `user_id` logged at or before `since`?

        Then the client has the post: the batch's script found the user's sockets and routed it to
        them in the same step, in id order, so a client that saw `since` saw it; and had the user
        no socket then, the client's cursor was older than the batch. (Not held in this worker's
        copy of the log: not known, and the post is sent; a copy is what a client must dedupe.)"""
        return any(
            event_id <= since and celebrity_batch(user_id, n) == k for event_id, k, n in self._tail.batches_of(body)
        )

    async def _read_log(self, low: int, high: int | None, count: int) -> list[LogEntry]:
        entries = await self._xrange(f"{low}-0", "+" if high is None else f"{high}-1", count)
        return [
            LogEntry(
                int(entry_id.split(b"-")[0]),
                int(fields[b"a"]),
                int(fields[b"t"]),
                fields[b"b"],
                _batch(fields.get(b"c")),
            )
            for entry_id, fields in entries
        ]

    async def _get(self, key: str) -> bytes | None:
        return await self._mux.get(key)

    async def _xrange(self, low: str, high: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        raw = await self._mux.execute("XRANGE", LOG_KEY, low, high, "COUNT", count)
        return [(entry_id, dict(zip(fields[::2], fields[1::2], strict=True))) for entry_id, fields in raw]
