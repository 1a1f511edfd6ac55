"""FeedReader against a real Redis: the one-round-trip page, and every case where it steps aside."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis

from sn.storage.feed_cache import FeedCache
from sn.storage.feed_read import CachedPage, FeedReader
from sn.storage.redis_mux import MuxRedis

# Prefixes of this test's own so nothing else in the shared test database is read.
_FEEDS = "t:feedread:feed:"
_FOLLOWING = "t:feedread:following:"
_COUNTS = "t:feedread:counts"
_POSTS = "t:feedread:post:"
_THRESHOLD = 1000
_user_ids = itertools.count(20_000_000)


@pytest.fixture
def feeds(aredis: Redis, amux: MuxRedis) -> FeedCache:
    return FeedCache(aredis, size=10, ttl_seconds=60, mux=amux, prefix=_FEEDS)


@pytest.fixture
def reader(amux: MuxRedis) -> FeedReader:
    return FeedReader(amux, feed_prefix=_FEEDS, following_prefix=_FOLLOWING, counts_key=_COUNTS)


def body(post_id: int) -> bytes:
    return b'{"id":"%d"}' % post_id


async def follow(aredis: Redis, user: int, *followees: int) -> None:
    # SocialCache's layout: a set with a "0" member so that following nobody is still cached.
    await aredis.sadd(f"{_FOLLOWING}{user}", "0", *followees)


async def build(feeds: FeedCache, aredis: Redis, user: int, post_ids: list[int], *, cache_bodies: bool = True) -> None:
    token = await feeds.begin_rebuild(user)
    assert await feeds.commit_rebuild(user, token, [(p, 7) for p in post_ids])
    if cache_bodies:
        await aredis.mset({f"{_POSTS}{p}": body(p) for p in post_ids})


async def page(
    reader: FeedReader, user: int, offset: int = 0, limit: int = 10, before: int | None = None
) -> CachedPage | None:
    return await reader.page(user, threshold=_THRESHOLD, offset=offset, limit=limit, before=before, post_prefix=_POSTS)


async def whole(reader: FeedReader, user: int, offset: int = 0, limit: int = 10, before: int | None = None) -> bytes:
    """The finished JSON array of a page whose bodies are all cached."""
    cached = await page(reader, user, offset, limit, before)
    assert cached is not None, "the script stepped aside"
    assert cached.body is not None, f"holes: {cached.bodies}"
    return cached.body


async def test_cached_page_is_the_finished_json_array(feeds: FeedCache, reader: FeedReader, aredis: Redis) -> None:
    user = next(_user_ids)
    await follow(aredis, user, 7)
    await build(feeds, aredis, user, [300, 200, 100])
    assert await whole(reader, user) == b"[" + b",".join([body(300), body(200), body(100)]) + b"]"
    assert await whole(reader, user, offset=1, limit=1) == b"[" + body(200) + b"]"
    assert await whole(reader, user, before=300) == b"[" + body(200) + b"," + body(100) + b"]"
    assert await whole(reader, user, offset=5) == b"[]"  # a COMPLETE set: the feed ends here


async def test_missing_bodies_come_back_as_holes(feeds: FeedCache, reader: FeedReader, aredis: Redis) -> None:
    user = next(_user_ids)
    await follow(aredis, user, 7)
    await build(feeds, aredis, user, [300, 200, 100])
    await aredis.delete(f"{_POSTS}200")
    holes = await page(reader, user)
    assert holes is not None
    assert holes.body is None
    assert holes.keys == [(300, 7), (200, 7), (100, 7)]
    assert holes.bodies == [body(300), None, body(100)]


async def test_following_set_is_needed_only_once_celebrities_exist(
    feeds: FeedCache, reader: FeedReader, aredis: Redis
) -> None:
    user = next(_user_ids)
    await build(feeds, aredis, user, [100])
    await aredis.delete(_COUNTS)
    assert await whole(reader, user) == b"[" + body(100) + b"]"  # nobody is a celebrity
    await aredis.zadd(_COUNTS, {"123": _THRESHOLD})
    assert await page(reader, user) is None  # somebody is: whom does the user follow?
    await aredis.delete(_COUNTS)


async def test_steps_aside_when_feed_is_not_cached_or_being_built(
    feeds: FeedCache, reader: FeedReader, aredis: Redis
) -> None:
    user = next(_user_ids)
    await follow(aredis, user, 7)
    assert await page(reader, user) is None
    await feeds.begin_rebuild(user)  # BUILDING only: not an answer yet
    assert await page(reader, user) is None


@pytest.mark.parametrize("other_celebrities", [0, 1, 300], ids=["only", "few", "many"])
async def test_steps_aside_for_a_followed_celebrity(
    feeds: FeedCache, reader: FeedReader, aredis: Redis, other_celebrities: int
) -> None:
    # Few celebrities are looked up in the following set, many are scored followee by followee.
    user, celebrity = next(_user_ids), next(_user_ids)
    others = {str(40_000_000 + i): _THRESHOLD * 2 for i in range(other_celebrities)}
    await aredis.delete(_COUNTS)
    if others:
        await aredis.zadd(_COUNTS, others)
    await follow(aredis, user, 7, celebrity)
    await build(feeds, aredis, user, [100])
    await aredis.zadd(_COUNTS, {str(celebrity): _THRESHOLD - 1})
    assert await page(reader, user) is not None
    await aredis.zadd(_COUNTS, {str(celebrity): _THRESHOLD})
    assert await page(reader, user) is None
    await aredis.delete(_COUNTS)


async def test_following_more_than_lua_can_unpack_at_once(feeds: FeedCache, reader: FeedReader, aredis: Redis) -> None:
    # Lua's unpack() fails beyond ~8000 values; the script scores followees in chunks.
    user = next(_user_ids)
    followees = list(range(30_000_000, 30_009_000))
    await follow(aredis, user, *followees)
    await build(feeds, aredis, user, [100])
    assert await page(reader, user) is not None
    # More celebrities than the few-celebrities path takes: every followee is scored.
    await aredis.zadd(_COUNTS, {str(50_000_000 + i): _THRESHOLD * 2 for i in range(300)})
    try:
        assert await page(reader, user) is not None
        for celebrity in (followees[0], followees[-1]):  # whichever chunk SMEMBERS puts it in
            await aredis.zadd(_COUNTS, {str(celebrity): _THRESHOLD * 10})
            assert await page(reader, user) is None
            await aredis.zrem(_COUNTS, str(celebrity))
    finally:
        await aredis.delete(_COUNTS)


async def test_partial_feed_answers_inside_the_window_only(feeds: FeedCache, reader: FeedReader, aredis: Redis) -> None:
    user = next(_user_ids)
    await follow(aredis, user, 7)
    await build(feeds, aredis, user, list(range(120, 100, -1)))  # 20 posts into a 10-post set: PARTIAL
    assert await whole(reader, user, limit=5) == b"[" + b",".join(body(p) for p in range(120, 115, -1)) + b"]"
    assert await page(reader, user, offset=8, limit=5) is None  # runs past the cached window
