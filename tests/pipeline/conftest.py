"""Both feed buses against the real brokers, each test under names of its own (a random prefix).

`bus_harness` is parametrized over Redis Streams and RabbitMQ; it builds buses (optionally through
a `TcpProxy`, to cut the broker off), runs their consumers, reads the dead-letter queue, and on
teardown stops everything and deletes the test's queues, exchanges or streams.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from redis.asyncio import Redis
from yarl import URL

from sn.pipeline.bus import FeedBus, Handler, Queue
from sn.pipeline.rabbitmq import RabbitBus
from sn.pipeline.redis_bus import RedisStreamBus
from tests.proxy import TcpProxy
from tests.support import port_open

# Short delays keep retry and reconnect tests fast; the mechanisms are the production ones.
FAST = {"retry_delay": 0.2}


async def eventually(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> float:
    """Wait until `predicate()` holds; return how long it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def eventually_true(check: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "condition") -> None:
    """`eventually` for a check that needs I/O (the bus counts a message before it acknowledges it)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


class Inbox:
    """A handler that records what it got, optionally failing on chosen bodies."""

    def __init__(self, fail: Callable[[bytes, int], bool] | None = None, delay: float = 0.0) -> None:
        self.bodies: list[bytes] = []
        self.calls: dict[bytes, int] = {}
        self._fail = fail
        self._delay = delay

    async def __call__(self, body: bytes) -> None:
        attempt = self.calls[body] = self.calls.get(body, 0) + 1
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._fail is not None and self._fail(body, attempt):
            raise RuntimeError(f"handler failed on {body!r}, attempt {attempt}")
        self.bodies.append(body)


class BusHarness:
    kind: str
    logger: str
    address: tuple[str, int]

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._buses: list[FeedBus] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def make(self, proxy: TcpProxy | None = None, **options: Any) -> FeedBus:
        bus = self._build(proxy, {**FAST, **options})
        self._buses.append(bus)
        await bus.start()
        return bus

    def consume(self, bus: FeedBus, queue: Queue, handler: Handler, prefetch: int = 64) -> asyncio.Task[None]:
        task = asyncio.create_task(bus.consume(queue, handler, prefetch=prefetch))
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # consume() must honour cancellation promptly: that is how workers shut down.
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=5)
            assert not running, f"consume() ignored its cancellation: {running}"
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for bus in self._buses:
            await bus.close()
        await self._cleanup()
        # A consumer that died of an exception (rather than our cancel) is a bug the test must show.
        errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        assert not errors, errors

    def _build(self, proxy: TcpProxy | None, options: dict[str, Any]) -> FeedBus:
        raise NotImplementedError

    async def dead_bodies(self) -> list[bytes]:
        raise NotImplementedError

    async def _cleanup(self) -> None:
        raise NotImplementedError


class RedisHarness(BusHarness):
    kind = "redis-streams"
    logger = "sn.pipeline.redis_bus"

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(prefix)
        self.url = URL(url)
        self.address = (self.url.host or "127.0.0.1", self.url.port or 6379)
        self._clients: list[Redis] = []

    def client(self, proxy: TcpProxy | None = None) -> Redis:
        url = self.url.with_host("127.0.0.1").with_port(proxy.port) if proxy else self.url
        # The timeouts the application's client uses (sn/context.py), so outage timings are real.
        client = Redis.from_url(str(url), socket_connect_timeout=5, socket_timeout=10)
        self._clients.append(client)
        return client

    def _build(self, proxy: TcpProxy | None, options: dict[str, Any]) -> FeedBus:
        consumer = f"c{len(self._buses)}"
        return RedisStreamBus(self.client(proxy), node_id="test", consumer=consumer, prefix=self.prefix, **options)

    async def dead_bodies(self) -> list[bytes]:
        entries: Any = await self.client().xrange(f"{self.prefix}:bus:dead")
        return [fields[b"body"] for _, fields in entries]

    async def _cleanup(self) -> None:
        admin = self.client()
        keys = [key async for key in admin.scan_iter(match=f"{self.prefix}:*")]
        if keys:
            await admin.delete(*keys)
        for client in self._clients:
            await client.aclose()


class RabbitHarness(BusHarness):
    kind = "rabbitmq"
    logger = "sn.pipeline.rabbitmq"

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(prefix)
        self.url = URL(url)
        self.address = (self.url.host or "127.0.0.1", self.url.port or 5672)

    def _build(self, proxy: TcpProxy | None, options: dict[str, Any]) -> FeedBus:
        url = self.url.with_host("127.0.0.1").with_port(proxy.port) if proxy else self.url
        return RabbitBus(str(url), node_id=f"test-{self.prefix}", prefix=self.prefix, reconnect_interval=0.5, **options)

    async def dead_bodies(self) -> list[bytes]:
        connection = await aio_pika.connect(str(self.url))
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(f"{self.prefix}.feed.dead", ensure=False)
            bodies = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                bodies.append(message.body)
            return bodies

    async def _cleanup(self) -> None:
        connection = await aio_pika.connect(str(self.url))
        async with connection:
            channel = await connection.channel()
            for suffix in ("events", "celebrity", "dead"):
                await channel.queue_delete(f"{self.prefix}.feed.{suffix}")
            for suffix in ("", ".dlx"):
                await channel.exchange_delete(f"{self.prefix}.feed{suffix}")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = os.environ.get("SN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    parsed = URL(url)
    if not port_open(parsed.host or "127.0.0.1", parsed.port or 5672):
        pytest.skip(f"RabbitMQ is not reachable at {parsed.host}:{parsed.port} (set SN_TEST_AMQP_URL)")
    return url


@pytest.fixture(params=["redis-streams", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def bus_harness(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[BusHarness]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    harness: BusHarness
    if request.param == "rabbitmq":
        harness = RabbitHarness(request.getfixturevalue("amqp_url"), prefix)
    else:
        harness = RedisHarness(redis_url, prefix)
    yield harness
    await harness.stop()


@pytest.fixture
async def redis_harness(redis_url: str) -> AsyncIterator[RedisHarness]:
    harness = RedisHarness(redis_url, f"t{uuid.uuid4().hex[:10]}")
    yield harness
    await harness.stop()


@pytest.fixture
async def rabbit_harness(amqp_url: str) -> AsyncIterator[RabbitHarness]:
    harness = RabbitHarness(amqp_url, f"t{uuid.uuid4().hex[:10]}")
    yield harness
    await harness.stop()
