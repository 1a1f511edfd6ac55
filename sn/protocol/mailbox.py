"""A bounded, non-blocking FIFO: the one queue type the actor layer uses.

Every queue between a producer we do not control (the event router, a
client socket) and a consumer that may be slow (a handler, a network write)
is a place where memory can grow without bound.  ``Mailbox`` makes the bound
explicit and puts the overflow decision in the caller's hands: ``offer``
never blocks and never grows the queue past ``capacity``; it just says no.
What "no" means (drop, close the connection, shed load) is policy that lives
one layer up.

Pure: no asyncio, no locks. A socket's outbox is one: frames wait in it only while the
transport has paused writing (``SocketActor``).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Mailbox"]


class Mailbox(Generic[T]):
    """Bounded FIFO with explicit rejection and a one-way ``closed`` state.

    Counters are monotonic so an adapter can export them as Prometheus
    counters without keeping its own shadow state.
    """

    __slots__ = ("_accepted", "_capacity", "_closed", "_items", "_rejected")

    def __init__(self, capacity: int) -> None:
        # A zero-capacity mailbox would reject everything, which is always a
        # configuration mistake rather than a useful mode.
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        # No ``maxlen``: a maxlen deque silently evicts the *oldest* item on
        # overflow, which is exactly the silent data loss we want to avoid.
        self._items: deque[T] = deque()
        self._closed = False
        self._accepted = 0
        self._rejected = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def accepted(self) -> int:
        """Number of items ever accepted by :meth:`offer`."""
        return self._accepted

    @property
    def rejected(self) -> int:
        """Number of refused offers, whether because full or closed."""
        return self._rejected

    @property
    def full(self) -> bool:
        return len(self._items) >= self._capacity

    @property
    def free(self) -> int:
        """How many more items :meth:`offer` would accept right now."""
        if self._closed:
            return 0
        return self._capacity - len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Mailbox {len(self._items)}/{self._capacity} {state}>"

    def offer(self, item: T) -> bool:
        """Append ``item`` if there is room; return whether it was accepted."""
        if self._closed or len(self._items) >= self._capacity:
            self._rejected += 1
            return False
        self._items.append(item)
        self._accepted += 1
        return True

    def drain(self, max_items: int | None = None) -> list[T]:
        """Remove and return up to ``max_items`` items (all if ``None``), oldest first.

        Draining in batches lets a consumer amortise per-wakeup cost (one
        task switch, one socket write syscall) over many items.  Items left
        in a closed mailbox can still be drained, so shutdown can flush.
        """
        items = self._items
        if max_items is None or max_items >= len(items):
            batch = list(items)
            items.clear()
            return batch
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        return [items.popleft() for _ in range(max_items)]

    def close(self) -> None:
        """Refuse all future offers.  Idempotent; queued items stay drainable."""
        self._closed = True

    def clear(self) -> int:
        """Discard every queued item and return how many were dropped."""
        dropped = len(self._items)
        self._items.clear()
        return dropped
