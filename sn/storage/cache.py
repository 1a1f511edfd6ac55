"""Redis caches of post bodies and user profiles, stored as the exact JSON the API returns.

Storing the encoded response (not a Python object) means a cache hit is one GET and no encode:
the handler writes the bytes straight to the socket.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sn.models import Post, User
from sn.storage.redis_mux import MuxRedis

POST_KEY_PREFIX = "sn:post:"
_POST_KEY = POST_KEY_PREFIX + "{}"
# v2: profiles without nulls (an unset biography is ""); the key changed so that bodies cached
# by an older version, with null, are not served after an upgrade.
USER_KEY = "sn:user:v2:{}"

_post_encoder = msgspec.json.Encoder()


class PostCache:
    def __init__(self, redis: Redis, *, ttl_seconds: int, reads: MuxRedis) -> None:
        self._redis = redis
        # Reads are on the request path: the multiplexed client (writes are rarer: redis-py).
        self._reads = reads
        self._ttl = ttl_seconds

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def get_many_raw(self, post_ids: Sequence[int]) -> list[bytes | None]:
        """Encoded bodies (the API's JSON) in order, None for misses: a feed page splices them
        into its response without decoding and re-encoding each post."""
        if self._ttl <= 0:
            # SN_POST_CACHE_TTL_SECONDS=0 turns the cache off (benchmarks of the database path).
            return [None] * len(post_ids)
        if not post_ids:
            return []
        return await self._reads.mget([_POST_KEY.format(p) for p in post_ids])

    async def get_raw(self, post_id: int) -> bytes | None:
        if self._ttl <= 0:
            return None
        return await self._reads.get(_POST_KEY.format(post_id))

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
    """Redis, fronted by a small per-worker memory cache.

    A Redis GET costs more worker CPU than a whole /health request (client, parsing, the round
    trip), and profiles are read far more often than they change (the API has no profile edit
    yet), so each worker keeps recently served profiles for a few seconds. `forget` clears this
    worker's copy; other workers' copies expire within `local_seconds`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        ttl_seconds: int,
        local_size: int = 0,
        local_seconds: float = 0.0,
        reads: MuxRedis,
    ) -> None:
        self._redis = redis
        self._reads = reads
        self._ttl = ttl_seconds
        self._local_size = local_size
        self._local_seconds = local_seconds
        self._local: OrderedDict[int, tuple[float, bytes]] = OrderedDict()

    def _remember(self, user_id: int, encoded: bytes) -> None:
        if self._local_size > 0:
            self._local[user_id] = (time.monotonic() + self._local_seconds, encoded)
            if len(self._local) > self._local_size:
                self._local.popitem(last=False)

    async def get_raw(self, user_id: int) -> bytes | None:
        if self._ttl <= 0:
            # SN_PROFILE_CACHE_TTL_SECONDS=0 turns the cache off: every /user/get reads the
            # database (what the Citus router benchmark measures).
            return None
        local = self._local.get(user_id)
        if local is not None:
            if local[0] > time.monotonic():
                return local[1]
            del self._local[user_id]
        value = await self._reads.get(USER_KEY.format(user_id))
        if value is None:
            return None
        self._remember(user_id, value)
        return value

    async def put(self, user: User) -> bytes:
        encoded = _post_encoder.encode(user)
        if self._ttl > 0:
            await self._redis.set(USER_KEY.format(user.id), encoded, ex=self._ttl)
            self._remember(int(user.id), encoded)
        return encoded

    async def forget(self, user_id: int) -> None:
        self._local.pop(user_id, None)
        await self._redis.delete(USER_KEY.format(user_id))

    async def exists(self, user_id: int, load: Callable[[int], Awaitable[User | None]]) -> bool:
        """Whether the user exists (for tokens: see TokenService.authenticate). A profile in this
        worker's memory or in Redis says yes; otherwise ``load`` (the database) decides, and a
        profile it finds goes to Redis for the next worker and for /user/get. On the pipelined
        client, and without copying profiles into this worker's memory: a reconnect storm checks
        thousands of users whose profiles nobody reads.

        Every authenticated request may ask this, writes included: with Redis down the database
        answers alone, so a write that needs only PostgreSQL is not refused for want of a cache."""
        key = USER_KEY.format(user_id)
        redis_down = False
        if self._ttl > 0:
            if user_id in self._local:
                return True
            try:
                if await self._reads.execute("EXISTS", key):
                    return True
            except (RedisConnectionError, RedisTimeoutError):
                redis_down = True
        user = await load(user_id)
        if user is None:
            return False
        if self._ttl > 0 and not redis_down:
            await self._reads.execute("SET", key, _post_encoder.encode(user), "EX", self._ttl)
        return True
