"""Citus: cluster set-up (`sn cluster init`), hot users on the hot worker, cluster status.

The same schema runs on single-node PostgreSQL and on a Citus cluster. Every function here
first asks the database which one it is talking to (`cluster_mode`): without the citus
extension, init applies the migrations and stops, promotion only records the hot set, and the
status says "single-node".

On Citus (a coordinator, regular workers, and one hot worker):

- users, friendships, followers and posts are distributed by their user column in one
  colocation group, so everything a request reads about one user is on one shard;
  post_index, user_emails and dialog_messages are distributed by their own keys, each in a
  colocation group of its own; hot_users is a reference table; outbox and schema_migrations
  stay plain tables on the coordinator (see COORDINATOR_LOCAL for why).
- A hot user's rows are isolated into shards of their own (`isolate_tenant_to_new_shard(...,
  'CASCADE')`) and moved to the hot worker. The hot worker must have shouldhaveshards = true
  for Citus to accept the move, so what keeps regular shards off it, and hot shards on it, is
  the rebalance strategy `sn_hot_pinned` (made the default), whose placement function allows a
  shard on the hot worker if and only if it is an isolated shard of a hot user.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from sn.storage.migrations import apply_migrations

log = logging.getLogger("sn.cluster")

Db = asyncpg.Connection | PoolConnectionProxy
Mode = Literal["citus", "single-node"]
TransferMode = Literal["auto", "force_logical", "block_writes"]

# Serialises `sn cluster init` and hot-user moves across every process that talks to this
# coordinator (CLI, API workers, the automatic promoter). Not the migrations lock.
CLUSTER_LOCK_ID = 7_357_002

STRATEGY = "sn_hot_pinned"
HOT_WORKER_FUNCTION = "sn_hot_worker"
ALLOWED_FUNCTION = "sn_shard_allowed_on_node"


class ClusterError(Exception):
    """The cluster is not in a state the operation can work with; the message says what to do."""


class UnknownUser(ClusterError):
    pass


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    column: str
    # "none": a colocation group of its own; otherwise the table whose group it joins.
    colocate_with: str


# The distribution plan (docs/architecture.md, "Schema and the Citus distribution plan").
# post_index (bigint), user_emails and dialog_messages (text) use 'none': with the default
# colocation Citus would put post_index into the users group (same column type, same shard
# count) and user_emails with dialog_messages, and tenant isolation of a hot user would then
# split post_index too.
DISTRIBUTED: tuple[TableSpec, ...] = (
    TableSpec("users", "id", "none"),
    TableSpec("friendships", "user_id", "users"),
    TableSpec("followers", "author_id", "users"),
    TableSpec("posts", "author_id", "users"),
    TableSpec("post_index", "id", "none"),
    TableSpec("user_emails", "email", "none"),
    TableSpec("dialog_messages", "dialog_id", "none"),
)
REFERENCE: tuple[str, ...] = ("hot_users",)
COORDINATOR_LOCAL: dict[str, str] = {
    # The relay claims rows with `ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED` across all owners;
    # Citus refuses FOR UPDATE on a multi-shard query ("could not run distributed query with
    # FOR UPDATE/SHARE commands"). As a coordinator table it keeps its semantics, and a write
    # that touches shards and the outbox is still one (two-phase) transaction.
    "outbox": "relay uses FOR UPDATE SKIP LOCKED over all owners (not routable)",
    "schema_migrations": "bookkeeping of the migrations, read only by `sn migrate`",
}
COLOCATION_ANCHOR = "users"


# -- addresses ---------------------------------------------------------------------------------

_HOST = re.compile(r"^[A-Za-z0-9._-]+$|^\[[0-9A-Fa-f:.]+\]$")


@dataclass(frozen=True, slots=True, order=True)
class NodeAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_node(raw: str) -> NodeAddress:
    """`host:port` (or `[v6]:port`; the port defaults to 5432)."""
    text = raw.strip()
    host, port = text, "5432"
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        port = rest.removeprefix(":") or port
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"not a host:port: {raw!r}")
    return NodeAddress(host.strip("[]"), int(port))


def parse_nodes(raw: str | None) -> list[NodeAddress]:
    return [parse_node(item) for item in (raw or "").split(",") if item.strip()]


def address_of_url(url: str) -> NodeAddress:
    """The coordinator as the workers should reach it: the host and port of SN_DATABASE_URL."""
    parts = urlsplit(url)
    return NodeAddress(parts.hostname or "localhost", parts.port or 5432)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- mode ----------------------------------------------------------------------------------------


async def cluster_mode(conn: Db) -> Mode:
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


# -- sn cluster init -------------------------------------------------------------------------------


@dataclass
class InitResult:
    mode: Mode
    lines: list[str] = field(default_factory=list)


async def _registered_nodes(conn: Db) -> dict[NodeAddress, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT nodeid, groupid, nodename, nodeport, isactive, shouldhaveshards FROM pg_dist_node"
        " WHERE noderole = 'primary'"
    )
    return {NodeAddress(row["nodename"], row["nodeport"]): row for row in rows}


async def hot_worker(conn: Db) -> NodeAddress | None:
    """The hot worker `sn cluster init` recorded (in a SQL function the strategy also reads)."""
    if await conn.fetchval("SELECT to_regproc($1) IS NULL", HOT_WORKER_FUNCTION):
        return None
    row = await conn.fetchrow(f"SELECT host, port FROM {HOT_WORKER_FUNCTION}()")
    return NodeAddress(row["host"], row["port"]) if row is not None else None


async def _set_should_have_shards(conn: Db, node: NodeAddress, value: bool) -> None:
    await conn.execute("SELECT citus_set_node_property($1, $2, 'shouldhaveshards', $3)", node.host, node.port, value)


async def _distribution(conn: Db) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT logicalrelid::regclass::text AS name, partmethod::text, repmodel::text, colocationid,"
        " CASE WHEN partkey IS NULL THEN NULL ELSE column_to_column_name(logicalrelid, partkey) END AS col"
        " FROM pg_dist_partition"
    )
    return {row["name"]: row for row in rows}


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
    existing = await _distribution(conn)
    tables = await _schema_tables(conn)
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
    done = await _distribution(conn)
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


# -- hot users ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HotChange:
    user_id: int
    mode: Mode
    action: str  # promoted | already hot | demoted | not hot | recorded
    node: str | None  # where the user's shards are now (citus), or None
    steps: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "mode": self.mode,
            "action": self.action,
            "node": self.node,
            "steps": self.steps,
        }


async def _user_shard(conn: Db, user_id: int) -> tuple[int, bool, NodeAddress]:
    """(shard id, isolated, node holding it) of the user's users shard."""
    row = await conn.fetchrow(
        "SELECT s.shardid, s.shardminvalue = s.shardmaxvalue AS isolated, n.nodename, n.nodeport"
        " FROM pg_dist_shard s JOIN pg_dist_placement p ON p.shardid = s.shardid"
        " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'"
        " WHERE s.shardid = get_shard_id_for_distribution_column($1::regclass, $2::bigint)",
        COLOCATION_ANCHOR,
        user_id,
    )
    if row is None:
        raise ClusterError(f"no shard placement for user {user_id}: is {COLOCATION_ANCHOR} distributed?")
    return int(row["shardid"]), bool(row["isolated"]), NodeAddress(row["nodename"], row["nodeport"])


