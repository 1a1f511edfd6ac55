"""SocialCache against real PostgreSQL and Redis: small and celebrity-sized follower lists."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from sn.ids import IdGenerator
from sn.storage.friends import FriendRepository
from sn.storage.redis_mux import MuxRedis
from sn.storage.social_cache import SocialCache

_ids = IdGenerator(1019)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert created is not None
    yield created
    await created.close()


async def _author_with_followers(pool: asyncpg.Pool, count: int) -> tuple[int, list[int]]:
    author = _ids.next_id()
    followers = [_ids.next_id() for _ in range(count)]
    await pool.copy_records_to_table(
        "followers", records=[(author, f) for f in followers], columns=["author_id", "follower_id"]
    )
    return author, followers


@pytest.mark.parametrize("count", [0, 3, 2_500], ids=["nobody", "few", "celebrity"])
async def test_followers_are_loaded_cached_and_read_back(
    pool: asyncpg.Pool, aredis: Redis, amux: MuxRedis, count: int
) -> None:
    author, expected = await _author_with_followers(pool, count)
    social = SocialCache(aredis, FriendRepository(pool), reads=amux)
    # Small pages so the celebrity case crosses several of them (keyset pagination, SSCAN).
    social.CHUNK = 400
    loaded = await social.followers(author)
    assert sorted(loaded) == sorted(expected)
    key = f"sn:followers:{author}"
    assert await aredis.scard(key) == count + 1  # the "0" member marks a cached empty list
    assert 0 < await aredis.ttl(key) <= 3600
    assert await aredis.zscore("sn:follower_counts", str(author)) == count
    assert [k async for k in aredis.scan_iter(match=f"{key}:loading:*")] == []  # staging key swapped in

    await pool.execute("DELETE FROM followers WHERE author_id = $1", author)  # now served from Redis only
    assert sorted(await social.followers(author)) == sorted(expected)


async def test_follower_pages_cover_every_row(pool: asyncpg.Pool) -> None:
    author, expected = await _author_with_followers(pool, 1_001)
    assert sorted(await FriendRepository(pool).followers(author, page=100)) == sorted(expected)
    assert sorted(await FriendRepository(pool).followers(author, page=1_001)) == sorted(expected)


async def test_which_candidates_follow_is_answered_by_the_database(pool: asyncpg.Pool) -> None:
    author, followers = await _author_with_followers(pool, 50)
    strangers = [_ids.next_id() for _ in range(20)]
    found = await FriendRepository(pool).followers_among(author, [*followers[::5], *strangers])
    assert sorted(found) == sorted(followers[::5])
    assert await FriendRepository(pool).followers_among(author, []) == []


async def test_celebrity_check_reads_the_cached_count_else_a_bounded_query(
    pool: asyncpg.Pool, aredis: Redis, amux: MuxRedis
) -> None:
    author, _ = await _author_with_followers(pool, 30)
    friends = FriendRepository(pool)
    assert await friends.has_at_least_followers(author, 30)
    assert not await friends.has_at_least_followers(author, 31)
    assert await friends.has_at_least_followers(author, 0)
    social = SocialCache(aredis, friends, reads=amux)
    assert await social.has_at_least_followers(author, 30)
    assert not await social.has_at_least_followers(author, 31)
    await aredis.zadd("sn:follower_counts", {str(author): 500})  # a cached count wins
    assert await social.has_at_least_followers(author, 31)
    await aredis.zrem("sn:follower_counts", str(author))


async def test_a_background_warm_up_caches_the_list_in_spread_out_steps(
    pool: asyncpg.Pool, aredis: Redis, amux: MuxRedis
) -> None:
    author, expected = await _author_with_followers(pool, 2_500)
    social = SocialCache(aredis, FriendRepository(pool), reads=amux)
    social.CHUNK = 400
    key = social.followers_key(author)
    assert not await aredis.exists(key)
    await social.warm_followers(author, pause=0.01)
    assert await aredis.scard(key) == len(expected) + 1  # (and the "0" marker)
    assert await aredis.zscore("sn:follower_counts", str(author)) == len(expected)  # counted on the way
    await pool.execute("DELETE FROM followers WHERE author_id = $1", author)  # now served from Redis only
    assert sorted(await social.followers(author)) == sorted(expected)


@pytest.mark.parametrize("count", [3, 2_500], ids=["few", "celebrity"])
async def test_a_follow_during_the_load_is_not_overwritten_by_the_stale_list(
    pool: asyncpg.Pool, aredis: Redis, amux: MuxRedis, count: int
) -> None:
    author, before = await _author_with_followers(pool, count)
    social = SocialCache(aredis, FriendRepository(pool), reads=amux)
    social.CHUNK = 400
    newcomer = _ids.next_id()
    key = f"sn:followers:{author}"

    async def load_then_someone_follows() -> list[int]:
        stale = await FriendRepository(pool).followers(author)  # read before the follow commits
        await pool.execute("INSERT INTO followers (author_id, follower_id) VALUES ($1, $2)", author, newcomer)
        await social.follow_changed(newcomer, author)  # what the follow request does after its commit
        return stale

    loaded, generation = await social._cached_list(key, load_then_someone_follows)
    assert generation is not None  # loaded, not read from the cache
    assert sorted(loaded) == sorted(before)  # this caller's answer is its own read
    assert not await aredis.exists(key)  # ... but it was not cached over the newer state
    assert [k async for k in aredis.scan_iter(match=f"{key}:loading:*")] == []
    assert newcomer in await social.followers(author)  # the next read loads the current list


@pytest.mark.parametrize("warm_up", [False, True], ids=["read", "background warm-up"])
async def test_a_follow_during_the_load_is_not_undone_in_the_count(
    pool: asyncpg.Pool, aredis: Redis, amux: MuxRedis, warm_up: bool
) -> None:
    author, before = await _author_with_followers(pool, 2_500)
    newcomer = _ids.next_id()

    class FollowDuringTheLoad(FriendRepository):
        async def followers(self, author_id: int, *, page: int = 10_000, pause: float = 0.0) -> list[int]:
            stale = await super().followers(author_id, page=page, pause=pause)
            await pool.execute("INSERT INTO followers (author_id, follower_id) VALUES ($1, $2)", author, newcomer)
            await social.follow_changed(newcomer, author)  # recounts: len(before) + 1
            return stale

    social = SocialCache(aredis, FollowDuringTheLoad(pool), reads=amux)
    social.CHUNK = 400
    if warm_up:
        await social.warm_followers(author, pause=0.001)
    else:
        assert sorted(await social.followers(author)) == sorted(before)
    assert await aredis.zscore("sn:follower_counts", str(author)) == len(before) + 1


async def test_which_authors_a_reader_follows_comes_from_whichever_cache_answers(
    pool: asyncpg.Pool, aredis: Redis, amux: MuxRedis
) -> None:
    friends = FriendRepository(pool)
    social = SocialCache(aredis, friends, reads=amux)
    reader, followed, other = _ids.next_id(), _ids.next_id(), _ids.next_id()
    await friends.follow(reader, followed)
    assert await social.followed_among(reader, set()) == set()

    # Both authors' follower lists cached (as their fan-outs leave them): answered from those.
    await social.followers(followed)
    await social.followers(other)
    await pool.execute("DELETE FROM friendships WHERE user_id = $1", reader)  # behind the cache's back
    assert await social.followed_among(reader, {followed, other}) == {followed}
    assert await aredis.exists(f"sn:following:{reader}") == 0  # the reader's own list was not needed

    # An author whose list is not cached: the reader's following list is loaded instead.
    stranger = _ids.next_id()
    assert await social.followed_among(reader, {followed, stranger}) == set()  # the database's truth now
    assert await aredis.exists(f"sn:following:{reader}") == 1
    await friends.follow(reader, stranger)  # (not invalidated here: the cached list answers first)
    assert await social.followed_among(reader, {followed, other, stranger}) == set()
