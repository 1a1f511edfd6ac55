"""The cluster status report: GET /admin/cluster/status and `sn cluster status` print the same dict.

It compares what the coordinator has (nodes, Citus tables, hot users' placements, the default
rebalance strategy) with the plan and lists every difference as a problem phrased as what to run,
so an operator reads one report instead of the Citus catalog. Read-only; a node that does not
answer is one problem in the report, not a failed request.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from sn.citus.coordinator import Db, citus_unavailable_reason, cluster_mode, distribution, hot_worker, schema_tables
from sn.citus.nodes import NodeAddress, address_of_url
from sn.citus.plan import COLOCATION_ANCHOR, COORDINATOR_LOCAL, DISTRIBUTED, REFERENCE, STRATEGY
from sn.ids import id_array


async def cluster_status(conn: asyncpg.Connection, *, database_url: str | None = None) -> dict[str, Any]:
    """What GET /admin/cluster/status and `sn cluster status` show.

    Give it a connection of its own (`dedicated_connection`): on Citus it lowers the session's node
    connection timeout, which must not stay behind on a pooled connection.
    """
    if await cluster_mode(conn) == "single-node":
        return await _single_node_status(conn, database_url)
    return await _citus_status(conn)


async def _server_address(conn: Db, database_url: str | None) -> NodeAddress | None:
    row = await conn.fetchrow("SELECT host(inet_server_addr()) AS host, inet_server_port() AS port")
    if row is not None and row["host"] is not None:
        return NodeAddress(row["host"], row["port"])
    return address_of_url(database_url) if database_url else None


def _hot_row(row: asyncpg.Record) -> dict[str, Any]:
    changed: dt.datetime = row["changed_at"]
    return {"user_id": str(row["user_id"]), "hot": row["hot"], "reason": row["reason"], "changed_at": changed}


async def _hot_rows(conn: Db, tables: set[str]) -> list[asyncpg.Record]:
    if "hot_users" not in tables:
        return []
    return list(await conn.fetch("SELECT user_id, hot, reason, changed_at FROM hot_users ORDER BY user_id LIMIT 1000"))


async def _single_node_status(conn: Db, database_url: str | None) -> dict[str, Any]:
    address = await _server_address(conn, database_url)
    tables = await schema_tables(conn)
    known = [spec.name for spec in DISTRIBUTED] + list(REFERENCE) + list(COORDINATOR_LOCAL)
    return {
        "mode": "single-node",
        "server_version": await conn.fetchval("SHOW server_version"),
        "citus": {"installed": False, "unavailable_reason": await citus_unavailable_reason(conn)},
        "nodes": [
            {
                "role": "single-node",
                "host": address.host if address else None,
                "port": address.port if address else None,
                "active": True,
                "reachable": True,
                "should_have_shards": None,
                "shard_count": 0,
                "shard_bytes": None,
            }
        ],
        "tables": [
            {
                "name": name,
                "type": "local",
                "distribution_column": None,
                "colocation_id": None,
                "colocated_with": [],
                "shard_count": 0,
            }
            for name in known
            if name in tables
        ],
        "hot_users": [
            {**_hot_row(row), "isolated": False, "node": str(address) if address else None, "on_hot_worker": None}
            for row in await _hot_rows(conn, tables)
        ],
        "rebalance_strategy": None,
        "problems": [],
    }


async def _citus_status(conn: Db) -> dict[str, Any]:
    problems: list[str] = []
    # A worker that does not answer must cost seconds, not the 30 s default, and must not fail
    # the whole report: each remote step below is separate and reports its own error.
    await conn.execute("SET citus.node_connection_timeout = 2000")
    hot = await hot_worker(conn)
    node_list = await _nodes(conn, hot, problems)
    tables = await schema_tables(conn)
    dist = await distribution(conn)
    table_list = await _tables(conn, tables, dist, problems)
    hot_list = await _hot_users(conn, tables, dist, hot, problems)
    strategy = await _strategy(conn, problems)
    return {
        "mode": "citus",
        "server_version": await conn.fetchval("SHOW server_version"),
        "citus": {
            "installed": True,
            "version": await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'citus'"),
        },
        "hot_worker": str(hot) if hot else None,
        "nodes": node_list,
        "tables": table_list,
        "hot_users": hot_list,
        "rebalance_strategy": strategy,
        "problems": problems,
    }


async def _nodes(conn: Db, hot: NodeAddress | None, problems: list[str]) -> list[dict[str, Any]]:
    """Each registered node: its role, whether the coordinator reaches it, its shards."""
    nodes = await conn.fetch(
        "SELECT n.nodeid, n.groupid, n.nodename, n.nodeport, n.isactive, n.shouldhaveshards,"
        " (SELECT count(*) FROM pg_dist_placement p WHERE p.groupid = n.groupid) AS shards"
        " FROM pg_dist_node n WHERE n.noderole = 'primary' ORDER BY n.groupid, n.nodeid"
    )
    node_list: list[dict[str, Any]] = []
    all_reachable = True
    for row in nodes:
        address = NodeAddress(row["nodename"], row["nodeport"])
        role = "coordinator" if row["groupid"] == 0 else "hot" if address == hot else "worker"
        try:
            reachable = bool(
                await conn.fetchval("SELECT citus_check_connection_to_node($1, $2)", address.host, address.port)
            )
            error = None
        except asyncpg.PostgresError as exc:
            reachable, error = False, str(exc)
        all_reachable = all_reachable and reachable
        if not reachable:
            problems.append(f"{role} {address} is not reachable from the coordinator" + (f": {error}" if error else ""))
        if not row["isactive"]:
            problems.append(f"{role} {address} is registered but inactive (citus_activate_node)")
        node_list.append(
            {
                "node_id": row["nodeid"],
                "role": role,
                "host": address.host,
                "port": address.port,
                "active": row["isactive"],
                "reachable": reachable,
                "should_have_shards": row["shouldhaveshards"],
                "shard_count": int(row["shards"]),
                "shard_bytes": None,
            }
        )
    if all_reachable:
        sizes = {
            NodeAddress(row["nodename"], row["nodeport"]): int(row["bytes"])
            for row in await conn.fetch(
                "SELECT nodename, nodeport, sum(shard_size)::bigint AS bytes FROM citus_shards GROUP BY 1, 2"
            )
        }
        for item in node_list:
            item["shard_bytes"] = sizes.get(NodeAddress(item["host"], item["port"]), 0)
    else:
        problems.append("shard sizes omitted: they are read from every node")
    roles = [item["role"] for item in node_list]
    if "coordinator" not in roles:
        problems.append("the coordinator is not registered: run `sn cluster init`")
    if "worker" not in roles:
        problems.append("no regular worker registered: run `sn cluster init` with SN_CITUS_WORKERS")
    if hot is None or "hot" not in roles:
        problems.append("no hot worker registered: run `sn cluster init` with SN_CITUS_HOT_WORKER")
    return node_list


async def _tables(
    conn: Db, tables: set[str], dist: dict[str, asyncpg.Record], problems: list[str]
) -> list[dict[str, Any]]:
    """Each Citus table with its group and shard count, the coordinator tables, and what the plan misses."""
    shard_counts = {
        row["name"]: int(row["n"])
        for row in await conn.fetch(
            "SELECT logicalrelid::regclass::text AS name, count(*) AS n FROM pg_dist_shard GROUP BY 1"
        )
    }
    table_list: list[dict[str, Any]] = []
    for name, row in sorted(dist.items()):
        kind = "reference" if row["partmethod"] == "n" and row["repmodel"] == "t" else "distributed"
        if row["partmethod"] == "n" and row["repmodel"] != "t":
            kind = "citus-local"
        table_list.append(
            {
                "name": name,
                "type": kind,
                "distribution_column": row["col"],
                "colocation_id": row["colocationid"],
                "colocated_with": sorted(
                    other
                    for other, o in dist.items()
                    if other != name and kind == "distributed" and o["colocationid"] == row["colocationid"]
                ),
                "shard_count": shard_counts.get(name, 0),
            }
        )
    for name in COORDINATOR_LOCAL:
        if name in tables and name not in dist:
            table_list.append(
                {
                    "name": name,
                    "type": "local",
                    "distribution_column": None,
                    "colocation_id": None,
                    "colocated_with": [],
                    "shard_count": 0,
                    "why": COORDINATOR_LOCAL[name],
                }
            )
    for spec in DISTRIBUTED:
        if spec.name not in dist:
            problems.append(f"table {spec.name} is not distributed: run `sn cluster init`")
    for name in REFERENCE:
        if name not in dist:
            problems.append(f"table {name} is not a reference table: run `sn cluster init`")
    return table_list


async def _hot_users(
    conn: Db, tables: set[str], dist: dict[str, asyncpg.Record], hot: NodeAddress | None, problems: list[str]
) -> list[dict[str, Any]]:
    """Each hot_users row with the shard and node that hold the user's rows now."""
    hot_list: list[dict[str, Any]] = []
    hot_rows = await _hot_rows(conn, tables)
    if hot_rows and COLOCATION_ANCHOR in dist:
        placements = {
            int(row["user_id"]): row
            for row in await conn.fetch(
                "SELECT k.user_id, s.shardid, s.shardminvalue = s.shardmaxvalue AS isolated, n.nodename, n.nodeport"
                " FROM unnest($1::text[]::bigint[]) AS k(user_id)"
                " JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column($2::regclass, k.user_id)"
                " JOIN pg_dist_placement p ON p.shardid = s.shardid"
                " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'",
                id_array(int(row["user_id"]) for row in hot_rows),
                COLOCATION_ANCHOR,
            )
        }
        for row in hot_rows:
            placement = placements.get(int(row["user_id"]))
            node = NodeAddress(placement["nodename"], placement["nodeport"]) if placement is not None else None
            isolated = bool(placement["isolated"]) if placement is not None else False
            item = {
                **_hot_row(row),
                "shard_id": int(placement["shardid"]) if placement is not None else None,
                "isolated": isolated,
                "node": str(node) if node else None,
                "on_hot_worker": node == hot if node and hot else False,
            }
            hot_list.append(item)
            if row["hot"] and not item["on_hot_worker"]:
                problems.append(
                    f"hot user {row['user_id']} is on {node}, not the hot worker: `sn hot promote {row['user_id']}`"
                    " finishes the promotion"
                )
    return hot_list


