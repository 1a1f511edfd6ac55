"""The asyncpg pool, created per worker process in a Sanic listener."""

from __future__ import annotations

import asyncpg
import orjson

from sn.settings import Settings


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb through orjson: faster than the stdlib and the same encoder the API uses.
    await conn.set_type_codec(
        "jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
    )


async def create_pool(settings: Settings, database_url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        # Behind pgbouncer or a Citus coordinator prepared statements may be costly or unsupported;
        # 0 turns the cache off (SN_DB_STATEMENT_CACHE_SIZE).
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=settings.request_timeout_seconds,
        init=_init_connection,
    )
    assert pool is not None
    return pool
