"""The coordinator as every operation finds it: single-node or Citus, the cluster lock, and catalog reads.

Shared by provisioning, hot-user moves and the status report, which each start by asking what
is there (`cluster_mode`, `hot_worker`, `distribution`, `schema_tables`) rather than trusting
what should be there: the same code must run on single-node PostgreSQL and on a cluster that
`sn cluster init` set up only half-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from sn.citus.nodes import NodeAddress
from sn.citus.plan import HOT_WORKER_FUNCTION

Db = asyncpg.Connection | PoolConnectionProxy
Mode = Literal["citus", "single-node"]

# Serialises `sn cluster init` and hot-user moves across every process that talks to this
# coordinator (CLI, API workers, the automatic promoter). Not the migrations lock.
CLUSTER_LOCK_ID = 7_357_002


async def cluster_mode(conn: Db) -> Mode:
    """Citus when the extension is installed in this database, else single-node."""
    installed = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    return "citus" if installed else "single-node"


async def citus_unavailable_reason(conn: Db) -> str | None:
    """Why CREATE EXTENSION citus would fail here, or None when it would work."""
    available = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')")
    if not available:
        return "the citus extension is not installed on this server"
    preload = str(await conn.fetchval("SELECT current_setting('shared_preload_libraries')"))
    if "citus" not in [item.strip().strip('"') for item in preload.split(",")]:
        return "citus is installed but not in shared_preload_libraries"
    return None


@contextlib.asynccontextmanager
async def cluster_lock(conn: Db, *, wait: bool = True) -> AsyncIterator[bool]:
    """Session advisory lock on the coordinator; yields False when `wait` is off and it is taken."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", CLUSTER_LOCK_ID)
        got = True
    else:
        got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", CLUSTER_LOCK_ID))
    try:
        yield got
    finally:
        if got:
            await conn.execute("SELECT pg_advisory_unlock($1)", CLUSTER_LOCK_ID)


@contextlib.asynccontextmanager
async def dedicated_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own, without the pool's command timeout: shard moves take minutes."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def hot_worker(conn: Db) -> NodeAddress | None:
    """The hot worker `sn cluster init` recorded (in a SQL function the strategy also reads)."""
    if await conn.fetchval("SELECT to_regproc($1) IS NULL", HOT_WORKER_FUNCTION):
        return None
    row = await conn.fetchrow(f"SELECT host, port FROM {HOT_WORKER_FUNCTION}()")
    return NodeAddress(row["host"], row["port"]) if row is not None else None


async def distribution(conn: Db) -> dict[str, asyncpg.Record]:
    """Every Citus table (distributed, reference, citus-local) by name: method, model, group, column."""
    rows = await conn.fetch(
        "SELECT logicalrelid::regclass::text AS name, partmethod::text, repmodel::text, colocationid,"
        " CASE WHEN partkey IS NULL THEN NULL ELSE column_to_column_name(logicalrelid, partkey) END AS col"
        " FROM pg_dist_partition"
    )
    return {row["name"]: row for row in rows}


async def schema_tables(conn: Db) -> set[str]:
    """The tables of the current schema: what the migrations have created so far."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
    )
    return {row["relname"] for row in rows}
