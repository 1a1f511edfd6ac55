"""Per-worker state: connections, repositories and services, built in a Sanic listener.

Workers are spawned processes: nothing here may be created at import time. `Services.start`
runs in each worker's `before_server_start`; `Services.close` in `after_server_stop`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from sn.auth import PasswordService, TokenService
from sn.feed import FeedService
from sn.ids import IdGenerator
from sn.settings import Settings
from sn.storage.cache import PostCache, ProfileCache
from sn.storage.db import create_pool
from sn.storage.dialogs import DialogRepository
from sn.storage.feed_cache import FeedCache
from sn.storage.friends import FriendRepository
from sn.storage.idlease import GeneratorLease
from sn.storage.posts import PostRepository
from sn.storage.ratelimit import RateLimiter
from sn.storage.users import UserRepository

log = logging.getLogger("sn.context")


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    lease: GeneratorLease
    ids: IdGenerator
    tokens: TokenService
    passwords: PasswordService
    users: UserRepository
    friends: FriendRepository
    posts: PostRepository
    dialogs: DialogRepository
    profiles: ProfileCache
    post_cache: PostCache
    feeds: FeedCache
    feed: FeedService
    rate_limiter: RateLimiter

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        if not settings.database_url or not settings.redis_url:
            raise RuntimeError("SN_DATABASE_URL and SN_REDIS_URL must be set (or use `sn dev`)")
        redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
        )
        pool = await create_pool(settings, settings.database_url)
        lease = GeneratorLease(redis)
        generator_id = await lease.acquire()
        log.info("worker ready: id generator %d", generator_id)
        posts = PostRepository(pool)
        friends = FriendRepository(pool)
        post_cache = PostCache(redis, ttl_seconds=settings.post_cache_ttl_seconds)
        feeds = FeedCache(redis, size=settings.feed_cache_size, ttl_seconds=settings.feed_cache_ttl_seconds)
        return cls(
            settings=settings,
            pool=pool,
            redis=redis,
            lease=lease,
            ids=IdGenerator(generator_id),
            tokens=TokenService(settings.require_secret(), settings.jwt_ttl_seconds),
            passwords=PasswordService(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
                concurrency=settings.password_hash_concurrency,
            ),
            users=UserRepository(pool),
            friends=friends,
            posts=posts,
            dialogs=DialogRepository(pool),
            profiles=ProfileCache(redis, ttl_seconds=settings.profile_cache_ttl_seconds),
            post_cache=post_cache,
            feeds=feeds,
            feed=FeedService(feeds=feeds, posts=posts, post_cache=post_cache, friends=friends),
            rate_limiter=RateLimiter(redis, window_seconds=settings.rate_limit_window_seconds),
        )

    async def close(self) -> None:
        self.passwords.close()
        await self.lease.release()
        await self.pool.close()
        await self.redis.aclose()
