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


_NOTHING = 1 << 62  # covered_from of an empty copy: above any id

# (first id, last id or None for "to the end", at most this many) -> entries, ascending
Fetch = Callable[[int, int | None, int], Awaitable[list[LogEntry]]]


class LogTail:
    def __init__(self, fetch: Fetch, *, max_entries: int = 10_000, max_age_ms: int = 600_000) -> None:
        self._fetch = fetch
        self._max_entries = max_entries
        self._max_age_ms = max_age_ms
        self._entries: list[LogEntry] = []
        self._covered_from = _NOTHING  # empty coverage while covered_from > covered_to
        self._covered_to = -1
        self._filling: asyncio.Future[None] | None = None

    @property
    def size(self) -> int:
        return len(self._entries)

    async def after(self, since: int, current: int, now_ms: int) -> list[LogEntry] | None:
        """Entries with ids above ``since`` (the log's counter is ``current``), or None when more
        than ``max_entries`` were logged since then (the caller resyncs the client)."""
        low = since + 1
        while True:  # until covered; each pass either waits for another replay's read or reads
            if self._filling is not None:
                await asyncio.shield(self._filling)  # one read for all the replays that need it
                continue
            if current < self._covered_to:
                self._reset()  # the counter went back: Redis lost the log; this copy is of another
            if self._covered_from <= low and self._covered_to >= current:
                return self._after(since)
            if current - since > self._max_entries:
                return None
            filling = self._filling = asyncio.get_running_loop().create_future()
            try:
                if not await self._fill(low, current):
                    return None
                # Taken before trimming: a cursor in the part that is too old to keep still gets
                # its answer (which makes the caller resync) instead of a read in a loop.
                found = self._after(since)
                self._trim(now_ms)
                return found
            finally:
                self._filling = None
                filling.set_result(None)

    def _after(self, since: int) -> list[LogEntry]:
        return self._entries[bisect.bisect_right(self._entries, since, key=lambda entry: entry.event_id) :]

    async def _fill(self, low: int, current: int) -> bool:
        limit = self._max_entries
        if self._covered_from > low:
            empty = self._covered_from > self._covered_to
            older = await self._fetch(low, None if empty else self._covered_from - 1, limit)
            if len(older) >= limit:
                return False
            if empty:
                self._entries, self._covered_to = older, max(current, older[-1].event_id if older else low - 1)
            else:
                self._entries = older + self._entries
            self._covered_from = low
        if self._covered_to < current:
            newer = await self._fetch(self._covered_to + 1, None, limit)
            if len(newer) >= limit:
                self._reset()
                return False
            self._entries += newer
            self._covered_to = max(current, newer[-1].event_id if newer else self._covered_to)
        return True

    def _trim(self, now_ms: int) -> None:
        entries = self._entries
        drop = max(0, len(entries) - self._max_entries)
        while drop < len(entries) and now_ms - entries[drop].logged_ms > self._max_age_ms:
            drop += 1
        if drop:
            # Older than the replay window or beyond the size bound: a cursor there resyncs anyway.
            self._covered_from = entries[drop - 1].event_id + 1
            del entries[:drop]

    def _reset(self) -> None:
        self._entries, self._covered_from, self._covered_to = [], _NOTHING, -1