async def _move(conn: Db, shard_id: int, source: NodeAddress, target: NodeAddress, mode: TransferMode) -> None:
    await conn.execute(
        "SELECT citus_move_shard_placement($1::bigint, $2, $3, $4, $5,"
        " shard_transfer_mode => $6::citus.shard_transfer_mode)",
        shard_id,
        source.host,
        source.port,
        target.host,
        target.port,
        mode,
    )


async def _require_user(conn: Db, user_id: int) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id):
        raise UnknownUser(f"user {user_id} not found")


async def promote(
    conn: Db, user_id: int, *, reason: str = "manual", transfer_mode: TransferMode = "auto", wait: bool = True
) -> HotChange | None:
    """Make the user hot; on Citus isolate their rows and move them to the hot worker.

    Idempotent and resumable: each step checks where things are. Writes continue during the
    moves (`auto` copies with logical replication and blocks writes only for the final switch).
    Returns None when `wait` is off and another promotion holds the cluster lock.
    """
    await _require_user(conn, user_id)
    mode = await cluster_mode(conn)
    upsert = (
        "INSERT INTO hot_users (user_id, hot, reason, changed_at) VALUES ($1, true, $2, now())"
        " ON CONFLICT (user_id) DO UPDATE SET hot = true, reason = EXCLUDED.reason, changed_at = EXCLUDED.changed_at"
        " WHERE NOT hot_users.hot"
    )
    if mode == "single-node":
        await conn.execute(upsert, user_id, reason)
        return HotChange(user_id, mode, "recorded", None, ["single-node: recorded as hot, nothing to move"])
    async with cluster_lock(conn, wait=wait) as locked:
        if not locked:
            return None
        hot = await hot_worker(conn)
        if hot is None:
            raise ClusterError("no hot worker recorded: run `sn cluster init` with SN_CITUS_HOT_WORKER")
        steps: list[str] = []
        was_hot = bool(await conn.fetchval("SELECT hot FROM hot_users WHERE user_id = $1", user_id))
        # Recorded first: if a step below fails, the strategy already treats the user as hot, and a
        # re-run (or a rebalance, once isolated) finishes the job.
        await conn.execute(upsert, user_id, reason)
        shard_id, isolated, node = await _user_shard(conn, user_id)
        if not isolated:
            shard_id = int(
                await conn.fetchval(
                    "SELECT isolate_tenant_to_new_shard($1::regclass, $2::bigint, 'CASCADE',"
                    " shard_transfer_mode => $3::citus.shard_transfer_mode)",
                    COLOCATION_ANCHOR,
                    user_id,
                    transfer_mode,
                )
            )
            steps.append(f"isolated into shard {shard_id} (and its colocated shards) on {node}")
            shard_id, isolated, node = await _user_shard(conn, user_id)
        if node != hot:
            await _move(conn, shard_id, node, hot, transfer_mode)
            steps.append(f"moved shard group {shard_id} from {node} to the hot worker {hot}")
            node = hot
        action = "already hot" if was_hot and not steps else "promoted"
        log.info("user %d %s: %s", user_id, action, "; ".join(steps) or "nothing to do")
        return HotChange(user_id, mode, action, str(node), steps)


