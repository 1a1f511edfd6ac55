"""At most N holders per key at once, in one worker process (an asyncio.Semaphore per key in use).

Used for follows of one user: a burst of them (an account going viral) is written a few at a
time per worker and queues at the app, where each waiting request costs nothing, instead of as
many concurrent two-phase commits on the same shards. Measured on the Citus topology: 150 follows
of one user at 16 in flight took normal authors' posts to p90 133 ms from POST to the
follower's socket (10 ms before and after); one at a time per worker (four in all), the burst
took about as long and those posts stayed under 45 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

Key = TypeVar("Key")


class KeyedLimit(Generic[Key]):
    def __init__(self, per_key: int) -> None:
        if per_key < 0:
            raise ValueError("per_key must be >= 0 (0: no limit)")
        self._per_key = per_key
        # Key -> (semaphore, holders and waiters): an entry lives only while someone uses it.
        self._gates: dict[Key, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        if not self._per_key:
            yield
            return
        gate, users = self._gates.get(key, (None, 0))
        if gate is None:
            gate = asyncio.Semaphore(self._per_key)
        self._gates[key] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._gates[key]
            if users == 1:
                del self._gates[key]
            else:
                self._gates[key] = (gate, users - 1)

    def in_use(self) -> int:
        """Keys with a holder or a waiter (for /stats and tests)."""
        return len(self._gates)
