"""The storage layer on a real Citus cluster (marked `citus`): every hot-path query is routed to a single
shard, and direct single-shard reads follow the placement through a promotion. Here rather than in
tests/storage/ because they need this package's cluster fixture."""

from __future__ import annotations

import re
from typing import Any, cast

import asyncpg
import pytest

from sn.citus import hot_users
from sn.citus.provision import InitResult
from sn.pipeline.outbox import Outbox
from sn.storage.dialogs import DialogRepository
from sn.storage.friends import FriendRepository
from sn.storage.posts import PostRepository
from sn.storage.shard_reads import ShardReads
from sn.storage.users import UserRepository
from tests.citus import helpers


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
            continue  # the outbox is a coordinator table (see plan.COORDINATOR_LOCAL)
        plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))
        assert "Custom Scan (Citus" in plan, f"{label}: not a distributed query?\n{sql}\n{plan}"
        assert re.search(r"Task Count: 1\b", plan), f"{label}: not routed to one shard\n{sql}\n{plan}"
    recorder.queries.clear()


@pytest.mark.citus
async def test_hot_path_queries_are_routed_to_a_single_shard(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    recorder = _Recorder(pool)
    db = cast("asyncpg.Pool", recorder)
    outbox = Outbox(helpers.ids.next_id)
    author = await helpers.make_user(pool, posts=3)
    reader = await helpers.make_user(pool)
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
    await posts.create(helpers.ids.next_id(), author, "new")
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
    await dialogs.send(helpers.ids.next_id(), reader, author, "hi")
    await _assert_single_task(conn, "dialog send", recorder)
    assert len(await dialogs.list(reader, author, after=0, offset=0, limit=100)) == 1
    await _assert_single_task(conn, "dialog list", recorder)


@pytest.mark.citus
async def test_direct_reads_follow_citus_placement_and_promotion(
    conn: asyncpg.Connection, pool: asyncpg.Pool, citus_db: tuple[str, InitResult]
) -> None:
    async def open_pool(url: str) -> asyncpg.Pool:
        created = await asyncpg.create_pool(url, min_size=0, max_size=2)
        assert created is not None
        return created

    users = [await helpers.make_user(pool, posts=1) for _ in range(12)]
    reads = ShardReads(pool, citus_db[0], open_pool)
    await reads.refresh()
    try:
        direct, through_coordinator = UserRepository(pool, reads), UserRepository(pool)
        for user_id in users:
            host, port, _ = (await helpers.placements(conn, user_id))["users"]
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
        assert await hot_users.promote(conn, star) is not None
        await conn.execute("UPDATE users SET city = 'Moved City' WHERE id = $1", star)  # on the new shard
        moved = await direct.get(star)
        assert moved is not None
        assert moved.city == "Moved City"
        assert reads.stale_reads >= 1
        await reads.refresh()
        assert reads.shard_map.node_for("users", star) == "{}:{}".format(*helpers.hot())
        assert await direct.get(star) == await through_coordinator.get(star)
        assert "{}:{}".format(*helpers.hot()) in reads.stats()["open_pools"]  # type: ignore[operator]
    finally:
        await reads.close()
