"""Hot users: promote (isolate a user's rows and move them to the hot worker), demote, the auto-promoter.

A celebrity's rows are read by every follower's feed and written by a stream of fan-outs; on a
worker of their own they cannot slow the regular users' shards. Each operation is idempotent and
resumable (it checks where the shards are before each step), takes the cluster lock so that only
one process moves shards at a time, and on single-node PostgreSQL only records the hot set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from sn.citus.coordinator import Db, Mode, cluster_lock, cluster_mode, dedicated_connection, hot_worker
from sn.citus.errors import ClusterError
from sn.citus.nodes import NodeAddress
from sn.citus.plan import COLOCATION_ANCHOR
from sn.ids import id_array

# The name of the logger from before the package was split, so that the log lines stay the same.
log = logging.getLogger("sn.cluster")

TransferMode = Literal["auto", "force_logical", "block_writes"]


class UnknownUser(ClusterError):
    """No such user: the admin API answers 404 rather than the 409 of other cluster errors."""


@dataclass(frozen=True, slots=True)
class HotChange:
    """What a promotion or demotion did: the CLI prints it, the admin API returns `as_dict()`."""

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

    A promotion that was recorded but not finished (its process killed during a move, a step
    that failed) is finished by a later round of any process, before any new one starts.

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
        """One pass; returns the users promoted (or whose promotion it finished)."""
        self.last_error = None
        candidates = [user for user, _ in await self._celebrities(self._threshold())]
        if await self._current_mode() != "citus":
            return []
        # First the promotions something interrupted (a process killed in a move, a failed step):
        # recorded hot, so no longer candidates, their rows would otherwise stay where they were.
        todo = await self._unfinished()
        if not todo and candidates:
            known = {
                int(row["user_id"])
                for row in await self._pool.fetch(
                    "SELECT user_id FROM hot_users WHERE user_id = ANY($1::text[]::bigint[])", id_array(candidates)
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
        if not todo:
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

    async def _unfinished(self) -> list[int]:
        """Hot users whose rows are not on the hot worker (none while no hot worker is recorded)."""
        async with self._pool.acquire() as conn:
            hot = await hot_worker(conn)
            if hot is None:
                return []
            rows = await conn.fetch(
                "SELECT h.user_id FROM hot_users h"
                " JOIN pg_dist_placement p"
                " ON p.shardid = get_shard_id_for_distribution_column($1::regclass, h.user_id)"
                " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'"
                " WHERE h.hot AND NOT (n.nodename = $2 AND n.nodeport = $3) ORDER BY h.changed_at",
                COLOCATION_ANCHOR,
                hot.host,
                hot.port,
            )
        return [int(row["user_id"]) for row in rows]

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except (OSError, asyncpg.PostgresError, ClusterError) as exc:
                # A cluster that is not set up, or a database that is away: retried next round.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("hot promotion round failed: %s", self.last_error)
            await asyncio.sleep(self._interval)
