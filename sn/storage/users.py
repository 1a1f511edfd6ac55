"""Users: registration, lookup, prefix search."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from sn.models import User
from sn.storage.shard_reads import PoolReads, ShardReads


@dataclass(frozen=True, slots=True)
class NewUser:
    id: int
    first_name: str
    second_name: str
    birthdate: dt.date
    city: str
    biography: str | None
    gender: str | None
    interests: list[str] | None
    email: str | None
    password_hash: str


class EmailTaken(Exception):
    pass


_USER_COLUMNS = "id, first_name, second_name, birthdate, biography, city, gender, interests"


def _to_user(row: asyncpg.Record) -> User:
    return User(
        id=str(row["id"]),
        first_name=row["first_name"],
        second_name=row["second_name"],
        birthdate=row["birthdate"],
        biography=row["biography"],
        city=row["city"],
        gender=row["gender"],
        interests=list(row["interests"]) if row["interests"] is not None else None,
    )


def _like_prefix(value: str) -> str:
    """A LIKE pattern matching `value` literally as a prefix (lower-cased, wildcards escaped)."""
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class UserRepository:
    def __init__(self, pool: asyncpg.Pool, reads: ShardReads | None = None) -> None:
        self._pool = pool
        # Citus: single-shard reads straight to the shard's node; otherwise through the pool.
        self._reads: ShardReads | PoolReads = reads or PoolReads(pool)

    async def create(self, user: NewUser) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if user.email is not None:
                inserted = await conn.fetchval(
                    "INSERT INTO user_emails (email, user_id) VALUES ($1, $2) "
                    "ON CONFLICT (email) DO NOTHING RETURNING user_id",
                    user.email,
                    user.id,
                )
                if inserted is None:
                    raise EmailTaken(user.email)
            await conn.execute(
                "INSERT INTO users (id, first_name, second_name, birthdate, biography, city, gender, interests,"
                " email, password_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                user.id,
                user.first_name,
                user.second_name,
                user.birthdate,
                user.biography,
                user.city,
                user.gender,
                user.interests,
                user.email,
                user.password_hash,
            )

    async def _fetchrow(self, user_id: int, query: str) -> asyncpg.Record | None:
        """`query` names the table `{table}`: on Citus it may run on the user's shard directly."""
        return await self._reads.fetchrow("users", user_id, query, user_id)

    async def get(self, user_id: int) -> User | None:
        row = await self._fetchrow(user_id, f"SELECT {_USER_COLUMNS} FROM {{table}} WHERE id = $1")
        return _to_user(row) if row is not None else None

    async def exists(self, user_id: int) -> bool:
        return await self._fetchrow(user_id, "SELECT id FROM {table} WHERE id = $1") is not None

    async def password_hash(self, user_id: int) -> str | None:
        row = await self._fetchrow(user_id, "SELECT password_hash FROM {table} WHERE id = $1")
        value = row["password_hash"] if row is not None else None
        return value if isinstance(value, str) else None

    async def search(self, first_name: str, last_name: str, limit: int, after_id: int = 0) -> list[User]:
        # Search is the one user query Citus cannot route to a single shard (it is not keyed by
        # id); the index keeps each shard's part a range scan and the LIMIT bounds it.
        rows = await self._pool.fetch(
            f"SELECT {_USER_COLUMNS} FROM users"
            " WHERE lower(first_name) LIKE $1 AND lower(second_name) LIKE $2 AND id > $3"
            " ORDER BY id LIMIT $4",
            _like_prefix(first_name),
            _like_prefix(last_name),
            after_id,
            limit,
        )
        return [_to_user(row) for row in rows]
