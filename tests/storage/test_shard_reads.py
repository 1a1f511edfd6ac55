"""Shard-aware reads on plain PostgreSQL: Citus's hash, the range lookup, node URLs, and the
router sending reads to a node's own pool or back to the coordinator. (On a real cluster:
tests/storage/test_citus.py.)"""

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
async def coordinator(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


async def _new_user(pool: asyncpg.Pool) -> int:
    user_id = _ids.next_id()
    await UserRepository(pool).create(
        NewUser(user_id, "Shard", "Reader", dt.date(1990, 1, 1), "Riga", None, None, None, None, "x")
    )
    return user_id


async def test_reads_go_to_the_nodes_pool_and_fall_back_when_it_is_unreachable(
    database_url: str, coordinator: asyncpg.Pool
) -> None:
    # The "node" holding every shard is this same server under its own address, so the direct
    # pool is a real second pool; a second map points at a port where nothing listens.
    parts = urlsplit(database_url)
    here = f"{parts.hostname}:{parts.port or 5432}"
    opened: list[str] = []

    async def open_pool(url: str) -> asyncpg.Pool:
        opened.append(url)
        pool = await asyncpg.create_pool(url, min_size=0, max_size=2)
        assert pool is not None
        return pool

    user_id = await _new_user(coordinator)
    post_id = _ids.next_id()
    await PostRepository(coordinator).create(post_id, user_id, "routed")

    reads = ShardReads(coordinator, database_url, open_pool, ShardMap(_four_shards([here])))
    try:
        users, posts = UserRepository(coordinator, reads), PostRepository(coordinator, reads=reads)
        user = await users.get(user_id)
        assert user is not None
        assert user.first_name == "Shard"
        assert await users.exists(user_id)
        assert not await users.exists(_ids.next_id())
        assert await users.password_hash(user_id) == "x"
        post = await posts.get(user_id, post_id)
        assert post is not None
        assert post.text == "routed"
        assert await posts.author_of(post_id) == user_id  # no post_index shards in this map: coordinator
        assert reads.direct == 5
        assert reads.via_coordinator == 1
        assert opened == [node_url(database_url, here)]
        assert reads.stats()["open_pools"] == [here]
    finally:
        await reads.close()

    dead = ShardReads(coordinator, database_url, open_pool, ShardMap(_four_shards(["127.0.0.1:1"])))
    try:
        user = await UserRepository(coordinator, dead).get(user_id)
        assert user is not None  # answered by the coordinator
        assert dead.stats()["unreachable"] == ["127.0.0.1:1"]
        assert dead.via_coordinator == 1
        assert dead.direct == 0
    finally:
        await dead.close()
