"""This worker's copy of the newest part of the event log, shared by every replay.

A reconnect storm with ``?since=`` asks the same question thousands of times a second: "what
was logged after event N?". Read from Redis each time, every handshake pays an XRANGE of the
whole tail (bodies included) and Redis serves it thousands of times. Here the tail is read
once, extended as the log grows, and each replay is a binary search and a filter in memory.

The log's ids are contiguous (each id is INCRed and logged in one script), so the copy knows
exactly which ids it covers: ``[covered_from, covered_to]``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable
from typing import NamedTuple

__all__ = ["LogEntry", "LogTail"]


class LogEntry(NamedTuple):
    event_id: int
    author_id: int
    logged_ms: int
    body: bytes
    batch: tuple[int, int] | None = None  # a celebrity batch's (k, n), see eventlog.celebrity_batch


_NOTHING = 1 << 62  # covered_from of an empty copy: above any id

# (first id, last id or None for "to the end", at most this many) -> entries, ascending
Fetch = Callable[[int, int | None, int], Awaitable[list[LogEntry]]]


class LogTail:
    def __init__(
        self, fetch: Fetch, *, max_entries: int = 10_000, max_age_ms: int = 600_000, lookback: int | None = None
    ) -> None:
        self._fetch = fetch
        self._max_entries = max_entries
        # How far before a cursor a read also goes (see ``after``): half the copy, by default.
        self._lookback = max_entries // 2 if lookback is None else lookback
        self._max_age_ms = max_age_ms
        self._entries: list[LogEntry] = []
        self._covered_from = _NOTHING  # empty coverage while covered_from > covered_to
        self._covered_to = -1
        # Ids below this were dropped from the copy as too old (or too many): a cursor there is
        # answered "resync" without reading them again.
        self._dropped_below = 0
        self._filling: asyncio.Future[None] | None = None
        # The celebrity batches held, by body: (event id, k, n) of each (see ``batches_of``).
        self._batches: dict[bytes, list[tuple[int, int, int]]] = {}

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def anchor(self) -> tuple[int, int] | None:
        """(id, logged_ms) of the newest entry held, for ``verify`` against the log in Redis."""
        return (self._entries[-1].event_id, self._entries[-1].logged_ms) if self._entries else None

    def verify(self, event_id: int, logged_ms: int | None) -> None:
        """What Redis holds at ``event_id`` (None: nothing). A different entry there means Redis lost
        the log and its ids started again: this copy is of another log and is dropped."""
        index = bisect.bisect_left(self._entries, event_id, key=lambda entry: entry.event_id)
        held = self._entries[index] if index < len(self._entries) else None
        if held is not None and held.event_id == event_id and held.logged_ms != logged_ms:
            self._reset()

    async def after(self, since: int, current: int, now_ms: int) -> list[LogEntry] | None:
        """Entries with ids above ``since`` (the log's counter is ``current``), or None when the
        cursor is too far behind: more than ``max_entries`` since, or in a part dropped for age
        (the caller resyncs the client)."""
        low = since + 1
        while True:  # until covered; each pass either waits for another replay's read or reads
            if self._filling is not None:
                await asyncio.shield(self._filling)  # one read for all the replays that need it
                continue
            if low < self._dropped_below or current - since > self._max_entries:
                return None
            if self._covered_from <= low and self._covered_to >= current:
                return self._after(since)
            filling = self._filling = asyncio.get_running_loop().create_future()
            # Read a little before the cursor too: a celebrity post's batches the client has seen
            # already lie there (``batches_of``), and a replay with them at hand sends it no copy
            # again. Within max_entries of the counter, and not into the part dropped for age.
            start = max(min(low, current - self._lookback), current - self._max_entries + 1, self._dropped_below, 1)
            try:
                if not await self._fill(start, current):
                    return None
                # Taken before trimming: a cursor in the part that is too old to keep still gets
                # its answer (which makes the caller resync) instead of a read in a loop.
                found = self._after(since)
                self._trim(now_ms)
                return found
            finally:
                self._filling = None
                filling.set_result(None)

    def batches_of(self, body: bytes) -> list[tuple[int, int, int]]:
        """(event id, k, n) of every batch of the celebrity post ``body`` this copy holds."""
        return self._batches.get(body, [])

    def _index(self, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.batch is not None:
                self._batches.setdefault(entry.body, []).append((entry.event_id, *entry.batch))

    def _after(self, since: int) -> list[LogEntry]:
        return self._entries[bisect.bisect_right(self._entries, since, key=lambda entry: entry.event_id) :]

    async def _fill(self, low: int, current: int) -> bool:
        limit = self._max_entries
        if current - self._covered_to > limit:
            self._reset()  # far behind the log: start again from this cursor
        if self._covered_from > low:
            empty = self._covered_from > self._covered_to
            older = await self._fetch(low, None if empty else self._covered_from - 1, limit + 1)
            if len(older) > limit:
                return False
            if empty:
                self._entries, self._covered_to = older, max(current, older[-1].event_id if older else low - 1)
            else:
                self._entries = older + self._entries
            self._index(older)
            self._covered_from = low
        if self._covered_to < current:
            newer = await self._fetch(self._covered_to + 1, None, limit + 1)
            if len(newer) > limit:
                self._reset()
                return False
            self._entries += newer
            self._index(newer)
            self._covered_to = max(current, newer[-1].event_id if newer else self._covered_to)
        return True

    def _trim(self, now_ms: int) -> None:
        entries = self._entries
        drop = max(0, len(entries) - self._max_entries)
        while drop < len(entries) and now_ms - entries[drop].logged_ms > self._max_age_ms:
            drop += 1
        if drop:
            # Older than the replay window or beyond the size bound: a cursor there resyncs anyway.
            self._covered_from = self._dropped_below = entries[drop - 1].event_id + 1
            for entry in entries[:drop]:
                if entry.batch is not None:
                    held = self._batches[entry.body]
                    held.remove((entry.event_id, *entry.batch))
                    if not held:
                        del self._batches[entry.body]
            del entries[:drop]

    def _reset(self) -> None:
        self._entries, self._covered_from, self._covered_to = [], _NOTHING, -1
        self._dropped_below = 0
        self._batches = {}
