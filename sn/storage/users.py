"""Users: registration, lookup, prefix search."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from sn.models import User
from sn.storage.name_keys import prefix_bounds, search_key
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
    # The OTUS spec types these as strings (and ours as a list): an unset one is empty, not null.
    return User(
        id=str(row["id"]),
        first_name=row["first_name"],
        second_name=row["second_name"],
        birthdate=row["birthdate"],
        biography=row["biography"] or "",
        city=row["city"],
        gender=row["gender"] or "",
        interests=list(row["interests"]) if row["interests"] is not None else [],
    )


def _key_range(column: str, value: str, first_param: int) -> tuple[str, list[str]]:
    """`column` starts with `value` (as search keys), as an indexable range; and its parameters."""
    low, high = prefix_bounds(value)
    if high is None:
        return f"{column} >= ${first_param}", [low]
    return f"{column} >= ${first_param} AND {column} < ${first_param + 1}", [low, high]


def search_query(first_name: str, last_name: str, limit: int, after_id: int) -> tuple[str, list[object]]:
    """The search's SQL and its parameters: both names as prefixes of their search keys.

    Search is the one user query Citus cannot route to a single shard (it is not keyed by id);
    the key index keeps each shard's part a range scan and the LIMIT bounds it."""
    first, first_args = _key_range("first_name_key", first_name, 1)
    last, last_args = _key_range("second_name_key", last_name, 1 + len(first_args))
    n = 1 + len(first_args) + len(last_args)
    sql = f"SELECT {_USER_COLUMNS} FROM users WHERE {first} AND {last} AND id > ${n} ORDER BY id LIMIT ${n + 1}"
    return sql, [*first_args, *last_args, after_id, limit]


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
                " email, password_hash, first_name_key, second_name_key)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
                search_key(user.first_name),
                search_key(user.second_name),
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
        sql, args = search_query(first_name, last_name, limit, after_id)
        rows = await self._pool.fetch(sql, *args)
        return [_to_user(row) for row in rows]