async def demote(conn: Db, user_id: int, *, transfer_mode: TransferMode = "auto") -> HotChange:
    """Back among regular users: the isolated shards move to the least loaded regular worker.

    The row stays with hot = false, so automatic promotion does not undo a demotion by hand.
    """
    await _require_user(conn, user_id)
    mode = await cluster_mode(conn)
    update = "UPDATE hot_users SET hot = false, reason = 'manual', changed_at = now() WHERE user_id = $1 AND hot"
    if mode == "single-node":
        changed = await conn.execute(update, user_id)
        return HotChange(user_id, mode, "demoted" if changed.endswith(" 1") else "not hot", None, [])
    async with cluster_lock(conn):
        hot = await hot_worker(conn)
        changed = await conn.execute(update, user_id)
        steps: list[str] = []
        shard_id, _, node = await _user_shard(conn, user_id)
        if hot is not None and node == hot:
            target_row = await conn.fetchrow(
                "SELECT n.nodename, n.nodeport FROM pg_dist_node n"
                " LEFT JOIN pg_dist_placement p ON p.groupid = n.groupid"
                " WHERE n.groupid <> 0 AND n.isactive AND n.noderole = 'primary' AND n.shouldhaveshards"
                " AND NOT (n.nodename = $1 AND n.nodeport = $2)"
                " GROUP BY n.nodename, n.nodeport ORDER BY count(p.shardid), n.nodename, n.nodeport LIMIT 1",
                hot.host,
                hot.port,
            )
            if target_row is None:
                raise ClusterError("no regular worker to move the user's shards to")
            target = NodeAddress(target_row["nodename"], target_row["nodeport"])
            await _move(conn, shard_id, node, target, transfer_mode)
            steps.append(f"moved shard group {shard_id} from the hot worker {hot} to {target}")
            node = target
        action = "demoted" if changed.endswith(" 1") or steps else "not hot"
        log.info("user %d %s: %s", user_id, action, "; ".join(steps) or "nothing to move")
        return HotChange(user_id, mode, action, str(node), steps)


async def hot_user_ids(conn: Db) -> list[int]:
    """The current hot set, for the application."""
    return [int(row["user_id"]) for row in await conn.fetch("SELECT user_id FROM hot_users WHERE hot ORDER BY user_id")]


