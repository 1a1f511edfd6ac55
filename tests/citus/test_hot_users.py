"""Hot users (sn/citus/hot_users.py): on plain PostgreSQL `sn hot` records the hot set; on Citus (marked `citus`)
promotion isolates a user on the hot worker, rebalancing keeps them there and writes continue during the move,
demotion moves them back, and the automatic promoter respects both its cap and a demotion by hand."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from sn.citus import hot_users
from sn.citus.provision import InitResult
from sn.pipeline.outbox import Outbox
from sn.storage.friends import FriendRepository
from sn.storage.posts import PostRepository
from tests.citus import helpers


@helpers.plain_only
def test_hot_promote_and_demote_on_single_node_record_the_hot_set(empty_database: str) -> None:
    assert helpers.sn(empty_database, "cluster", "init").returncode == 0

    async def add_user() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await conn.execute(
                "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash)"
                " VALUES (42, 'Lady', 'Gaga', '1986-03-28', 'New York', 'x')"
            )
        finally:
            await conn.close()

    asyncio.run(add_user())
    promoted = helpers.sn(empty_database, "hot", "promote", "42")
    assert promoted.returncode == 0, promoted.stderr
    assert "user 42: recorded (single-node)" in promoted.stdout
    missing = helpers.sn(empty_database, "hot", "promote", "43")
    assert missing.returncode == 1
    assert "user 43 not found" in missing.stderr

    async def hot_set() -> list[int]:
        conn = await asyncpg.connect(empty_database)
        try:
            return await hot_users.hot_user_ids(conn)
        finally:
            await conn.close()

    assert asyncio.run(hot_set()) == [42]
    demoted = helpers.sn(empty_database, "hot", "demote", "42")
    assert demoted.returncode == 0, demoted.stderr
    assert "user 42: demoted (single-node)" in demoted.stdout
    assert asyncio.run(hot_set()) == []
    again = helpers.sn(empty_database, "hot", "demote", "42")
    assert "user 42: not hot" in again.stdout


# -- on Citus -----------------------------------------------------------------------------------------------


@pytest.mark.citus
async def test_promotion_isolates_the_user_on_the_hot_worker_and_rebalancing_keeps_it_there(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    star = await helpers.make_user(pool, posts=20)
    fan = await helpers.make_user(pool)
    await FriendRepository(pool, Outbox(helpers.ids.next_id)).follow(fan, star)
    change = await hot_users.promote(conn, star)
    assert change is not None
    assert change.action == "promoted"
    assert change.node == "{}:{}".format(*helpers.hot())
    assert len(change.steps) == 2  # isolated, then moved
    placements = await helpers.placements(conn, star)
    assert set(placements.values()) == {(*helpers.hot(), True)}, placements  # every colocated table, isolated
    assert await hot_users.hot_user_ids(conn) == [star]

    # Only hot users' shards live on the hot worker (besides reference-table replicas).
    regular_on_hot = await conn.fetchval(
        "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid"
        " JOIN pg_dist_shard s ON s.shardid = p.shardid JOIN pg_dist_partition t ON t.logicalrelid = s.logicalrelid"
        " WHERE n.nodename = $1 AND n.nodeport = $2 AND t.partmethod = 'h'"
        " AND NOT (s.shardminvalue = s.shardmaxvalue AND EXISTS (SELECT 1 FROM hot_users h"
        "          WHERE h.hot AND worker_hash(h.user_id)::text = s.shardminvalue))",
        *helpers.hot(),
    )
    assert regular_on_hot == 0

    # The default (sn_hot_pinned) plan never moves shards off or onto the hot worker ...
    plan = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan()")
    hot_port = helpers.hot()[1]
    assert [row for row in plan if hot_port in (row["sourceport"], row["targetport"])] == []
    # ... where Citus' own strategy would fill the hot worker with regular shards.
    by_count = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan(rebalance_strategy := 'by_shard_count')")
    assert any(row["targetport"] == hot_port for row in by_count)
    # And a real rebalance leaves the user where they are.
    await conn.execute("SELECT rebalance_table_shards()")
    assert set((await helpers.placements(conn, star)).values()) == {(*helpers.hot(), True)}

    again = await hot_users.promote(conn, star)
    assert again is not None
    assert again.action == "already hot"
    assert again.steps == []


@pytest.mark.citus
async def test_rebalance_moves_a_regular_shard_off_the_hot_worker(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    somebody = await helpers.make_user(pool, posts=1)
    shard = await conn.fetchval("SELECT get_shard_id_for_distribution_column('users', $1::bigint)", somebody)
    source = await conn.fetchrow(
        "SELECT n.nodename, n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid"
        " WHERE p.shardid = $1",
        shard,
    )
    assert source is not None
    await conn.execute(
        "SELECT citus_move_shard_placement($1, $2, $3, $4, $5, shard_transfer_mode => 'block_writes')",
        shard,
        source["nodename"],
        source["nodeport"],
        *helpers.hot(),
    )
    plan = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan()")
    assert {row["shardid"] for row in plan if row["sourceport"] == helpers.hot()[1]} >= {shard}
    await conn.execute("SELECT rebalance_table_shards()")
    assert {port for _, port, _ in (await helpers.placements(conn, somebody)).values()} != {helpers.hot()[1]}


@pytest.mark.citus
async def test_writes_during_promotion_are_not_lost(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    star = await helpers.make_user(pool, posts=2000)  # enough rows that the copy takes a moment
    repo = PostRepository(pool, Outbox(helpers.ids.next_id))
    written: list[int] = []
    errors: list[str] = []
    moving = asyncio.Event()
    done = asyncio.Event()

    async def writer() -> None:
        while not done.is_set():
            post_id = helpers.ids.next_id()
            try:
                await repo.create(post_id, star, "written while moving" if moving.is_set() else "before")
                written.append(post_id)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.1)
        moving.set()
        before = len(written)
        change = await hot_users.promote(conn, star)
        during = len(written) - before
        await asyncio.sleep(0.1)
    finally:
        done.set()
        await task
    assert change is not None
    assert change.action == "promoted"
    assert errors == []
    assert during > 10, "the writer should have kept going while the shards moved"
    stored = {
        row["id"]
        for row in await conn.fetch(
            "SELECT id FROM posts WHERE author_id = $1 AND id = ANY($2::bigint[])", star, written
        )
    }
    assert stored == set(written)
    indexed = await conn.fetchval("SELECT count(*) FROM post_index WHERE id = ANY($1::bigint[])", written)
    assert indexed == len(written)
    assert set((await helpers.placements(conn, star)).values()) == {(*helpers.hot(), True)}


@pytest.mark.citus
async def test_demotion_moves_the_user_back_and_automatic_promotion_respects_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool, citus_db: tuple[str, InitResult]
) -> None:
    star = await helpers.make_user(pool, posts=5)
    assert (await hot_users.promote(conn, star)) is not None
    change = await hot_users.demote(conn, star)
    assert change.action == "demoted"
    assert change.node is not None
    assert change.node != "{}:{}".format(*helpers.hot())
    ports = {port for _, port, _ in (await helpers.placements(conn, star)).values()}
    assert len(ports) == 1
    assert helpers.hot()[1] not in ports
    assert star not in await hot_users.hot_user_ids(conn)
    plan = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan()")
    assert [row for row in plan if row["targetport"] == helpers.hot()[1]] == []
    assert (await hot_users.demote(conn, star)).action == "not hot"

    # Automatic promotion: a user over the threshold is promoted, a user demoted by hand is not.
    rising = await helpers.make_user(pool, posts=1)
    counts = {star: 5000, rising: 5000}

    async def celebrities(threshold: int) -> list[tuple[int, int]]:
        return [(user, n) for user, n in counts.items() if n >= threshold]

    capped = hot_users.HotPromoter(citus_db[0], pool, celebrities, lambda: 1000, max_hot=0)
    assert await capped.round() == []
    assert capped.last_error is not None
    assert "not promoted" in capped.last_error
    promoter = hot_users.HotPromoter(citus_db[0], pool, celebrities, lambda: 1000)
    assert await promoter.round() == [rising]
    assert await promoter.round() == []
    hot = await hot_users.hot_user_ids(conn)
    assert rising in hot
    assert star not in hot
    assert {port for _, port, _ in (await helpers.placements(conn, rising)).values()} == {helpers.hot()[1]}


@pytest.mark.citus
async def test_a_promotion_interrupted_after_its_record_is_finished_by_the_promoter(
    conn: asyncpg.Connection, pool: asyncpg.Pool, citus_db: tuple[str, InitResult]
) -> None:
    # What `promote` leaves when its process dies right after recording the user (its first step): hot, not moved.
    user = await helpers.make_user(pool, posts=2)
    await conn.execute("INSERT INTO hot_users (user_id, hot, reason) VALUES ($1, true, 'auto')", user)
    assert helpers.hot()[1] not in {port for _, port, _ in (await helpers.placements(conn, user)).values()}

    async def nobody(threshold: int) -> list[tuple[int, int]]:
        return []  # no new candidate: the round is about the unfinished one alone

    promoter = hot_users.HotPromoter(citus_db[0], pool, nobody, lambda: 1000)
    assert await promoter.round() == [user]
    assert {port for _, port, _ in (await helpers.placements(conn, user)).values()} == {helpers.hot()[1]}
    assert await promoter.round() == []
