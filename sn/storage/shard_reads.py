"""Single-shard reads sent straight to the Citus node that holds the shard.

Through the coordinator a router query costs two backends: the coordinator parses and plans it,
then ships the shard query as text to the worker, which parses and plans it again, plus a hop
between them. That made a cached-miss read about twice as expensive as on plain PostgreSQL.
Since Citus 11 every worker carries the distributed tables' metadata and accepts queries on
them, and a query whose shard is local runs through local execution in one backend. So reads
keyed by a distribution column go to the node that holds the key's shard; writes stay on the
coordinator (they share a transaction with the coordinator-local outbox).

Correctness never depends on the shard map being fresh: the query names the distributed table,
not a shard, so a node that no longer holds the shard (after a move or a hot-user isolation)
still answers it, just with an extra hop, until the next refresh. A node the app cannot reach
sends the read back to the coordinator.

The key-to-shard mapping is Citus's: PostgreSQL's ``hashint8`` of the value, looked up in the
shards' hash ranges (``pg_dist_shard``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("sn.shard_reads")

_MASK = 0xFFFFFFFF

# Tables whose reads are routed, with the column their shards are keyed by.
ROUTED_TABLES = ("users", "post_index")


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


class ShardMap:
    """Hash ranges to nodes, per table; pure data, built from `placements`."""

    def __init__(self, placements: Sequence[Placement]) -> None:
        self._starts: dict[str, list[int]] = {}
        self._ranges: dict[str, list[Placement]] = {}
        for placement in sorted(placements, key=lambda p: (p.table, p.min_hash)):
            self._starts.setdefault(placement.table, []).append(placement.min_hash)
            self._ranges.setdefault(placement.table, []).append(placement)

    def node_for(self, table: str, key: int) -> str | None:
        starts = self._starts.get(table)
        if not starts:
            return None
        h = hash_int8(key)
        index = bisect.bisect_right(starts, h) - 1
        if index < 0:
            return None
        placement = self._ranges[table][index]
        return placement.node if placement.min_hash <= h <= placement.max_hash else None

    @property
    def nodes(self) -> set[str]:
        return {p.node for ranges in self._ranges.values() for p in ranges}

    def __len__(self) -> int:
        return sum(len(ranges) for ranges in self._ranges.values())


_PLACEMENTS = """
SELECT s.logicalrelid::regclass::text AS table_name, s.shardminvalue, s.shardmaxvalue,
       n.nodename, n.nodeport
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
        self._unreachable: set[str] = set()
        self.direct = 0
        self.via_coordinator = 0

    @property
    def shard_map(self) -> ShardMap:
        return self._map

    async def refresh(self) -> None:
        """Reload the placements (after start, periodically, and after a promotion or demotion)."""
        self._map = ShardMap(await load_placements(self._coordinator))
        self._unreachable.clear()  # give nodes that failed another chance

    async def run(self, interval: float = 30.0) -> None:
        """Refresh the map every `interval` seconds; a failed refresh keeps the previous map."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("shard map refresh failed, keeping the previous one: %s", exc)

    async def pool_for(self, table: str, key: int) -> asyncpg.Pool:
        node = self._map.node_for(table, key)
        if node is None or node in self._unreachable:
            return self._coordinator
        pool = self._pools.get(node)
        if pool is None:
            try:
                pool = self._pools[node] = await self._open_pool(node_url(self._url, node))
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("node %s unreachable for direct reads (%s); reading through the coordinator", node, exc)
                self._unreachable.add(node)
                return self._coordinator
        return pool

    async def fetchrow(self, table: str, key: int, query: str, *args: object) -> asyncpg.Record | None:
        pool = await self.pool_for(table, key)
        row: asyncpg.Record | None
        if pool is not self._coordinator:
            try:
                row = await pool.fetchrow(query, *args)
            except (OSError, asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError):
                self._mark_unreachable(pool)
            else:
                self.direct += 1
                return row
        self.via_coordinator += 1
        row = await self._coordinator.fetchrow(query, *args)
        return row

    async def fetchval(self, table: str, key: int, query: str, *args: object) -> object:
        row = await self.fetchrow(table, key, query, *args)
        return row[0] if row is not None else None

    def _mark_unreachable(self, pool: asyncpg.Pool) -> None:
        for node, candidate in self._pools.items():
            if candidate is pool:
                log.warning("direct read on %s failed; reading through the coordinator until the next refresh", node)
                self._unreachable.add(node)

    def stats(self) -> dict[str, object]:
        return {
            "shards": len(self._map),
            "nodes": sorted(self._map.nodes),
            "open_pools": sorted(self._pools),
            "unreachable": sorted(self._unreachable),
            "direct_reads": self.direct,
            "coordinator_reads": self.via_coordinator,
        }

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