async def _strategy(conn: Db, problems: list[str]) -> dict[str, Any] | None:
    """The default rebalance strategy, the moves it would plan now, and the last rebalance job."""
    strategy_row = await conn.fetchrow(
        "SELECT name, shard_allowed_on_node_function::regproc::text AS allowed FROM pg_dist_rebalance_strategy"
        " WHERE default_strategy"
    )
    strategy: dict[str, Any] | None = None
    if strategy_row is not None:
        strategy = {"name": strategy_row["name"], "shard_allowed_on_node_function": strategy_row["allowed"]}
        if strategy_row["name"] != STRATEGY:
            problems.append(
                f"the default rebalance strategy is {strategy_row['name']}, not {STRATEGY}: hot shards are not pinned"
            )
        try:
            moves = await conn.fetch(
                "SELECT table_name::text AS t, shardid, sourcename, sourceport, targetname, targetport"
                " FROM get_rebalance_table_shards_plan()"
            )
            strategy["planned_moves"] = len(moves)
        except asyncpg.PostgresError as exc:
            strategy["planned_moves"] = None
            strategy["plan_error"] = str(exc)
        job = await conn.fetchrow(
            "SELECT job_id, state::text AS state, job_type::text AS job_type, started_at, finished_at"
            " FROM pg_dist_background_job ORDER BY job_id DESC LIMIT 1"
        )
        strategy["last_rebalance_job"] = dict(job) if job is not None else None
    return strategy
