"""Shard-aware reads on plain PostgreSQL: Citus's hash, the range lookup, node URLs, and the
router sending reads to a node's own pool or back to the coordinator. (On a real cluster:
tests/citus/test_routing.py.)"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from sn.ids import IdGenerator
from sn.storage.posts import PostRepository
from sn.storage.shard_reads import Placement, ShardMap, ShardReads, hash_int8, node_url
from sn.storage.users import NewUser, UserRepository
from tests import citus_support

_ids = IdGenerator(1021)


async def test_hash_is_postgres_hashint8(database_url: str) -> None:
    rng = random.Random(7)
    values = [0, 1, -1, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63), _ids.next_id()]
    values += [rng.randint(-(2**63), 2**63 - 1) for _ in range(5000)]
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT v, hashint8(v) AS h FROM unnest($1::bigint[]) AS v", values)
    finally:
        await conn.close()
    assert [hash_int8(row["v"]) for row in rows] == [row["h"] for row in rows]


def _four_shards(nodes: list[str]) -> list[Placement]:
    # Citus's split of the int32 hash space into equal ranges.
    step = 2**32 // 4
    return [
        Placement("users", -(2**31) + i * step, -(2**31) + (i + 1) * step - 1, nodes[i % len(nodes)]) for i in range(4)
    ]


def test_map_finds_the_range_holding_the_hash() -> None:
    shard_map = ShardMap(_four_shards(["w1:5432", "w2:5432"]))
    for key in [0, 1, 42, 2**40, -5, _ids.next_id()]:
        h = hash_int8(key)
        expected = "w1:5432" if (h + 2**31) // (2**32 // 4) % 2 == 0 else "w2:5432"
        assert shard_map.node_for("users", key) == expected
    assert shard_map.node_for("post_index", 1) is None  # a table with no known shards
    assert shard_map.nodes == {"w1:5432", "w2:5432"}
    assert len(shard_map) == 4


def test_map_with_a_gap_answers_none_inside_it() -> None:
    # An isolated tenant's shard briefly missing from a refresh: such keys go to the coordinator.
    key = 12345
    h = hash_int8(key)
    shard_map = ShardMap([Placement("users", -(2**31), h - 1, "w1:1"), Placement("users", h + 1, 2**31 - 1, "w2:1")])
    assert shard_map.node_for("users", key) is None
    assert shard_map.node_for("users", key + 1) in {"w1:1", "w2:1"}


def test_node_url_keeps_credentials_database_and_options() -> None:
    url = "postgresql://app:s3cret@coordinator:5432/sn?sslmode=prefer"
    assert node_url(url, "citus-worker-hot:6432") == "postgresql://app:s3cret@citus-worker-hot:6432/sn?sslmode=prefer"
    assert node_url("postgresql://coordinator/sn", "w1:5433") == "postgresql://w1:5433/sn"


@pytest.fixture
async def coordinator(private_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(private_database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


async def _new_user(pool: asyncpg.Pool) -> int:
    user_id = _ids.next_id()
    await UserRepository(pool).create(
        NewUser(user_id, "Shard", "Reader", dt.date(1990, 1, 1), "Riga", None, None, None, None, "x")
    )
    return user_id


async def _open_pool(url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2)
    assert pool is not None
    return pool


@pytest.fixture
async def one_shard_node(private_database_url: str, coordinator: asyncpg.Pool) -> AsyncIterator[ShardMap]:
    """This PostgreSQL server dressed as a Citus node holding shard 101 of `users` and `posts`: shard
    tables named as Citus names them and the `pg_dist_placement` rows a node's synced metadata has.
    The rows are written to the shards only, so a read answered by the coordinator's tables
    (the real `users`, `posts`) finds nothing: each assertion tells which side answered."""
    if citus_support.rest_on_citus():
        pytest.skip("dresses plain PostgreSQL as a Citus node; on a real cluster see tests/citus/test_routing.py")
    parts = urlsplit(private_database_url)
    here = f"{parts.hostname}:{parts.port or 5432}"
    async with coordinator.acquire() as conn:
        await conn.execute(
            "CREATE TABLE pg_dist_placement (shardid bigint, groupid integer);"
            " INSERT INTO pg_dist_placement VALUES (101, 7);"
            " CREATE TABLE users_101 (LIKE users INCLUDING ALL);"
            " CREATE TABLE posts_101 (LIKE posts INCLUDING ALL)"
        )
    everything = (-(2**31), 2**31 - 1)
    yield ShardMap([Placement(t, *everything, here, shard_id=101, group_id=7) for t in ("users", "posts")])
    async with coordinator.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS pg_dist_placement, users_101, posts_101")


async def test_reads_go_to_the_shard_table_while_the_node_still_holds_it(
    private_database_url: str, coordinator: asyncpg.Pool, one_shard_node: ShardMap
) -> None:
    user_id, post_id = _ids.next_id(), _ids.next_id()
    await coordinator.execute(
        "INSERT INTO users_101 (id, first_name, second_name, birthdate, city, password_hash)"
        " VALUES ($1, 'Shard', 'Reader', '1990-01-01', 'Riga', 'x')",
        user_id,
    )
    await coordinator.execute(
        "INSERT INTO posts_101 (id, author_id, text) VALUES ($1, $2, 'on the shard')", post_id, user_id
    )
    reads = ShardReads(coordinator, private_database_url, _open_pool, one_shard_node)
    try:
        users, posts = UserRepository(coordinator, reads), PostRepository(coordinator, reads=reads)
        user = await users.get(user_id)
        assert user is not None
        assert user.first_name == "Shard"
        assert await users.exists(user_id)
        assert not await users.exists(_ids.next_id())  # a missing row is None, not a row of NULLs
        assert await users.password_hash(user_id) == "x"
        post = await posts.get(user_id, post_id)
        assert post is not None
        assert post.text == "on the shard"
        assert reads.direct == 5
        assert reads.via_coordinator == 0
        assert reads.stats()["open_pools"] == [one_shard_node.node_for("users", 1)]
        # post_index has no shards in this map: its reads go to the coordinator's table.
        assert await posts.author_of(post_id) is None
        assert reads.via_coordinator == 1

        # The shard moved away (the node's metadata no longer places it here): the same read
        # is answered by the coordinator, which here has no such user, and the map is reloaded.
        await coordinator.execute("DELETE FROM pg_dist_placement")
        assert await users.get(user_id) is None
        assert reads.stale_reads == 1
        assert reads.via_coordinator == 2
    finally:
        await reads.close()


async def test_a_dropped_shard_table_or_an_unreachable_node_falls_back_to_the_coordinator(
    private_database_url: str, coordinator: asyncpg.Pool, one_shard_node: ShardMap
) -> None:
    user_id = await _new_user(coordinator)  # in the coordinator's table only
    reads = ShardReads(coordinator, private_database_url, _open_pool, one_shard_node)
    try:
        await coordinator.execute("DROP TABLE users_101")  # Citus dropped the old placement
        user = await UserRepository(coordinator, reads).get(user_id)
        assert user is not None
        assert reads.stale_reads == 1
    finally:
        await reads.close()

    placements = [
        Placement(p.table, p.min_hash, p.max_hash, "127.0.0.1:1", p.shard_id, p.group_id)
        for p in (one_shard_node.placement_for("users", user_id),)
        if p is not None
    ]
    dead = ShardReads(coordinator, private_database_url, _open_pool, ShardMap(placements))
    try:
        assert await UserRepository(coordinator, dead).get(user_id) is not None  # the coordinator answered
        assert dead.stats()["unreachable"] == ["127.0.0.1:1"]
        assert dead.via_coordinator == 1
        assert dead.direct == 0
    finally:
        await dead.close()
