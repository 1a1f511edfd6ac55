"""64-bit, time-ordered ids (Snowflake layout), exposed to clients as decimal strings.

Layout: 41 bits of milliseconds since 2024-01-01, 10 bits of generator id, 12 bits of sequence.
Time-ordered ids let posts sort by id (no separate created_at index) and make ``before=<id>``
cursors stable. The generator id is leased from Redis per process (see ``sn.storage.idlease.GeneratorLease``),
so processes never share one while their leases live; 1024 concurrent processes is far beyond
what one deployment runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
GENERATOR_BITS = 10
SEQUENCE_BITS = 12
MAX_GENERATOR = (1 << GENERATOR_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_ID = (1 << 63) - 1


class IdGenerator:
    def __init__(self, generator_id: int) -> None:
        if not 0 <= generator_id <= MAX_GENERATOR:
            raise ValueError(f"generator id must be in [0, {MAX_GENERATOR}]")
        self._generator_id = generator_id
        self._last_ms = -1
        self._sequence = 0
        # The seeder calls this from several threads; the server from one loop. A lock is cheap.
        self._lock = threading.Lock()

    @property
    def generator_id(self) -> int:
        return self._generator_id

    def rebind(self, generator_id: int) -> None:
        """Switch to another generator id (the lease on the old one was lost)."""
        if not 0 <= generator_id <= MAX_GENERATOR:
            raise ValueError(f"generator id must be in [0, {MAX_GENERATOR}]")
        with self._lock:
            self._generator_id = generator_id

    def next_id(self) -> int:
        with self._lock:
            now_ms = max(int(time.time() * 1000) - EPOCH_MS, self._last_ms)
            if now_ms == self._last_ms:
                self._sequence = (self._sequence + 1) & MAX_SEQUENCE
                if self._sequence == 0:
                    # 4096 ids in one millisecond: borrow the next millisecond rather than
                    # sleeping, keeping ids unique and increasing; the clock catches up quickly.
                    now_ms += 1
            else:
                self._sequence = 0
            self._last_ms = now_ms
            return (now_ms << (GENERATOR_BITS + SEQUENCE_BITS)) | (self._generator_id << SEQUENCE_BITS) | self._sequence


def timestamp_ms(id_: int) -> int:
    """Unix milliseconds at which an id was generated."""
    return (id_ >> (GENERATOR_BITS + SEQUENCE_BITS)) + EPOCH_MS


def parse_id(raw: str | int) -> int | None:
    """An id from a path or body; None when it is not a well-formed positive 63-bit integer."""
    if isinstance(raw, int):
        return raw if 0 < raw <= MAX_ID else None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None


def id_array(ids: Iterable[int]) -> list[str]:
    """Ids for a ``$n::text[]::bigint[]`` parameter: write arrays of ids that way, never ``$n::bigint[]``.

    asyncpg has built-in codecs for text[] but not for bigint[]: the first bigint[] parameter on
    each new connection sends its type-introspection query, whose correlated scans of pg_class cost
    ~350 ms on a Citus coordinator (its catalog has ~250 composite types; ~7 ms on plain
    PostgreSQL). Every fresh pool connection paid it inside a request, or in the outbox relay's
    first DELETE (posts behind it waited as long). The cast happens once per statement on the
    server; Citus prunes shards on it as on a bigint[] parameter.
    """
    return [str(value) for value in ids]
