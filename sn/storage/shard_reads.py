"""Single-shard reads sent straight to the shard table on the Citus node that holds it.

Through the coordinator a router query costs two backends: the coordinator plans it and ships
the shard query as text to the worker, which parses and plans it again. Measured here, that
made a cache-miss read more than twice as expensive as on plain PostgreSQL, and sending the
same query to the worker (Citus 11+ accepts queries on distributed tables on every node and
executes local shards in one backend) saved almost nothing: Citus's planning is the cost.

So a read keyed by a distribution column goes to the node holding the key's shard and names
the shard table itself (``users_102008``): plain PostgreSQL work, with a prepared statement.
Writes stay on the coordinator (they share a transaction with the coordinator-local outbox).

A shard map can be stale: a hot-user promotion isolates a tenant into new shards and moves
them, and a rebalance moves shards. The old shard table survives a move for a while (Citus
drops it later), so reading it could return data from before the move. Every direct read
therefore checks, in the same query and snapshot, that the node's own copy of the metadata
(synced to every node by Citus, in the same transaction as the move) still places the shard
here; if not, the read goes to the coordinator and the map is reloaded. A node the app cannot
reach also sends its reads to the coordinator, until the next reload.

The key-to-shard mapping is Citus's: PostgreSQL's ``hashint8`` of the value, looked up in the
shards' hash ranges (``pg_dist_shard``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("sn.shard_reads")

_MASK = 0xFFFFFFFF

# A node that failed is left alone this long before direct reads try it again.
UNREACHABLE_RETRY_SECONDS = 30.0

# What says "this node cannot answer now" (not "this query is wrong"): the read goes to the
# coordinator instead. A node restarting (admin/crash shutdown), out of connections or memory,
# a broken or timed-out connection.
_NODE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InterfaceError,
)

# Tables whose reads are routed (by their distribution column).
ROUTED_TABLES = ("users", "posts", "post_index")


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def hash_int8(value: int) -> int:
    """PostgreSQL's ``hashint8`` (Bob Jenkins' lookup3 ``final`` on one word) as a signed int32."""
    lohalf = value & _MASK
    hihalf = (value >> 32) & _MASK
    lohalf ^= hihalf if value >= 0 else (~hihalf & _MASK)
    a = b = c = (0x9E3779B9 + 4 + 3923095) & _MASK
    a = (a + lohalf) & _MASK
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c - (1 << 32) if c >= 1 << 31 else c


@dataclass(frozen=True, slots=True)
class Placement:
    table: str
    min_hash: int
    max_hash: int
    node: str  # host:port as registered in pg_dist_node
    shard_id: int = 0
    group_id: int = 0  # the node's group: what pg_dist_placement records for the shard


class ShardMap:
    """Hash ranges to nodes, per table; pure data, built from `placements`."""

    def __init__(self, placements: Sequence[Placement]) -> None:
        self._starts: dict[str, list[int]] = {}
        self._ranges: dict[str, list[Placement]] = {}
        for placement in sorted(placements, key=lambda p: (p.table, p.min_hash)):
            self._starts.setdefault(placement.table, []).append(placement.min_hash)
            self._ranges.setdefault(placement.table, []).append(placement)

    def placement_for(self, table: str, key: int) -> Placement | None:
        starts = self._starts.get(table)
        if not starts:
            return None
        h = hash_int8(key)
        index = bisect.bisect_right(starts, h) - 1
        if index < 0:
            return None
        placement = self._ranges[table][index]
        return placement if placement.min_hash <= h <= placement.max_hash else None

    def node_for(self, table: str, key: int) -> str | None:
        placement = self.placement_for(table, key)
        return placement.node if placement is not None else None

    @property
    def nodes(self) -> set[str]:
        return {p.node for ranges in self._ranges.values() for p in ranges}

    def __len__(self) -> int:
        return sum(len(ranges) for ranges in self._ranges.values())


_PLACEMENTS = """
SELECT s.logicalrelid::regclass::text AS table_name, s.shardid, s.shardminvalue, s.shardmaxvalue,
       n.nodename, n.nodeport, n.groupid
FROM pg_dist_shard s
JOIN pg_dist_placement p ON p.shardid = s.shardid
JOIN pg_dist_node n ON n.groupid = p.groupid
WHERE s.logicalrelid::regclass::text = ANY($1::text[])
  AND n.isactive AND n.hasmetadata AND n.metadatasynced AND n.noderole = 'primary'
"""


async def load_placements(conn: asyncpg.Connection | asyncpg.Pool) -> list[Placement]:
    rows = await conn.fetch(_PLACEMENTS, list(ROUTED_TABLES))
    return [
        Placement(
            table=row["table_name"],
            min_hash=int(row["shardminvalue"]),
            max_hash=int(row["shardmaxvalue"]),
            node=f"{row['nodename']}:{row['nodeport']}",
            shard_id=row["shardid"],
            group_id=row["groupid"],
        )
        for row in rows
        if row["shardminvalue"] is not None
    ]


def node_url(database_url: str, node: str) -> str:
    """The coordinator's URL with another node's host and port: Citus nodes share credentials."""
    parts = urlsplit(database_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{node}" if credentials else node
    return urlunsplit(parts._replace(netloc=netloc))


PoolFactory = Callable[[str], Awaitable[asyncpg.Pool]]


class PoolReads:
    """`ShardReads`' interface over one pool: plain PostgreSQL, or Citus with direct reads off.
    Repositories write their single-shard reads once, with ``{table}`` for the table name."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetchrow(self, table: str, key: int, query: str, *args: object) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(query.format(table=table), *args)
        return row

    async def fetchval(self, table: str, key: int, query: str, *args: object) -> object:
        return await self._pool.fetchval(query.format(table=table), *args)


