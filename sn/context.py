"""Per-worker state: connections, repositories, services and actors, built in a Sanic listener.

Workers are spawned processes: nothing here may be created at import time. `Services.start`
runs in each worker's `before_server_start`; `Services.close` in `after_server_stop`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from sn.auth import PasswordService, TokenService
from sn.citus.coordinator import cluster_mode
from sn.citus.hot_users import HotPromoter
from sn.connections import startup_connection
from sn.fanout.celebrity import CelebrityActor, QueueRouter
from sn.fanout.live_settings import CelebritySettings, LiveSettings
from sn.fanout.normal import FanoutConsumer
from sn.fanout.warmer import FeedWarmer
from sn.feed import FeedService
from sn.ids import IdGenerator
from sn.keyed_limit import KeyedLimit
from sn.pipeline.bus import FeedBus
from sn.pipeline.factory import create_bus
from sn.pipeline.outbox import Outbox, OutboxRelay
from sn.realtime.connlimits import ConnectionLimits
from sn.realtime.eventlog import EventLog
from sn.realtime.hub import Hub
from sn.realtime.presence import Presence
from sn.realtime.rebalance import RebalancePolicy
from sn.realtime.recovery import RedisRecovery
from sn.realtime.restart_policy import RestartPolicy
from sn.realtime.router import StreamRouter
from sn.realtime.supervision import SupervisedLoop, exit_worker
from sn.settings import Settings
from sn.storage.cache import PostCache, ProfileCache
from sn.storage.db import create_pool
from sn.storage.dialogs import DialogRepository
from sn.storage.feed_cache import FeedCache
from sn.storage.feed_read import FeedReader
from sn.storage.friends import FriendRepository
from sn.storage.idlease import GeneratorLease
from sn.storage.posts import PostRepository
from sn.storage.ratelimit import RateLimiter
from sn.storage.redis_mux import MuxRedis
from sn.storage.shard_reads import ShardReads
from sn.storage.social_cache import COUNTS_KEY, FOLLOWING_PREFIX, SocialCache
from sn.storage.users import UserRepository

log = logging.getLogger("sn.context")


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    mux: MuxRedis
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
    social: SocialCache
    rate_limiter: RateLimiter
    live: LiveSettings
    bus: FeedBus
    relay: OutboxRelay
    hub: Hub
    presence: Presence
    eventlog: EventLog
    fanout: FanoutConsumer
    warmer: FeedWarmer
    follow_gate: KeyedLimit[int]
    celebrity: CelebrityActor
    conn_limits: ConnectionLimits
    shard_reads: ShardReads | None = None
    loops: list[SupervisedLoop] = field(default_factory=list)
    recovery: RedisRecovery | None = None
    # What a critical loop that gave up does: end the worker (tests of pieces may replace it).
    on_give_up: Callable[[str], None] = exit_worker

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        if not settings.database_url or not settings.redis_url:
            raise RuntimeError("SN_DATABASE_URL and SN_REDIS_URL must be set (or use `sn dev`)")
        # A blocking pool: under a reconnect storm thousands of handshakes want Redis at once;
        # the default pool raises past its limit (leaving sockets half set up), this one queues.
        redis = Redis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=256,
                timeout=10,
                socket_connect_timeout=5,
                socket_timeout=10,
                health_check_interval=30,
                # After Redis restarts, every pooled connection is dead and fails its next command:
                # that command is retried once on a new connection rather than answered 503.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
                retry_on_error=[RedisConnectionError],
            )
        )
        # The request path's hot reads share one pipelined connection per worker (see redis_mux).
        mux = MuxRedis(settings.redis_url, timeout=10, connect_timeout=5)
        # A server that does not answer: the error names the setting and where its value came
        # from (sn/connections.py), not just "ConnectionRefusedError … 9299".
        with startup_connection("database_url", settings.database_url):
            pool = await create_pool(settings, settings.database_url)
        lease = GeneratorLease(redis)
        with startup_connection("redis_url", settings.redis_url):
            generator_id = await lease.acquire()
        ids = IdGenerator(generator_id)
        lease.on_change = ids.rebind
        outbox = Outbox(ids.next_id)
        shard_reads = await _shard_reads(settings, pool, settings.database_url)
        posts = PostRepository(pool, outbox, reads=shard_reads)
        friends = FriendRepository(pool, outbox)
        post_cache = PostCache(redis, ttl_seconds=settings.post_cache_ttl_seconds, reads=mux)
        feeds = FeedCache(redis, size=settings.feed_cache_size, ttl_seconds=settings.feed_cache_ttl_seconds, mux=mux)
        author_posts = FeedCache(
            redis,
            size=settings.feed_cache_size,
            ttl_seconds=settings.feed_cache_ttl_seconds,
            mux=mux,
            prefix="sn:authorposts:",
        )
        social = SocialCache(redis, friends, reads=mux)
        live = LiveSettings(
            redis,
            CelebritySettings(
                celebrity_threshold=settings.celebrity_threshold,
                batch_size=settings.celebrity_batch_size,
                batch_delay=settings.celebrity_batch_delay,
            ),
        )
        await live.refresh()
        feed = FeedService(
            feeds=feeds,
            author_posts=author_posts,
            posts=posts,
            post_cache=post_cache,
            social=social,
            celebrity_threshold=lambda: live.current.celebrity_threshold,
            reader=FeedReader(mux, feed_prefix=feeds.prefix, following_prefix=FOLLOWING_PREFIX, counts_key=COUNTS_KEY),
        )
        node_id = settings.resolved_node_id()
        worker_name = os.environ.get("SANIC_WORKER_NAME", f"pid-{os.getpid()}")
        bus = create_bus(settings, redis, consumer=f"{node_id}:{worker_name}")
        presence = Presence(mux)
        eventlog = EventLog(mux)
        hub = Hub(
            redis,
            presence,
            eventlog,
            node_id=node_id,
            worker_name=worker_name,
            followed_among=social.followed_among,
            rebalance=RebalancePolicy(
                rate=settings.ws_rebalance_rate,
                slack=settings.ws_rebalance_slack,
                min_excess=settings.ws_rebalance_min_excess,
                warmup=settings.ws_rebalance_warmup_seconds,
            ),
        )
        await presence.forget_worker(hub.stream_key)
        warmer = FeedWarmer(feed.warm, rate=settings.feed_warm_rate)
        services = cls(
            settings=settings,
            pool=pool,
            redis=redis,
            mux=mux,
            lease=lease,
            ids=ids,
            tokens=TokenService(settings.require_secret(), settings.jwt_ttl_seconds),
            passwords=PasswordService(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
                concurrency=settings.password_hash_concurrency,
            ),
            users=UserRepository(pool, reads=shard_reads),
            shard_reads=shard_reads,
            friends=friends,
            posts=posts,
            dialogs=DialogRepository(pool),
            profiles=ProfileCache(
                redis,
                ttl_seconds=settings.profile_cache_ttl_seconds,
                local_size=settings.profile_local_cache_size,
                local_seconds=settings.profile_local_cache_seconds,
                reads=mux,
            ),
            post_cache=post_cache,
            feeds=feeds,
            feed=feed,
            social=social,
            rate_limiter=RateLimiter(mux, window_seconds=settings.rate_limit_window_seconds),
            live=live,
            bus=bus,
            relay=OutboxRelay(pool, bus, QueueRouter(social, live), slow_delivery_ms=settings.slow_delivery_ms),
            hub=hub,
            conn_limits=ConnectionLimits(
                mux, per_user=settings.ws_max_per_user, per_address=settings.ws_max_per_address
            ),
            presence=presence,
            eventlog=eventlog,
            fanout=FanoutConsumer(
                feed=feed,
                social=social,
                presence=presence,
                eventlog=eventlog,
                warmer=warmer,
                slow_delivery_ms=settings.slow_delivery_ms,
            ),
            warmer=warmer,
            follow_gate=KeyedLimit(settings.follow_concurrency_per_user, rate=settings.follow_rate_per_user),
            celebrity=CelebrityActor(
                redis=redis, feed=feed, social=social, presence=presence, eventlog=eventlog, live=live
            ),
        )
        services.tokens.bind_subjects(lambda user_id: services.profiles.exists(user_id, services.users.get))
        await services._start_actors()
        log.info("worker ready: id generator %d, stream %s, bus %s", generator_id, hub.stream_key, bus.kind)
        return services

    async def _start_actors(self) -> None:
        await self.bus.start()
        self.relay.start()
        router = StreamRouter(self.redis, self.hub)
        recovery = self.recovery = RedisRecovery(
            self.redis, self.hub, ensure_stream=router.ensure_stream, on_recovered=self.lease.renew
        )
        router.on_lost = recovery.suspect
        policy = RestartPolicy(
            max_restarts=self.settings.loop_max_restarts, window=self.settings.loop_restart_window_seconds
        )

        def supervised(name: str, body: Callable[[], Awaitable[None]], *, critical: bool = False) -> SupervisedLoop:
            # Critical: without it this worker delivers nothing, so giving up ends the worker.
            return SupervisedLoop(name, body, policy=policy, critical=critical, on_give_up=self.on_give_up)

        self.loops = [
            supervised("router", router.run, critical=True),
            supervised("redis-recovery", recovery.run, critical=True),
            supervised("presence", self.hub.presence_loop, critical=True),
            supervised(
                "keepalive",
                lambda: self.hub.keepalive_loop(
                    self.settings.ws_ping_interval_seconds, self.settings.ws_ping_timeout_seconds
                ),
                critical=True,
            ),
            supervised("live-settings", self.live.poll),
            supervised("feed-warmer", self.warmer.run),
            supervised("conn-limits", self.conn_limits.heartbeat),
            supervised("fanout", lambda: self.bus.consume("feed", self.fanout.handle, prefetch=64), critical=True),
            # One celebrity fan-out at a time per worker: its batches are paced, not parallel.
            supervised(
                "celebrity", lambda: self.bus.consume("celebrity", self.celebrity.handle, prefetch=1), critical=True
            ),
            # Citus only: moves users who reached the celebrity threshold to the hot worker.
            supervised(
                "hot-promoter",
                HotPromoter(
                    str(self.settings.database_url),
                    self.pool,
                    self.social.celebrities,
                    lambda: self.live.current.celebrity_threshold,
                ).run,
            ),
        ]
        if self.shard_reads is not None:
            self.loops.append(supervised("shard-map", self.shard_reads.run))
        for loop in self.loops:
            loop.start()
        self.hub.extra_stats = lambda: {
            "router": {"entries": router.entries, "claimed": router.claimed},
            "recovery": {"recoveries": recovery.recoveries, "resyncs_sent": recovery.resyncs_sent},
            "fanout": self.fanout.stats(),
            "celebrity": {"fanouts": self.celebrity.fanouts, "batches": self.celebrity.batches},
            "relay": {
                "published": self.relay.published,
                "deferred": self.relay.deferred,
                "failures": self.relay.failures,
                "last_error": self.relay.last_error,
            },
            "bus": self.bus.stats(),
            "shard_reads": self.shard_reads.stats() if self.shard_reads is not None else None,
            "loops": {
                loop.name: {
                    "status": loop.status(),
                    "running": loop.running,
                    "restarts": loop.restarts,
                    "failed": loop.failed,
                    "last_error": loop.last_error,
                }
                for loop in self.loops
            },
        }

    async def close(self) -> None:
        for loop in self.loops:
            await loop.stop()
        await self.celebrity.stop()
        await self.relay.stop()
        await self.bus.close()
        try:
            await self.conn_limits.close()
        except Exception as exc:
            log.debug("could not give back connection counts: %s", exc)
        try:
            await self.hub.withdraw()
        except Exception as exc:  # Redis may be the reason we are stopping
            log.debug("could not withdraw worker stats: %s", exc)
        self.passwords.close()
        await self.lease.release()
        if self.shard_reads is not None:
            await self.shard_reads.close()
        await self.pool.close()
        await self.redis.aclose()
        await self.mux.aclose()


async def _shard_reads(settings: Settings, pool: asyncpg.Pool, database_url: str) -> ShardReads | None:
    """On Citus (and unless SN_CITUS_DIRECT_READS=false), the router of single-shard reads."""
    if not settings.citus_direct_reads:
        return None
    async with pool.acquire() as conn:
        if await cluster_mode(conn) != "citus":
            return None

    async def open_pool(url: str) -> asyncpg.Pool:
        # One prepared statement per query and shard: more than the coordinator pool needs.
        # A short connect timeout: a node that drops packets must not hold reads for asyncpg's 60 s.
        return await create_pool(settings, url, min_size=0, statement_cache_size=1024, connect_timeout=2.0)

    reads = ShardReads(pool, database_url, open_pool)
    try:
        await reads.refresh()
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("shard map not loaded yet (%s); reads go through the coordinator until it is", exc)
    return reads
