"""Redis caches of post bodies and user profiles, stored as the exact JSON the API returns.

Storing the encoded response (not a Python object) means a cache hit is one GET and no encode:
the handler writes the bytes straight to the socket.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis.asyncio import Redis

from sn.models import Post, User

_POST_KEY = "sn:post:{}"
_USER_KEY = "sn:user:{}"

_post_encoder = msgspec.json.Encoder()
_post_decoder = msgspec.json.Decoder(Post)


class PostCache:
    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    async def get_many(self, post_ids: Sequence[int]) -> list[Post | None]:
        if self._ttl <= 0:
            # SN_POST_CACHE_TTL_SECONDS=0 turns the cache off (benchmarks of the database path).
            return [None] * len(post_ids)
        if not post_ids:
            return []
        raw = await self._redis.mget([_POST_KEY.format(p) for p in post_ids])
        return [_post_decoder.decode(item) if item is not None else None for item in raw]

    async def get_raw(self, post_id: int) -> bytes | None:
        if self._ttl <= 0:
            return None
        value = await self._redis.get(_POST_KEY.format(post_id))
        return value if isinstance(value, bytes) else None

    async def put_many(self, posts: Sequence[Post]) -> None:
        if not posts or self._ttl <= 0:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for post in posts:
                pipe.set(_POST_KEY.format(post.id), _post_encoder.encode(post), ex=self._ttl)
            await pipe.execute()

    async def forget(self, post_id: int) -> None:
        await self._redis.delete(_POST_KEY.format(post_id))


class ProfileCache:
    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    async def get_raw(self, user_id: int) -> bytes | None:
        if self._ttl <= 0:
            # SN_PROFILE_CACHE_TTL_SECONDS=0 turns the cache off: every /user/get reads the
            # database (what the Citus router benchmark measures).
            return None
        value = await self._redis.get(_USER_KEY.format(user_id))
        return value if isinstance(value, bytes) else None

    async def put(self, user: User) -> bytes:
        encoded = _post_encoder.encode(user)
        if self._ttl > 0:
            await self._redis.set(_USER_KEY.format(user.id), encoded, ex=self._ttl)
        return encoded

    async def forget(self, user_id: int) -> None:
        await self._redis.delete(_USER_KEY.format(user_id))
