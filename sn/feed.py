"""Feed reads (cache first, rebuild on miss) and the cache maintenance every feed-changing write needs."""

from __future__ import annotations

import logging

from sn.models import Post
from sn.storage.cache import PostCache
from sn.storage.feed_cache import FeedCache
from sn.storage.friends import FriendRepository
from sn.storage.posts import PostRepository, PostRow

log = logging.getLogger("sn.feed")


def to_wire(row: PostRow) -> Post:
    return Post(id=str(row.id), text=row.text, author_user_id=str(row.author_id), created_at=row.created_at)


class FeedService:
    def __init__(
        self, *, feeds: FeedCache, posts: PostRepository, post_cache: PostCache, friends: FriendRepository
    ) -> None:
        self._feeds = feeds
        self._posts = posts
        self._post_cache = post_cache
        self._friends = friends

    # -- reads ---------------------------------------------------------------------------------

    async def page(self, user_id: int, *, offset: int, limit: int, before: int | None) -> list[Post]:
        cached = await self._feeds.page(user_id, offset=offset, limit=limit, before=before)
        if cached.hit and not cached.exhausted:
            keys = cached.keys
        elif cached.hit:
            # The page runs past the cached window: older posts live only in the database.
            keys = await self._posts.feed_keys(
                await self._friends.following(user_id), limit, before=before, offset=offset
            )
        else:
            keys = await self._rebuild(user_id, offset=offset, limit=limit, before=before)
        return await self.bodies(keys)

    async def _rebuild(self, user_id: int, *, offset: int, limit: int, before: int | None) -> list[tuple[int, int]]:
        await self._feeds.begin_rebuild(user_id)
        following = await self._friends.following(user_id)
        newest = await self._posts.feed_keys(following, self._feeds.size)
        await self._feeds.commit_rebuild(user_id, [(post_id, author) for post_id, author in newest])
        window = [key for key in newest if before is None or key[0] < before]
        if len(newest) == self._feeds.size and offset + limit > len(window):
            return await self._posts.feed_keys(following, limit, before=before, offset=offset)
        return window[offset : offset + limit]

    async def bodies(self, keys: list[tuple[int, int]]) -> list[Post]:
        """Post bodies for (post_id, author_id) keys in order: one MGET, then the misses from the DB."""
        cached = await self._post_cache.get_many([post_id for post_id, _ in keys])
        missing = [key for key, post in zip(keys, cached, strict=True) if post is None]
        found: dict[str, Post] = {}
        if missing:
            fresh = [to_wire(row) for row in await self._posts.get_many([(a, p) for p, a in missing])]
            await self._post_cache.put_many(fresh)
            found = {post.id: post for post in fresh}
        result = []
        for (post_id, _), post in zip(keys, cached, strict=True):
            body = post if post is not None else found.get(str(post_id))
            # A post deleted after its id was cached in a feed has no body: skip it.
            if body is not None:
                result.append(body)
        return result

    # -- cache maintenance after writes ----------------------------------------------------------

    async def post_created(self, row: PostRow) -> None:
        await self._post_cache.put_many([to_wire(row)])
        recipients = await self._friends.followers(row.author_id)
        await self._feeds.add_post(recipients, row.id, row.author_id)

    async def post_updated(self, row: PostRow) -> None:
        # Feeds hold ids only: an edit changes the body, never a feed's membership or order.
        await self._post_cache.put_many([to_wire(row)])

    async def post_deleted(self, post_id: int, author_id: int) -> None:
        await self._post_cache.forget(post_id)
        recipients = await self._friends.followers(author_id)
        await self._feeds.remove_posts(recipients, [(post_id, author_id)])

    async def follow_changed(self, user_id: int) -> None:
        # Dropping the feed also discards a rebuild racing with this change (see FeedCache).
        await self._feeds.invalidate(user_id)