class ShardReads:
    """Picks the pool for a single-shard read; owns one small pool per node, opened on first use."""

    def __init__(
        self, coordinator: asyncpg.Pool, database_url: str, open_pool: PoolFactory, shard_map: ShardMap | None = None
    ) -> None:
        self._coordinator = coordinator
        self._url = database_url
        self._open_pool = open_pool
        self._map = shard_map or ShardMap([])
        self._pools: dict[str, asyncpg.Pool] = {}
        self._unreachable: dict[str, float] = {}  # node -> when to try it again (monotonic)
        self._refreshing = asyncio.Lock()
        self._statements: dict[tuple[str, int, int], str] = {}
        self._reload: asyncio.Future[None] | None = None
        self.direct = 0
        self.via_coordinator = 0
        self.stale_reads = 0

    @property
    def shard_map(self) -> ShardMap:
        return self._map

    async def refresh(self) -> None:
        """Reload the placements (after start, periodically, and after a promotion or demotion)."""
        # One at a time: a slow load finishing last must not replace a newer map.
        async with self._refreshing:
            self._map = ShardMap(await load_placements(self._coordinator))

    async def run(self, interval: float = 30.0) -> None:
        """Refresh the map every `interval` seconds; a failed refresh keeps the previous map."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("shard map refresh failed, keeping the previous one: %s", exc)

    def _reachable(self, node: str) -> bool:
        retry_at = self._unreachable.get(node)
        if retry_at is None:
            return True
        if time.monotonic() < retry_at:
            return False
        del self._unreachable[node]
        return True

    async def _node_pool(self, node: str) -> asyncpg.Pool | None:
        pool = self._pools.get(node)
        if pool is None:
            try:
                pool = self._pools[node] = await self._open_pool(node_url(self._url, node))
            except (OSError, asyncpg.PostgresError) as exc:
                self._mark_unreachable(node, exc)
                return None
        return pool

    def _guarded(self, query: str, placement: Placement) -> str:
        """`query` on the shard table, with the "is the shard still here" check in the same snapshot."""
        key = (query, placement.shard_id, placement.group_id)
        text = self._statements.get(key)
        if text is None:
            inner = query.format(table=f"{placement.table}_{placement.shard_id}")
            text = (
                "SELECT g.sn_shard_here, t.* FROM (SELECT EXISTS (SELECT 1 FROM pg_dist_placement"
                f" WHERE shardid = {placement.shard_id} AND groupid = {placement.group_id}) AS sn_shard_here) AS g"
                f" LEFT JOIN LATERAL ({inner}) AS t ON g.sn_shard_here"
            )
            if len(self._statements) > 10_000:  # bounded: shard ids change with every isolation
                self._statements.clear()
            self._statements[key] = text
        return text

    async def fetchrow(self, table: str, key: int, query: str, *args: object) -> asyncpg.Record | None:
        """One row of `query`, which names its table as ``{table}`` and selects at least one NOT NULL
        column (so a missing row and a row of NULLs cannot be confused in the guarded form)."""
        placement = self._map.placement_for(table, key)
        if placement is not None and self._reachable(placement.node):
            pool = await self._node_pool(placement.node)
            if pool is not None:
                try:
                    row: asyncpg.Record | None = await pool.fetchrow(self._guarded(query, placement), *args)
                except _NODE_DOWN as exc:
                    self._mark_unreachable(placement.node, exc)
                except asyncpg.exceptions.UndefinedTableError:
                    self._moved()  # the shard table is already gone
                else:
                    assert row is not None  # the guarded form always returns its one row
                    if row[0]:
                        self.direct += 1
                        return row if any(row[i] is not None for i in range(1, len(row))) else None
                    self._moved()
        self.via_coordinator += 1
        found: asyncpg.Record | None = await self._coordinator.fetchrow(query.format(table=table), *args)
        return found

    async def fetchval(self, table: str, key: int, query: str, *args: object) -> object:
        """The last column of `fetchrow` (the guarded form puts its check first)."""
        row = await self.fetchrow(table, key, query, *args)
        return row[len(row) - 1] if row is not None else None

    def _moved(self) -> None:
        """A shard left the node the map names: reload the map soon (once, however many reads noticed)."""
        self.stale_reads += 1
        if self._reload is None or self._reload.done():
            self._reload = asyncio.ensure_future(self._reload_now())

    async def _reload_now(self) -> None:
        try:
            await self.refresh()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("shard map reload failed, keeping the previous one: %s", exc)

    def _mark_unreachable(self, node: str, exc: BaseException) -> None:
        log.warning(
            "direct reads on %s failed (%s: %s); through the coordinator for %.0f s",
            node,
            type(exc).__name__,
            exc,
            UNREACHABLE_RETRY_SECONDS,
        )
        self._unreachable[node] = time.monotonic() + UNREACHABLE_RETRY_SECONDS

    def stats(self) -> dict[str, object]:
        return {
            "shards": len(self._map),
            "nodes": sorted(self._map.nodes),
            "open_pools": sorted(self._pools),
            "unreachable": sorted(self._unreachable),
            "direct_reads": self.direct,
            "coordinator_reads": self.via_coordinator,
            "stale_map_reads": self.stale_reads,
        }

    async def close(self) -> None:
        if self._reload is not None:
            self._reload.cancel()
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
