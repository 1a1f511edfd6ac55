"""Feed reads (cache first, rebuild on miss, celebrities pulled on read) and cache maintenance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import redis.exceptions

from sn.models import Post
from sn.pipeline.events import PostEvent
from sn.storage.cache import POST_KEY_PREFIX, PostCache
from sn.storage.feed_cache import FeedCache
from sn.storage.feed_read import FeedReader
from sn.storage.posts import PostRepository, PostRow
from sn.storage.social_cache import SocialCache

log = logging.getLogger("sn.feed")
_encoder = msgspec.json.Encoder()

Keys = list[tuple[int, int]]  # (post_id, author_id), newest first

# Redis not answering (refused, reset, timed out): redis-py's classes, which MuxRedis raises too.
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def to_wire(row: PostRow) -> Post:
    return Post(id=str(row.id), text=row.text, author_user_id=str(row.author_id), created_at=row.created_at)


class FeedService:
    def __init__(
        self,
        *,
        feeds: FeedCache,
        author_posts: FeedCache,
        posts: PostRepository,
        post_cache: PostCache,
        social: SocialCache,
        celebrity_threshold: Callable[[], int],
        reader: FeedReader | None = None,
    ) -> None:
        self._feeds = feeds
        self._author_posts = author_posts
        self._posts = posts
        self._post_cache = post_cache
        self._social = social
        self._threshold = celebrity_threshold
        self._reader = reader

    # -- reads ---------------------------------------------------------------------------------

    async def page(self, user_id: int, *, offset: int, limit: int, before: int | None) -> bytes:
        """A page of the feed as the JSON array the API returns."""
        if self._reader is not None and self._post_cache.enabled:
            # The common case, a cached feed with no celebrity followed: one round trip.
            cached = await self._reader.page(
                user_id,
                threshold=self._threshold(),
                offset=offset,
                limit=limit,
                before=before,
                post_prefix=POST_KEY_PREFIX,
            )
            if cached is not None:
                if cached.body is not None:
                    return cached.body
                return await self._splice(cached.keys, cached.bodies)
        return await self._general_page(user_id, offset=offset, limit=limit, before=before)

    async def _general_page(self, user_id: int, *, offset: int, limit: int, before: int | None) -> bytes:
        # Both lookups at once: the common case (no celebrity followed) costs one round trip.
        celebrities, own = await asyncio.gather(
            self._social.celebrities_followed(user_id, self._threshold()),
            self._own_page(user_id, offset=offset, limit=limit, before=before),
        )
        if not celebrities:
            return await self.bodies(own)
        # Celebrity posts are not fanned out into feeds (the Lady Gaga problem): merge each
        # followed celebrity's newest posts into the page. Every source is read from the top
        # of the window, so offsets stay exact.
        window = offset + limit
        merged = {key[0]: key for key in await self._own_page(user_id, offset=0, limit=window, before=before)}
        for celebrity in celebrities:
            for key in await self._recent_of(celebrity, window, before):
                merged.setdefault(key[0], key)
        keys = sorted(merged.values(), reverse=True)[offset:window]
        return await self.bodies(keys)

    async def _own_page(self, user_id: int, *, offset: int, limit: int, before: int | None) -> Keys:
        cached = await self._feeds.page(user_id, offset=offset, limit=limit, before=before)
        if cached.hit and not cached.exhausted:
            return cached.keys
        if cached.hit:
            # The page runs past the cached window: older posts live only in the database.
            following = await self._social.following(user_id)
            return await self._posts.feed_keys(following, limit, before=before, offset=offset)
        newest, following = await self._rebuild(user_id)
        window = [key for key in newest if before is None or key[0] < before]
        if len(newest) == self._feeds.size and offset + limit > len(window):
            return await self._posts.feed_keys(following, limit, before=before, offset=offset)
        return window[offset : offset + limit]

    async def _rebuild(self, user_id: int) -> tuple[Keys, list[int]]:
        token = await self._feeds.begin_rebuild(user_id)
        following = await self._social.following(user_id)
        newest = await self._posts.feed_keys(following, self._feeds.size)
        await self._feeds.commit_rebuild(user_id, token, newest)
        return newest, following

    async def warm(self, user_id: int) -> bool:
        """Rebuild the user's feed unless it is cached already (a read since the follow change rebuilt it, or
        is rebuilding it); True when it rebuilt."""
        if await self._feeds.exists(user_id):
            return False
        await self._rebuild(user_id)
        return True

    async def _recent_of(self, author_id: int, limit: int, before: int | None) -> Keys:
        cached = await self._author_posts.page(author_id, offset=0, limit=limit, before=before)
        if cached.hit and not cached.exhausted:
            return cached.keys
        if not cached.hit:
            token = await self._author_posts.begin_rebuild(author_id)
            newest = await self._posts.recent_by_author(author_id, self._author_posts.size)
            await self._author_posts.commit_rebuild(author_id, token, newest)
        return await self._posts.recent_by_author(author_id, limit, before=before)

    async def author_page(self, author_id: int, *, limit: int, before: int | None) -> bytes:
        """One author's posts, newest first, older than `before` (GET /user/{id}/posts)."""
        return await self.bodies(await self._recent_of(author_id, limit, before))

    async def bodies(self, keys: Sequence[tuple[int, int]]) -> bytes:
        """A JSON array of the posts at (post_id, author_id) keys, in order: one MGET, then the
        misses from the database. Cached bodies are spliced in as stored, never re-encoded."""
        cached = await self._post_cache.get_many_raw([post_id for post_id, _ in keys])
        return await self._splice(keys, cached)

    async def _splice(self, keys: Sequence[tuple[int, int]], cached: Sequence[bytes | None]) -> bytes:
        """The JSON array of `keys`' posts from `cached` bodies, reading the holes from the database."""
        missing = [key for key, body in zip(keys, cached, strict=True) if body is None]
        found: dict[int, bytes] = {}
        if missing:
            fresh = [to_wire(row) for row in await self._posts.get_many([(a, p) for p, a in missing])]
            await self._post_cache.put_many(fresh)
            found = {int(post.id): _encoder.encode(post) for post in fresh}
        parts = []
        for (post_id, _), body in zip(keys, cached, strict=True):
            encoded = body if body is not None else found.get(post_id)
            # A post deleted after its id was cached in a feed has no body: skip it.
            if encoded is not None:
                parts.append(encoded)
        return b"[" + b",".join(parts) + b"]"

    # -- writes: the request path keeps what it just wrote readable at once ---------------------

    # These run after the write committed in PostgreSQL, with its outbox event. Redis being down
    # then must not turn a done write into a 503 (a client would retry what is already in
    # effect): the cache step is skipped, logged, and the pipeline repairs the caches from the
    # outbox event once Redis is back (apply() / FanoutConsumer: feeds rebuilt, the follow lists
    # dropped and recounted, the post body forgotten).

    async def post_written(self, row: PostRow) -> None:
        await _after_commit(f"post {row.id} written", self._post_cache.put_many([to_wire(row)]))

    async def post_removed(self, post_id: int) -> None:
        await _after_commit(f"post {post_id} deleted", self._post_cache.forget(post_id))

    async def follow_changed(self, user_id: int, friend_id: int) -> None:
        # Synchronously, so the follower's next read is right; the pipeline then rebuilds it.
        # Dropping the feed also discards a rebuild racing with this change (see FeedCache).
        await _after_commit(f"follow {user_id} -> {friend_id} changed", self.apply_follow(user_id, friend_id))

    async def apply_follow(self, user_id: int, friend_id: int) -> None:
        """Drop what a follow change made stale: the follower's feed and both follow lists (the
        pipeline does it again, so a change whose request found Redis down is repaired too: a
        rebuild adds to a feed, it does not replace one that is still there)."""
        await self._feeds.invalidate(user_id)
        await self._social.follow_changed(user_id, friend_id)

    # -- writes: the pipeline's part --------------------------------------------------------------

    async def apply(self, event: PostEvent, followers: Sequence[int] | None) -> None:
        """Bring caches in line with a post event; `followers` None: do not touch their feeds."""
        key = [(event.post_id, event.author_id)]
        if event.type == "post_deleted":
            await self._post_cache.forget(event.post_id)
            await self._author_posts.remove_posts([event.author_id], key)
            if followers:
                await self._feeds.remove_posts(followers, key)
            return
        if event.type == "post_created":
            await self._author_posts.add_post([event.author_id], event.post_id, event.author_id)
            if followers:
                await self._feeds.add_post(followers, event.post_id, event.author_id)
            return
        # post_updated: the request path stored the new body, unless Redis was down then; an
        # older body may still be cached. Forgotten, the next read takes it from the database.
        await self._post_cache.forget(event.post_id)


async def _after_commit(what: str, step: Awaitable[None]) -> None:
    try:
        await step
    except _REDIS_DOWN as exc:
        log.warning("%s, caches not updated (redis unavailable: %r): the pipeline repairs them", what, exc)