class HotPromoter:
    """Promotes users whose follower count reached the live celebrity threshold, off the request path.

    Every worker runs one; each round reads the counts the app keeps in Redis
    (`sn:follower_counts`, one ZRANGE), and only when a candidate is not in hot_users yet does it
    open a connection and try the cluster lock, so one process in the deployment does the moves
    and the others skip. Only on Citus: on a single node there is nothing to move. Users demoted
    by hand (hot = false) are left alone.

    Bounded on purpose: one promotion per round, and none beyond `max_hot` hot users. Each
    isolation adds shards to every colocated table and the hot worker is one machine, so a
    threshold lowered by mistake (it is a live setting) must not start moving thousands of users.
    """

    def __init__(
        self,
        database_url: str,
        pool: asyncpg.Pool,
        celebrities: Callable[[int], Awaitable[list[tuple[int, int]]]],
        threshold: Callable[[], int],
        *,
        interval: float = 10.0,
        max_hot: int = 100,
    ) -> None:
        self._url = database_url
        self._max_hot = max_hot
        self._pool = pool
        self._celebrities = celebrities
        self._threshold = threshold
        self._interval = interval
        self._mode: Mode | None = None
        self._mode_checked = 0.0
        self.promoted = 0
        self.last_error: str | None = None

    async def _current_mode(self) -> Mode:
        now = asyncio.get_running_loop().time()
        if self._mode is None or now - self._mode_checked > 60:
            async with self._pool.acquire() as conn:
                self._mode = await cluster_mode(conn)
            self._mode_checked = now
        return self._mode

    async def round(self) -> list[int]:
        """One pass; returns the users promoted."""
        self.last_error = None
        candidates = [user for user, _ in await self._celebrities(self._threshold())]
        if not candidates or await self._current_mode() != "citus":
            return []
        known = {
            int(row["user_id"])
            for row in await self._pool.fetch(
                "SELECT user_id FROM hot_users WHERE user_id = ANY($1::bigint[])", candidates
            )
        }
        todo = [user for user in candidates if user not in known]
        if not todo:
            return []
        hot = int(await self._pool.fetchval("SELECT count(*) FROM hot_users WHERE hot") or 0)
        if hot >= self._max_hot:
            self.last_error = f"{len(todo)} user(s) over the threshold not promoted: {hot} hot users already"
            log.warning("automatic promotion paused: %s", self.last_error)
            return []
        async with dedicated_connection(self._url) as conn:
            for user in todo:
                try:
                    change = await promote(conn, user, reason="auto", wait=False)
                except UnknownUser:
                    continue  # counted in Redis, gone from the database
                if change is None:
                    return []  # another process is moving shards; the next round retries
                self.promoted += 1
                return [user]  # one per round (see the class docstring)
        return []

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except (OSError, asyncpg.PostgresError, ClusterError) as exc:
                # A cluster that is not set up, or a database that is away: retried next round.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("hot promotion round failed: %s", self.last_error)
            await asyncio.sleep(self._interval)


# -- status --------------------------------------------------------------------------------------------


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


async def _schema_tables(conn: Db) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
    )
    return {row["relname"] for row in rows}


def _hot_row(row: asyncpg.Record) -> dict[str, Any]:
    changed: dt.datetime = row["changed_at"]
    return {"user_id": str(row["user_id"]), "hot": row["hot"], "reason": row["reason"], "changed_at": changed}


async def _hot_rows(conn: Db, tables: set[str]) -> list[asyncpg.Record]:
    if "hot_users" not in tables:
        return []
    return list(await conn.fetch("SELECT user_id, hot, reason, changed_at FROM hot_users ORDER BY user_id LIMIT 1000"))


async def _single_node_status(conn: Db, database_url: str | None) -> dict[str, Any]:
    address = await _server_address(conn, database_url)
    tables = await _schema_tables(conn)
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

    tables = await _schema_tables(conn)
    dist = await _distribution(conn)
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

    hot_list: list[dict[str, Any]] = []
    hot_rows = await _hot_rows(conn, tables)
    if hot_rows and COLOCATION_ANCHOR in dist:
        placements = {
            int(row["user_id"]): row
            for row in await conn.fetch(
                "SELECT k.user_id, s.shardid, s.shardminvalue = s.shardmaxvalue AS isolated, n.nodename, n.nodeport"
                " FROM unnest($1::bigint[]) AS k(user_id)"
                " JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column($2::regclass, k.user_id)"
                " JOIN pg_dist_placement p ON p.shardid = s.shardid"
                " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'",
                [int(row["user_id"]) for row in hot_rows],
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
