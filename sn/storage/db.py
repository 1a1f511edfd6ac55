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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default runs RESET ALL / UNLISTEN / advisory unlock: one more
    round trip per query. Our pooled connections keep no session state (no SET, LISTEN or
    advisory locks: migrations use their own connection), and asyncpg still rolls back any open
    transaction itself before calling this."""


async def create_pool(
    settings: Settings,
    database_url: str,
    *,
    min_size: int | None = None,
    statement_cache_size: int | None = None,
    connect_timeout: float = 60.0,
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max,
        # Behind pgbouncer or a Citus coordinator prepared statements may be costly or unsupported;
        # 0 turns the cache off (SN_DB_STATEMENT_CACHE_SIZE).
        statement_cache_size=(
            settings.db_statement_cache_size if statement_cache_size is None else statement_cache_size
        ),
        command_timeout=settings.request_timeout_seconds,
        timeout=connect_timeout,
        init=_init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool
