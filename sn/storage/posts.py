"""Posts, stored on their author's shard; post_index maps a bare post id to its author."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from sn.ids import id_array
from sn.pipeline.events import PostEvent
from sn.pipeline.outbox import Outbox
from sn.storage.shard_reads import PoolReads, ShardReads


@dataclass(frozen=True, slots=True)
class PostRow:
    id: int
    author_id: int
    text: str
    created_at: dt.datetime


def _to_post(row: asyncpg.Record) -> PostRow:
    return PostRow(id=row["id"], author_id=row["author_id"], text=row["text"], created_at=row["created_at"])


def created_at_text(value: dt.datetime) -> str:
    """The API's rendering of a timestamp (msgspec's), so events and REST responses agree."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def post_event(kind: str, row: PostRow) -> PostEvent:
    return PostEvent(
        type=kind,  # type: ignore[arg-type]
        post_id=row.id,
        author_id=row.author_id,
        text=row.text,
        created_at=created_at_text(row.created_at),
    )


class PostRepository:
    """Every write also records its feed event in the outbox, in the same transaction."""

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox | None = None, reads: ShardReads | None = None) -> None:
        self._pool = pool
        self._outbox = outbox
        # Citus: single-shard reads straight to the shard on its node (storage/shard_reads.py).
        self._reads: ShardReads | PoolReads = reads or PoolReads(pool)

    async def create(self, post_id: int, author_id: int, text: str) -> PostRow:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO posts (author_id, id, text) VALUES ($1, $2, $3) RETURNING id, author_id, text, created_at",
                author_id,
                post_id,
                text,
            )
            await conn.execute("INSERT INTO post_index (id, author_id) VALUES ($1, $2)", post_id, author_id)
            assert row is not None
            post = _to_post(row)
            if self._outbox is not None:
                await self._outbox.add(conn, post_event("post_created", post))
        return post

    async def author_of(self, post_id: int) -> int | None:
        query = "SELECT author_id FROM {table} WHERE id = $1"
        value = await self._reads.fetchval("post_index", post_id, query, post_id)
        return int(value) if isinstance(value, int) else None

    async def get(self, author_id: int, post_id: int) -> PostRow | None:
        query = "SELECT id, author_id, text, created_at FROM {table} WHERE author_id = $1 AND id = $2"
        row = await self._reads.fetchrow("posts", author_id, query, author_id, post_id)
        return _to_post(row) if row is not None else None

    async def get_many(self, keys: list[tuple[int, int]]) -> list[PostRow]:
        """Posts by (author_id, post_id); missing ones are simply absent from the result."""
        if not keys:
            return []
        rows = await self._pool.fetch(
            "SELECT p.id, p.author_id, p.text, p.created_at FROM posts p"
            " JOIN unnest($1::text[]::bigint[], $2::text[]::bigint[]) AS k(author_id, id)"
            " ON p.author_id = k.author_id AND p.id = k.id",
            id_array(author for author, _ in keys),
            id_array(post for _, post in keys),
        )
        return [_to_post(row) for row in rows]

    async def update(self, author_id: int, post_id: int, text: str) -> PostRow | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE posts SET text = $3, updated_at = now() WHERE author_id = $1 AND id = $2"
                " RETURNING id, author_id, text, created_at",
                author_id,
                post_id,
                text,
            )
            if row is None:
                return None
            post = _to_post(row)
            if self._outbox is not None:
                await self._outbox.add(conn, post_event("post_updated", post))
        return post

    async def delete(self, author_id: int, post_id: int) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM posts WHERE author_id = $1 AND id = $2 RETURNING true", author_id, post_id
            )
            await conn.execute("DELETE FROM post_index WHERE id = $1", post_id)
            if deleted and self._outbox is not None:
                await self._outbox.add(conn, PostEvent(type="post_deleted", post_id=post_id, author_id=author_id))
        return bool(deleted)

    async def feed_keys(
        self, authors: list[int], limit: int, before: int | None = None, offset: int = 0
    ) -> list[tuple[int, int]]:
        """(post_id, author_id) of the authors' newest posts, newest first.

        This is the feed rebuild: it spans many authors, so on Citus it is a multi-shard query,
        bounded by the LIMIT (each shard returns at most offset+limit rows).
        """
        if not authors:
            return []
        rows = await self._pool.fetch(
            "SELECT id, author_id FROM posts WHERE author_id = ANY($1::text[]::bigint[]) AND id < $2"
            " ORDER BY id DESC OFFSET $3 LIMIT $4",
            id_array(authors),
            before if before is not None else (1 << 63) - 1,
            offset,
            limit,
        )
        return [(row["id"], row["author_id"]) for row in rows]

    async def recent_by_author(self, author_id: int, limit: int, before: int | None = None) -> list[tuple[int, int]]:
        rows = await self._pool.fetch(
            "SELECT id, author_id FROM posts WHERE author_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            author_id,
            before if before is not None else (1 << 63) - 1,
            limit,
        )
        return [(row["id"], row["author_id"]) for row in rows]
