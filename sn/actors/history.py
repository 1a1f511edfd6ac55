"""Bounded per-recipient event history and the replay/resync decision.

A reconnecting client says "I have everything up to event N".  We can only
answer with the missed events if we can *prove* none were lost between N and
what we still hold; otherwise the honest answer is ``Resync`` ("refetch your
feed over HTTP"), because silently skipping events leaves a stale feed on
screen with no way for the client to notice.

Pure: the caller passes ``now`` (any monotonic clock, as long as it is the
same one for ``append`` and ``since``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from operator import itemgetter

import msgspec

from sn.actors.messages import Event

__all__ = ["EventHistory", "Resync", "plan_replay"]


class Resync(msgspec.Struct, frozen=True):
    """Replay is impossible; the client must refetch its feed."""

    since: int
    oldest_available: int | None
    message: str = "missed events are no longer available; refetch the feed"


def plan_replay(
    since: int,
    entries: Iterable[tuple[int, Event]],
    *,
    evicted_through: int | None = None,
    latest_event_id: int | None = None,
) -> list[Event] | Resync:
    """Decide what a client whose cursor is ``since`` missed.

    ``entries`` is whatever history the store still holds, as
    ``(event_id, event)`` pairs.  Pass ``evicted_through`` (highest id ever
    dropped from the store) when known; otherwise ids are assumed contiguous
    per recipient (an INCR counter), so a hole before the oldest entry means
    events were trimmed.  ``latest_event_id`` is the recipient's counter, if
    the caller has it; it catches "everything expired" when ``entries`` is empty.
    """
    # Stores usually return ascending order already; Timsort makes this O(n)
    # then, and it protects the contiguity check against an unordered source.
    ordered = sorted(entries, key=itemgetter(0))
    oldest = ordered[0][0] if ordered else None
    known_latest = max(
        latest_event_id or 0,
        ordered[-1][0] if ordered else 0,
        evicted_through or 0,
    )
    if since > known_latest:
        # The client saw ids we never issued: the counter was reset (restart
        # with in-memory history, flushed Redis).  New events would carry ids
        # <= since and be dropped as duplicates forever, so force a resync.
        return Resync(since, oldest, "event cursor is ahead of the server; refetch the feed")
    if evicted_through is not None:
        gap = since < evicted_through
    elif oldest is not None:
        gap = since + 1 < oldest
    else:
        # Nothing held and nothing known to be evicted: the only way there is
        # something to miss is if the counter is ahead of the client.
        gap = since < known_latest
    if gap:
        return Resync(since, oldest)
    return [event for event_id, event in ordered if event_id > since]


class EventHistory:
    """Last ``max_events`` events of one recipient, optionally also capped by age."""

    __slots__ = ("_entries", "_evicted_through", "_last_event_id", "max_age", "max_events")

    def __init__(self, max_events: int, max_age: float | None = None) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if max_age is not None and max_age <= 0:
            raise ValueError(f"max_age must be > 0, got {max_age}")
        self.max_events = max_events
        self.max_age = max_age
        # (appended_at, event); appended_at rather than created_at because
        # created_at is the author's clock, and age limits are about memory.
        self._entries: deque[tuple[float, Event]] = deque()
        self._evicted_through: int | None = None
        self._last_event_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_event_id(self) -> int:
        """Highest id ever appended (0 if none), even if since evicted."""
        return self._last_event_id

    @property
    def evicted_through(self) -> int | None:
        """Highest id dropped by the count/age limits, or ``None`` if nothing was."""
        return self._evicted_through

    @property
    def oldest_event_id(self) -> int | None:
        return self._entries[0][1].event_id if self._entries else None

    def append(self, event: Event, now: float) -> bool:
        """Record ``event``; returns False (and ignores it) if its id is not new.

        Redelivery from the bus is expected (at-least-once); ignoring stale
        ids keeps the history strictly increasing, which replay relies on.
        """
        if event.event_id <= self._last_event_id:
            return False
        self._entries.append((now, event))
        self._last_event_id = event.event_id
        if len(self._entries) > self.max_events:
            self._evict_oldest()
        self.prune(now)
        return True

    def prune(self, now: float) -> int:
        """Drop events older than ``max_age``; returns how many were dropped."""
        if self.max_age is None:
            return 0
        cutoff = now - self.max_age
        dropped = 0
        while self._entries and self._entries[0][0] < cutoff:
            self._evict_oldest()
            dropped += 1
        return dropped

    def since(self, event_id: int, now: float) -> list[Event] | Resync:
        """Events after ``event_id`` in order, or ``Resync`` if some were already evicted."""
        self.prune(now)
        return plan_replay(
            event_id,
            ((event.event_id, event) for _, event in self._entries),
            evicted_through=self._evicted_through,
            latest_event_id=self._last_event_id,
        )

    def _evict_oldest(self) -> None:
        _, event = self._entries.popleft()
        self._evicted_through = event.event_id
