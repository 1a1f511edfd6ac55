"""Dialog messages, keyed by the unordered pair of users so a dialog lives in one shard."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg


def dialog_id(a: int, b: int) -> str:
    low, high = (a, b) if a < b else (b, a)
    return f"{low}:{high}"


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    sender_id: int
    recipient_id: int
    text: str
    created_at: dt.datetime


class DialogRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def send(self, message_id: int, sender_id: int, recipient_id: int, text: str) -> MessageRow:
        row = await self._pool.fetchrow(
            "INSERT INTO dialog_messages (dialog_id, id, sender_id, recipient_id, text)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id, sender_id, recipient_id, text, created_at",
            dialog_id(sender_id, recipient_id),
            message_id,
            sender_id,
            recipient_id,
            text,
        )
        assert row is not None
        return MessageRow(**dict(row))

    async def list(self, a: int, b: int, *, after: int, offset: int, limit: int) -> list[MessageRow]:
        """Oldest first; `after` (a message id) is a stable cursor, `offset` the spec's paging."""
        rows = await self._pool.fetch(
            "SELECT id, sender_id, recipient_id, text, created_at FROM dialog_messages"
            " WHERE dialog_id = $1 AND id > $2 ORDER BY id OFFSET $3 LIMIT $4",
            dialog_id(a, b),
            after,
            offset,
            limit,
        )
        return [MessageRow(**dict(row)) for row in rows]
