"""The factory picks the bus from settings (no broker is contacted: construction does not connect)."""

from __future__ import annotations

import socket

from redis.asyncio import Redis

from sn.pipeline.factory import create_bus
from sn.pipeline.rabbitmq import RabbitBus
from sn.pipeline.redis_bus import RedisStreamBus
from sn.settings import Settings


async def test_rabbitmq_when_an_amqp_url_is_set() -> None:
    redis = Redis()
    bus = create_bus(Settings(amqp_url="amqp://guest:guest@127.0.0.1:5672/", node_id="n1"), redis, consumer="w0")
    assert isinstance(bus, RabbitBus)
    assert bus.kind == "rabbitmq"
    assert bus.queue_names == {"feed": "sn.feed.events", "celebrity": "sn.feed.celebrity"}
    assert not bus.connected
    await redis.aclose()


async def test_redis_streams_otherwise_named_after_the_host_and_port() -> None:
    redis = Redis()
    bus = create_bus(Settings(), redis, consumer="w0")
    assert isinstance(bus, RedisStreamBus)
    assert bus.kind == "redis-streams"
    assert bus.streams == {"feed": "sn:bus:feed", "celebrity": "sn:bus:celebrity"}
    # host:port: two servers on one machine must not share consumer names or worker streams.
    assert bus.consumer_name == f"{socket.gethostname()}:9000:w0"
    await redis.aclose()
