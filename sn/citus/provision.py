"""`sn cluster init`: register the nodes, create the extension, distribute and colocate the tables.

Idempotent by design, since operators (and the compose / Kubernetes one-shot job) run it again
after any change: each step looks at what the coordinator already has and adds only what is
missing, reporting one line per decision. On PostgreSQL without Citus it applies the migrations
and says why it stopped there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from sn.citus.coordinator import (
    Db,
    Mode,
    citus_unavailable_reason,
    cluster_lock,
    cluster_mode,
    distribution,
    hot_worker,
    schema_tables,
)
from sn.citus.errors import ClusterError
from sn.citus.nodes import NodeAddress
from sn.citus.plan import (
    ALLOWED_FUNCTION,
    COLOCATION_ANCHOR,
    COORDINATOR_LOCAL,
    DISTRIBUTED,
    HOT_WORKER_FUNCTION,
    REFERENCE,
    STRATEGY,
)
from sn.storage.migrations import apply_migrations


@dataclass
class InitResult:
    """What init found and did, one line per decision: the CLI prints them, the tests read them."""

    mode: Mode
    lines: list[str] = field(default_factory=list)


async def _registered_nodes(conn: Db) -> dict[NodeAddress, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT nodeid, groupid, nodename, nodeport, isactive, shouldhaveshards FROM pg_dist_node"
        " WHERE noderole = 'primary'"
    )
    return {NodeAddress(row["nodename"], row["nodeport"]): row for row in rows}


async def _set_should_have_shards(conn: Db, node: NodeAddress, value: bool) -> None:
    await conn.execute("SELECT citus_set_node_property($1, $2, 'shouldhaveshards', $3)", node.host, node.port, value)


def _literal(value: str) -> str:
    # The hot worker's host is written into a function body, where no bind parameter reaches.
    return "'" + value.replace("'", "''") + "'"


async def init_cluster(
    conn: asyncpg.Connection,
    *,
    coordinator: NodeAddress,
    workers: Sequence[NodeAddress],
    hot: NodeAddress | None,
) -> InitResult:
    """Idempotent: registers what is missing, applies migrations, distributes what is not yet."""
    if await cluster_mode(conn) == "single-node":
        reason = await citus_unavailable_reason(conn)
        if reason is not None:
            applied = await apply_migrations(conn)
            result = InitResult("single-node")
            result.lines.append(f"single-node PostgreSQL: {reason}; the schema stays single-node")
            result.lines.append(f"migrations: {len(applied)} applied")
            if workers or hot:
                result.lines.append("note: SN_CITUS_WORKERS / SN_CITUS_HOT_WORKER are ignored without Citus")
            return result
        await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        created = True
    else:
        created = False
    async with cluster_lock(conn):
        result = InitResult("citus")
        if created:
            result.lines.append("created extension citus")
        await _register_nodes(conn, result, coordinator, workers, hot)
        applied = await apply_migrations(conn)
        result.lines.append(f"migrations: {len(applied)} applied")
        await _distribute(conn, result)
        await _install_strategy(conn, result)
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
        result.lines.append(f"citus {version}: cluster ready")
        return result


async def _register_nodes(
    conn: Db, result: InitResult, coordinator: NodeAddress, workers: Sequence[NodeAddress], hot: NodeAddress | None
) -> None:
    nodes = await _registered_nodes(conn)
    current = next((addr for addr, row in nodes.items() if row["groupid"] == 0), None)
    if current is None:
        await conn.execute("SELECT citus_set_coordinator_host($1, $2)", coordinator.host, coordinator.port)
        result.lines.append(f"registered the coordinator as {coordinator}")
    else:
        result.lines.append(f"coordinator already registered as {current}")
    recorded_hot = await hot_worker(conn)
    hot = hot or recorded_hot
    if hot is None:
        raise ClusterError("SN_CITUS_HOT_WORKER is not set (host:port of the worker reserved for hot users)")
    if recorded_hot is not None and recorded_hot != hot:
        result.lines.append(
            f"WARNING: the hot worker changes from {recorded_hot} to {hot}: hot users' shards move there on the"
            " next rebalance (citus_rebalance_start())"
        )
    if hot in workers:
        raise ClusterError(f"{hot} is listed both in SN_CITUS_WORKERS and as SN_CITUS_HOT_WORKER")
    known_workers = [addr for addr, row in nodes.items() if row["groupid"] != 0 and addr != hot]
    if not workers and not known_workers:
        raise ClusterError("SN_CITUS_WORKERS is not set and no worker is registered (host:port,host:port)")
    for node in [*workers, hot]:
        role = "hot worker" if node == hot else "worker"
        if node in nodes:
            result.lines.append(f"{role} {node} already registered")
            continue
        try:
            await conn.execute("SELECT citus_add_node($1, $2)", node.host, node.port)
        except asyncpg.PostgresError as exc:
            # Citus' own message ("failure on connection marked as essential") does not say why.
            database = await conn.fetchval("SELECT current_database()")
            raise ClusterError(
                f"could not add {role} {node}: {exc}. The node must accept connections from the coordinator and"
                f" have the database {database!r} with the citus extension (CREATE EXTENSION citus):"
                " Citus does not create databases on workers"
            ) from exc
        result.lines.append(f"added {role} {node}")
    others = sorted(addr for addr in known_workers if addr not in workers)
    if others:
        listed = ", ".join(map(str, others))
        result.lines.append(f"also registered (not in SN_CITUS_WORKERS, left as they are): {listed}")
    # The function is the single record of which node is hot: the placement function, the
    # promotion code and the status endpoint all read it.
    await conn.execute(
        f"CREATE OR REPLACE FUNCTION {HOT_WORKER_FUNCTION}(OUT host text, OUT port integer)"
        f" LANGUAGE sql IMMUTABLE AS $$ SELECT {_literal(hot.host)}::text, {hot.port} $$"
    )


async def _distribute(conn: Db, result: InitResult) -> None:
    existing = await distribution(conn)
    tables = await schema_tables(conn)
    pending = [spec for spec in DISTRIBUTED if spec.name not in existing and spec.name in tables]
    pending_reference = [name for name in REFERENCE if name not in existing and name in tables]
    hot = await hot_worker(conn)
    assert hot is not None  # _register_nodes recorded it
    if pending or pending_reference:
        # New shards go to every node with shouldhaveshards = true: keep the hot worker out while
        # creating them. (Colocated tables follow their group's placements, hot shards included.)
        await _set_should_have_shards(conn, hot, False)
        for spec in pending:
            await conn.execute(
                "SELECT create_distributed_table($1::regclass, $2, colocate_with => $3)",
                spec.name,
                spec.column,
                spec.colocate_with,
            )
            # Rows that were in the local table were copied into shards; the coordinator's copy is
            # now invisible dead weight.
            await conn.execute("SELECT truncate_local_data_after_distributing_table($1::regclass)", spec.name)
            group = f"colocated with {spec.colocate_with}" if spec.colocate_with != "none" else "own colocation group"
            result.lines.append(f"distributed {spec.name} by {spec.column} ({group})")
        for name in pending_reference:
            await conn.execute("SELECT create_reference_table($1::regclass)", name)
            await conn.execute("SELECT truncate_local_data_after_distributing_table($1::regclass)", name)
            result.lines.append(f"made {name} a reference table")
    done = await distribution(conn)
    anchor = done.get(COLOCATION_ANCHOR)
    for spec in DISTRIBUTED:
        row = done.get(spec.name)
        if row is None:
            result.lines.append(f"WARNING: table {spec.name} does not exist; not distributed")
            continue
        if spec not in pending:
            result.lines.append(f"{spec.name} already distributed by {row['col']}")
        if row["col"] != spec.column:
            result.lines.append(f"WARNING: {spec.name} is distributed by {row['col']}, the plan says {spec.column}")
        if spec.colocate_with != "none" and anchor is not None and row["colocationid"] != anchor["colocationid"]:
            result.lines.append(f"WARNING: {spec.name} is not colocated with {spec.colocate_with}")
    for name in REFERENCE:
        if name in done and name not in pending_reference:
            result.lines.append(f"{name} already a reference table")
    for name, why in COORDINATOR_LOCAL.items():
        if name in tables and name not in done:
            result.lines.append(f"{name} stays a coordinator table: {why}")


async def _install_strategy(conn: Db, result: InitResult) -> None:
    # A shard may sit on the hot worker if and only if it is an isolated shard (one hash value) of
    # the users colocation group whose hash is a hot user's. Shards of other groups and regular
    # users' shards are allowed everywhere else. A user in hot_users whose shard is not isolated
    # yet (promotion under way, or failed half-way) counts as regular until it is.
    await conn.execute(
        f"""CREATE OR REPLACE FUNCTION {ALLOWED_FUNCTION}(p_shardid bigint, p_nodeid integer)
            RETURNS boolean LANGUAGE sql STABLE AS $$
            SELECT (
                SELECT EXISTS (
                    SELECT 1 FROM pg_dist_shard s
                    JOIN pg_dist_partition p ON p.logicalrelid = s.logicalrelid
                    JOIN pg_dist_partition u ON u.logicalrelid = '{COLOCATION_ANCHOR}'::regclass
                                            AND u.colocationid = p.colocationid
                    JOIN hot_users h ON h.hot AND s.shardminvalue = worker_hash(h.user_id)::text
                    WHERE s.shardid = p_shardid AND s.shardmaxvalue = s.shardminvalue)
            ) = (
                SELECT EXISTS (
                    SELECT 1 FROM pg_dist_node n, {HOT_WORKER_FUNCTION}() w
                    WHERE n.nodeid = p_nodeid AND n.nodename = w.host AND n.nodeport = w.port)
            )
            $$"""
    )
    rows = await conn.fetch("SELECT name, default_strategy FROM pg_dist_rebalance_strategy")
    strategies = {row["name"]: row for row in rows}
    if STRATEGY not in strategies:
        await conn.execute(
            "SELECT citus_add_rebalance_strategy($1, 'citus_shard_cost_1', 'citus_node_capacity_1', $2, 0, 0, 0)",
            STRATEGY,
            ALLOWED_FUNCTION,
        )
        result.lines.append(f"added rebalance strategy {STRATEGY} (hot shards only on the hot worker)")
    if STRATEGY not in strategies or not strategies[STRATEGY]["default_strategy"]:
        await conn.execute("SELECT citus_set_default_rebalance_strategy($1)", STRATEGY)
        result.lines.append(f"{STRATEGY} is the default rebalance strategy")
    else:
        result.lines.append(f"rebalance strategy {STRATEGY} already the default")
    # Citus refuses to move shards to a node with shouldhaveshards = false, and a rebalance drains
    # such a node; the strategy is what keeps regular shards off the hot worker.
    hot = await hot_worker(conn)
    assert hot is not None
    nodes = await _registered_nodes(conn)
    if not nodes[hot]["shouldhaveshards"]:
        await _set_should_have_shards(conn, hot, True)
    result.lines.append(f"hot worker {hot}: shouldhaveshards = true, pinned by {STRATEGY}")
