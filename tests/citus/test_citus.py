"""Against a real Citus cluster (SN_TEST_CITUS_URL, SN_CITUS_WORKERS, SN_CITUS_HOT_WORKER; see
scripts/citus-local.sh): `sn cluster init`, the distribution plan, hot users pinned to the hot worker
through promotion, rebalancing and demotion, and every hot-path query routed to a single shard."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import asyncpg
import pytest

from sn.citus import cluster
from sn.ids import IdGenerator
from sn.pipeline.outbox import Outbox
from sn.storage.dialogs import DialogRepository
from sn.storage.friends import FriendRepository
from sn.storage.migrations import apply_migrations
from sn.storage.posts import PostRepository
from sn.storage.shard_reads import ShardReads
from sn.storage.users import NewUser, UserRepository
from tests import citus_support
from tests.support import ROOT

TARGET = citus_support.citus_target()
if TARGET is None:
    # One visible line in the summary (`-ra`) rather than one per test.
    pytest.skip(citus_support.skip_reason(), allow_module_level=True)
pytestmark = pytest.mark.citus


@pytest.fixture(scope="module")
def citus_db() -> Iterator[tuple[str, cluster.InitResult]]:
    """A fresh database on all four nodes, set up by the first `init_cluster`."""
    assert TARGET is not None
    name = f"sn_test_citus_{uuid.uuid4().hex[:10]}"
    first = asyncio.run(citus_support.create_database(TARGET, name))
    try:
        yield citus_support.with_database(TARGET.admin_url, name), first
    finally:
        asyncio.run(citus_support.drop_database(TARGET, name))


@pytest.fixture
async def conn(citus_db: tuple[str, cluster.InitResult]) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(citus_db[0])
    yield connection
    await connection.close()


@pytest.fixture
async def pool(citus_db: tuple[str, cluster.InitResult]) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(citus_db[0], min_size=1, max_size=8)
    assert created is not None
    yield created
    await created.close()


_ids = IdGenerator(1022)


async def _user(pool: asyncpg.Pool, *, posts: int = 0) -> int:
    user_id = _ids.next_id()
    await UserRepository(pool).create(
        NewUser(
            id=user_id,
            first_name="Lady",
            second_name="Gaga",
            birthdate=dt.date(1986, 3, 28),
            city="New York",
            biography=None,
            gender=None,
            interests=None,
            email=f"{user_id}@example.com",
            password_hash="x",
        )
    )
    repo = PostRepository(pool, Outbox(_ids.next_id))
    for i in range(posts):
        await repo.create(_ids.next_id(), user_id, f"post {i}")
    return user_id


async def _placements(conn: asyncpg.Connection, user_id: int) -> dict[str, tuple[str, int, bool]]:
    """table -> (host, port, isolated) of the shard holding the user's rows, for each colocated table."""
    rows = await conn.fetch(
        "SELECT t.name, n.nodename, n.nodeport, s.shardminvalue = s.shardmaxvalue AS isolated"
        " FROM unnest($2::text[]) AS t(name)"
        " JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column(t.name::regclass, $1::bigint)"
        " JOIN pg_dist_placement p ON p.shardid = s.shardid"
        " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'",
        user_id,
        ["users", "friendships", "followers", "posts"],
    )
    return {row["name"]: (row["nodename"], row["nodeport"], row["isolated"]) for row in rows}


def _hot() -> tuple[str, int]:
    assert TARGET is not None
    return TARGET.hot.host, TARGET.hot.port


# -- sn cluster init ------------------------------------------------------------------------------


