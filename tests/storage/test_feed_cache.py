"""FeedCache against a real Redis: states, rebuild races, trimming, paging."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis

from sn.storage.feed_cache import FeedCache, feed_key, member
from sn.storage.redis_mux import MuxRedis

_user_ids = itertools.count(10_000_000)


@pytest.fixture
def cache(aredis: Redis, amux: MuxRedis) -> FeedCache:
    return FeedCache(aredis, size=10, ttl_seconds=60, mux=amux)


def keys(*ids: int) -> list[tuple[int, int]]:
    return [(post_id, 7) for post_id in ids]


async def test_absent_feed_is_a_miss_and_fanout_skips_it(cache: FeedCache, aredis: Redis) -> None:
    user = next(_user_ids)
    assert not (await cache.page(user, offset=0, limit=5, before=None)).hit
    assert await cache.add_post([user], 100, 7) == 0
    assert not await aredis.exists(feed_key(user))


async def test_rebuild_then_fanout_then_page(cache: FeedCache) -> None:
    user = next(_user_ids)
    token = await cache.begin_rebuild(user)
    assert await cache.commit_rebuild(user, token, keys(30, 20, 10))
    assert await cache.add_post([user], 40, 7) == 1
    page = await cache.page(user, offset=0, limit=10, before=None)
    assert page.hit
    assert not page.exhausted
    assert page.keys == keys(40, 30, 20, 10)
    assert (await cache.page(user, offset=1, limit=2, before=None)).keys == keys(30, 20)
    assert (await cache.page(user, offset=0, limit=10, before=30)).keys == keys(20, 10)


async def test_post_fanned_out_during_rebuild_is_kept(cache: FeedCache) -> None:
    user = next(_user_ids)
    token = await cache.begin_rebuild(user)
    await cache.add_post([user], 50, 7)  # committed after the rebuild's query ran
    assert await cache.commit_rebuild(user, token, keys(30, 20))
    assert (await cache.page(user, offset=0, limit=10, before=None)).keys == keys(50, 30, 20)


async def test_invalidation_during_rebuild_discards_the_stale_result(cache: FeedCache) -> None:
    user = next(_user_ids)
    token = await cache.begin_rebuild(user)
    await cache.invalidate(user)  # a follow/unfollow while the rebuild was reading
    assert not await cache.commit_rebuild(user, token, keys(30, 20))
    assert not (await cache.page(user, offset=0, limit=10, before=None)).hit


async def test_trim_keeps_newest_and_marks_partial(cache: FeedCache) -> None:
    user = next(_user_ids)
    token = await cache.begin_rebuild(user)
    await cache.commit_rebuild(user, token, keys(*range(90, 0, -10)))  # 9 posts: complete
    short = await cache.page(user, offset=5, limit=10, before=None)
    assert short.hit
    assert not short.exhausted
    for post_id in (100, 110, 120):
        await cache.add_post([user], post_id, 7)
    page = await cache.page(user, offset=0, limit=20, before=None)
    assert page.keys == keys(*range(120, 20, -10))  # 10 newest kept
    assert page.exhausted  # partial now: older posts must come from the database


async def test_remove_posts_from_many_feeds(cache: FeedCache) -> None:
    users = [next(_user_ids) for _ in range(3)]
    # Ids of this test's own: a deletion leaves a tombstone that every cache (and test) shares.
    newer, deleted, older = (20_000_000_000 + users[0] * 10 + n for n in (3, 2, 1))
    for user in users:
        token = await cache.begin_rebuild(user)
        await cache.commit_rebuild(user, token, keys(newer, deleted, older))
    assert await cache.remove_posts(users, keys(deleted)) == 3
    for user in users:
        assert (await cache.page(user, offset=0, limit=10, before=None)).keys == keys(newer, older)


async def test_fanout_chunks_many_recipients(cache: FeedCache) -> None:
    users = [next(_user_ids) for _ in range(FeedCache.CHUNK + 7)]
    for user in users[::2]:
        token = await cache.begin_rebuild(user)
        await cache.commit_rebuild(user, token, [])
    assert await cache.add_post(users, 99, 7) == len(users[::2])


async def test_only_the_newest_rebuild_may_commit(cache: FeedCache) -> None:
    user = next(_user_ids)
    slow = await cache.begin_rebuild(user)  # read the database before the follow below
    await cache.invalidate(user)  # a follow
    fresh = await cache.begin_rebuild(user)  # a reader after the follow
    assert not await cache.commit_rebuild(user, slow, keys(10))  # stale: refused
    assert await cache.commit_rebuild(user, fresh, keys(20, 10))
    assert (await cache.page(user, offset=0, limit=10, before=None)).keys == keys(20, 10)


async def test_a_creation_handled_after_its_deletion_does_not_bring_the_post_back(
    cache: FeedCache, aredis: Redis
) -> None:
    user = next(_user_ids)
    await cache.commit_rebuild(user, await cache.begin_rebuild(user), keys(10))
    post_id = 10_000_000 + user  # an id of this test's own (tombstones are shared by every cache)
    # The pipeline may handle "deleted" before "created": two consumers, or one batch run concurrently.
    await cache.remove_posts([user], [(post_id, 7)])
    assert await cache.add_post([user], post_id, 7) == 0
    assert await cache.add_post([user], post_id + 1, 7) == 1  # other posts are added as before
    members = await aredis.zrange(feed_key(user), 0, -1)
    assert member(post_id, 7).encode() not in members


async def test_a_rebuild_that_read_before_a_deletion_does_not_store_the_deleted_post(cache: FeedCache) -> None:
    user = next(_user_ids)
    deleted = 385_000_000_000_000_000 + user  # a real-sized id (19 digits padded): an id of this test's own
    token = await cache.begin_rebuild(user)
    read_from_the_database = keys(deleted + 2, deleted + 1, deleted)  # ...then the deletion commits:
    await cache.remove_posts([user], [(deleted + 1, 7)])
    assert await cache.commit_rebuild(user, token, read_from_the_database)
    assert (await cache.page(user, offset=0, limit=10, before=None)).keys == keys(deleted + 2, deleted)