def test_cluster_init_twice(citus_db: tuple[str, cluster.InitResult]) -> None:
    url, first = citus_db
    assert TARGET is not None
    assert first.mode == "citus"
    assert "distributed users by id (own colocation group)" in first.lines
    assert "distributed posts by author_id (colocated with users)" in first.lines
    assert "made hot_users a reference table" in first.lines
    assert any(line.startswith("added hot worker") for line in first.lines)
    # The second run is the real command, as an operator would run it again.
    env = {
        **os.environ,
        "SN_DATABASE_URL": url,
        "SN_CITUS_WORKERS": ",".join(map(str, TARGET.workers)),
        "SN_CITUS_HOT_WORKER": str(TARGET.hot),
    }
    second = subprocess.run(
        [sys.executable, "-m", "sn", "cluster", "init"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    out = second.stdout
    assert out.startswith("mode: citus\n")
    assert "migrations: 0 applied" in out
    assert "users already distributed by id" in out
    assert "hot_users already a reference table" in out
    assert "rebalance strategy sn_hot_pinned already the default" in out
    assert "added" not in out
    assert "distributed users by" not in out
    assert "WARNING" not in out


async def test_tables_are_distributed_and_colocated_as_planned(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT logicalrelid::regclass::text AS name, partmethod::text AS method, repmodel::text AS model,"
        " colocationid, column_to_column_name(logicalrelid, partkey) AS col FROM pg_dist_partition"
    )
    tables = {row["name"]: row for row in rows}
    for spec in cluster.DISTRIBUTED:
        assert tables[spec.name]["method"] == "h", spec.name
        assert tables[spec.name]["col"] == spec.column, spec.name
    group = tables["users"]["colocationid"]
    assert {tables[name]["colocationid"] for name in ("friendships", "followers", "posts")} == {group}
    own = [tables[name]["colocationid"] for name in ("post_index", "user_emails", "dialog_messages")]
    assert len(set(own)) == 3
    assert group not in own
    assert tables["hot_users"]["method"] == "n"
    assert tables["hot_users"]["model"] == "t"
    assert "outbox" not in tables
    assert "schema_migrations" not in tables
    strategy = await conn.fetchrow("SELECT name FROM pg_dist_rebalance_strategy WHERE default_strategy")
    assert strategy is not None
    assert strategy["name"] == cluster.STRATEGY


async def test_name_keys_migration_on_distributed_users_and_search(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Migration 0004 as an existing cluster meets it: users already distributed, rows without
    keys; the columns are added on every shard, the rows backfilled, colocation unchanged."""
    before = await conn.fetchval("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass")
    await conn.execute("DROP INDEX users_name_key_idx")
    await conn.execute("ALTER TABLE users DROP COLUMN first_name_key, DROP COLUMN second_name_key")
    await conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    ids = [_ids.next_id() for _ in range(3)]
    names = [("Анна", "Петрова"), ("Σοφία", "Νικολάου"), ("Émile", "Zoë")]
    for user_id, (first, last) in zip(ids, names, strict=True):
        await conn.execute(
            "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash)"
            " VALUES ($1, $2, $3, '1990-01-01', 'c', 'x')",
            user_id,
            first,
            last,
        )
    applied = await apply_migrations(conn)
    assert [m.version for m in applied] == [4]
    assert await conn.fetchval("SELECT count(*) FROM users WHERE first_name_key IS NULL") == 0
    after = await conn.fetchval("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass")
    assert after == before
    # Every shard has the index (Citus propagated it).
    shards = await conn.fetchval("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'users'::regclass")
    indexed = await conn.fetchval(
        "SELECT sum(result::int) FROM run_command_on_shards('users',"
        " $$SELECT count(*) FROM pg_indexes WHERE tablename = '%s' AND indexname LIKE 'users_name_key_idx%%'$$)"
    )
    assert indexed == shards
    users = UserRepository(pool)
    for (first, last), user_id in zip((("АН", "пЕТ"), ("σοφ", "ΝΙΚΟ"), ("ÉMI", "zoë")), ids, strict=True):
        assert str(user_id) in [u.id for u in await users.search(first, last, 1000)], first
    # A user registered after the migration gets keys on insert.
    new_id = await _user(pool)
    assert await conn.fetchval("SELECT first_name_key FROM users WHERE id = $1", new_id) == "lady"


# -- hot users -------------------------------------------------------------------------------------


async def test_promotion_isolates_the_user_on_the_hot_worker_and_rebalancing_keeps_it_there(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    star = await _user(pool, posts=20)
    fan = await _user(pool)
    await FriendRepository(pool, Outbox(_ids.next_id)).follow(fan, star)
    change = await cluster.promote(conn, star)
    assert change is not None
    assert change.action == "promoted"
    assert change.node == "{}:{}".format(*_hot())
    assert len(change.steps) == 2  # isolated, then moved
    placements = await _placements(conn, star)
    assert set(placements.values()) == {(*_hot(), True)}, placements  # every colocated table, isolated
    assert await cluster.hot_user_ids(conn) == [star]

    # Only hot users' shards live on the hot worker (besides reference-table replicas).
    regular_on_hot = await conn.fetchval(
        "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid"
        " JOIN pg_dist_shard s ON s.shardid = p.shardid JOIN pg_dist_partition t ON t.logicalrelid = s.logicalrelid"
        " WHERE n.nodename = $1 AND n.nodeport = $2 AND t.partmethod = 'h'"
        " AND NOT (s.shardminvalue = s.shardmaxvalue AND EXISTS (SELECT 1 FROM hot_users h"
        "          WHERE h.hot AND worker_hash(h.user_id)::text = s.shardminvalue))",
        *_hot(),
    )
    assert regular_on_hot == 0

    # The default (sn_hot_pinned) plan never moves shards off or onto the hot worker ...
    plan = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan()")
    hot_port = _hot()[1]
    assert [row for row in plan if hot_port in (row["sourceport"], row["targetport"])] == []
    # ... where Citus' own strategy would fill the hot worker with regular shards.
    by_count = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan(rebalance_strategy := 'by_shard_count')")
    assert any(row["targetport"] == hot_port for row in by_count)
    # And a real rebalance leaves the user where they are.
    await conn.execute("SELECT rebalance_table_shards()")
    assert set((await _placements(conn, star)).values()) == {(*_hot(), True)}

    again = await cluster.promote(conn, star)
    assert again is not None
    assert again.action == "already hot"
    assert again.steps == []


async def test_rebalance_moves_a_regular_shard_off_the_hot_worker(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    somebody = await _user(pool, posts=1)
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
        *_hot(),
    )
    plan = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan()")
    assert {row["shardid"] for row in plan if row["sourceport"] == _hot()[1]} >= {shard}
    await conn.execute("SELECT rebalance_table_shards()")
    assert {port for _, port, _ in (await _placements(conn, somebody)).values()} != {_hot()[1]}


async def test_writes_during_promotion_are_not_lost(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    star = await _user(pool, posts=2000)  # enough rows that the copy takes a moment
    repo = PostRepository(pool, Outbox(_ids.next_id))
    written: list[int] = []
    errors: list[str] = []
    moving = asyncio.Event()
    done = asyncio.Event()

    async def writer() -> None:
        while not done.is_set():
            post_id = _ids.next_id()
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
        change = await cluster.promote(conn, star)
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
    assert set((await _placements(conn, star)).values()) == {(*_hot(), True)}


async def test_demotion_moves_the_user_back_and_automatic_promotion_respects_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool, citus_db: tuple[str, cluster.InitResult]
) -> None:
    star = await _user(pool, posts=5)
    assert (await cluster.promote(conn, star)) is not None
    change = await cluster.demote(conn, star)
    assert change.action == "demoted"
    assert change.node is not None
    assert change.node != "{}:{}".format(*_hot())
    ports = {port for _, port, _ in (await _placements(conn, star)).values()}
    assert len(ports) == 1
    assert _hot()[1] not in ports
    assert star not in await cluster.hot_user_ids(conn)
    plan = await conn.fetch("SELECT * FROM get_rebalance_table_shards_plan()")
    assert [row for row in plan if row["targetport"] == _hot()[1]] == []
    assert (await cluster.demote(conn, star)).action == "not hot"

    # Automatic promotion: a user over the threshold is promoted, a user demoted by hand is not.
    rising = await _user(pool, posts=1)
    counts = {star: 5000, rising: 5000}

    async def celebrities(threshold: int) -> list[tuple[int, int]]:
        return [(user, n) for user, n in counts.items() if n >= threshold]

    capped = cluster.HotPromoter(citus_db[0], pool, celebrities, lambda: 1000, max_hot=0)
    assert await capped.round() == []
    assert capped.last_error is not None
    assert "not promoted" in capped.last_error
    promoter = cluster.HotPromoter(citus_db[0], pool, celebrities, lambda: 1000)
    assert await promoter.round() == [rising]
    assert await promoter.round() == []
    hot = await cluster.hot_user_ids(conn)
    assert rising in hot
    assert star not in hot
    assert {port for _, port, _ in (await _placements(conn, rising)).values()} == {_hot()[1]}


async def test_cluster_status_on_citus(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    star = await _user(pool, posts=1)
    await cluster.promote(conn, star)
    status = await cluster.cluster_status(conn)
    assert status["mode"] == "citus"
    assert status["problems"] == []
    roles = sorted(node["role"] for node in status["nodes"])
    assert roles == ["coordinator", "hot", "worker", "worker"]
    assert all(node["reachable"] and node["active"] for node in status["nodes"])
    hot_node = next(node for node in status["nodes"] if node["role"] == "hot")
    assert (hot_node["host"], hot_node["port"]) == _hot()
    assert hot_node["should_have_shards"] is True
    assert hot_node["shard_bytes"] > 0
    item = next(item for item in status["hot_users"] if item["user_id"] == str(star))
    assert item["on_hot_worker"]
    assert item["isolated"]
    assert item["node"] == "{}:{}".format(*_hot())
    tables = {table["name"]: table for table in status["tables"]}
    assert tables["posts"]["colocated_with"] == ["followers", "friendships", "users"]
    assert tables["outbox"]["type"] == "local"
    assert status["rebalance_strategy"]["name"] == cluster.STRATEGY


# -- routing: every hot-path query is one task -------------------------------------------------------


class _Recorder:
    """Stands in for the pool: runs each query for real and remembers it, to EXPLAIN it afterwards."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.queries: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.queries.append((sql, args))
        return await self._pool.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.queries.append((sql, args))
        return await self._pool.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.queries.append((sql, args))
        return await self._pool.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        self.queries.append((sql, args))
        return await self._pool.execute(sql, *args)

    def acquire(self) -> _Acquired:
        return _Acquired(self)


class _Acquired:
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder
        self._context: Any = None

    async def __aenter__(self) -> _RecordingConnection:
        self._context = self._recorder._pool.acquire()
        return _RecordingConnection(await self._context.__aenter__(), self._recorder)

    async def __aexit__(self, *exc: object) -> None:
        await self._context.__aexit__(*exc)


class _RecordingConnection:
    def __init__(self, conn: Any, recorder: _Recorder) -> None:
        self._conn = conn
        self._recorder = recorder

    def transaction(self) -> Any:
        return self._conn.transaction()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self._recorder.queries.append((sql, args))
        return await self._conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self._recorder.queries.append((sql, args))
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        self._recorder.queries.append((sql, args))
        return await self._conn.execute(sql, *args)


_LOCAL = re.compile(r"\b(?:INTO|FROM)\s+(outbox)\b")


async def _assert_single_task(conn: asyncpg.Connection, label: str, recorder: _Recorder) -> None:
    assert recorder.queries, label
    for sql, args in recorder.queries:
        if _LOCAL.search(sql):
            continue  # the outbox is a coordinator table (see cluster.COORDINATOR_LOCAL)
        plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))
        assert "Custom Scan (Citus" in plan, f"{label}: not a distributed query?\n{sql}\n{plan}"
        assert re.search(r"Task Count: 1\b", plan), f"{label}: not routed to one shard\n{sql}\n{plan}"
    recorder.queries.clear()


async def test_hot_path_queries_are_routed_to_a_single_shard(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    recorder = _Recorder(pool)
    db = cast("asyncpg.Pool", recorder)
    outbox = Outbox(_ids.next_id)
    author = await _user(pool, posts=3)
    reader = await _user(pool)
    post_id = (await PostRepository(pool).recent_by_author(author, 1))[0][0]

    users = UserRepository(db)
    assert await users.get(author) is not None
    await _assert_single_task(conn, "user get", recorder)
    assert await users.password_hash(author) is not None
    assert await users.exists(author)
    await _assert_single_task(conn, "login / existence", recorder)

    posts = PostRepository(db, outbox)
    found = await posts.author_of(post_id)
    assert found == author
    assert await posts.get(found, post_id) is not None
    await _assert_single_task(conn, "post get (post_index, then posts)", recorder)
    assert await posts.recent_by_author(author, 10)
    await _assert_single_task(conn, "feed read of one author", recorder)
    await posts.create(_ids.next_id(), author, "new")
    await _assert_single_task(conn, "post create (each statement)", recorder)

    friends = FriendRepository(db, outbox)
    assert await friends.follow(reader, author)
    await _assert_single_task(conn, "friend set (each statement)", recorder)
    assert await friends.following(reader) == [author]
    assert await friends.followers(author) == [reader]
    assert await friends.follower_count(author) == 1
    assert await friends.followers_among(author, [reader, author]) == [reader]
    assert await friends.has_at_least_followers(author, 1)
    assert not await friends.has_at_least_followers(author, 2)
    await _assert_single_task(conn, "following / followers / count / celebrity checks", recorder)

    dialogs = DialogRepository(db)
    await dialogs.send(_ids.next_id(), reader, author, "hi")
    await _assert_single_task(conn, "dialog send", recorder)
    assert len(await dialogs.list(reader, author, after=0, offset=0, limit=100)) == 1
    await _assert_single_task(conn, "dialog list", recorder)


# -- direct single-shard reads ----------------------------------------------------------------------


async def test_direct_reads_follow_citus_placement_and_promotion(
    conn: asyncpg.Connection, pool: asyncpg.Pool, citus_db: tuple[str, cluster.InitResult]
) -> None:
    async def open_pool(url: str) -> asyncpg.Pool:
        created = await asyncpg.create_pool(url, min_size=0, max_size=2)
        assert created is not None
        return created

    users = [await _user(pool, posts=1) for _ in range(12)]
    reads = ShardReads(pool, citus_db[0], open_pool)
    await reads.refresh()
    try:
        direct, through_coordinator = UserRepository(pool, reads), UserRepository(pool)
        for user_id in users:
            host, port, _ = (await _placements(conn, user_id))["users"]
            assert reads.shard_map.node_for("users", user_id) == f"{host}:{port}"
            assert await direct.get(user_id) == await through_coordinator.get(user_id)
        assert reads.direct == len(users)
        assert reads.via_coordinator == 0
        post_id = await conn.fetchval("SELECT id FROM posts WHERE author_id = $1", users[0])
        posts = PostRepository(pool, reads=reads)
        assert await posts.author_of(post_id) == users[0]
        assert (await posts.get(users[0], post_id)) is not None

        # A promotion isolates the user into new shards on the hot worker. The old shard table may
        # still exist on the old node for a while: the guard sees that the node's metadata no longer
        # places it there, the read goes through the coordinator, and the map is reloaded.
        star = users[1]
        await conn.execute("UPDATE users SET city = 'Hot City' WHERE id = $1", star)
        assert await cluster.promote(conn, star) is not None
        await conn.execute("UPDATE users SET city = 'Moved City' WHERE id = $1", star)  # on the new shard
        moved = await direct.get(star)
        assert moved is not None
        assert moved.city == "Moved City"
        assert reads.stale_reads >= 1
        await reads.refresh()
        assert reads.shard_map.node_for("users", star) == "{}:{}".format(*_hot())
        assert await direct.get(star) == await through_coordinator.get(star)
        assert "{}:{}".format(*_hot()) in reads.stats()["open_pools"]  # type: ignore[operator]
    finally:
        await reads.close()
