"""Choose the feed bus from settings: RabbitMQ when configured, Redis Streams otherwise."""

from __future__ import annotations

from redis.asyncio import Redis

from sn.pipeline.bus import FeedBus
from sn.pipeline.rabbitmq import RabbitBus
from sn.pipeline.redis_bus import RedisStreamBus
from sn.settings import Settings


def create_bus(settings: Settings, redis: Redis, *, consumer: str) -> FeedBus:
    """`consumer` names this process among the Redis group's consumers (RabbitMQ does not need it)."""
    node_id = settings.resolved_node_id()
    if settings.amqp_url:
        return RabbitBus(settings.amqp_url, node_id=node_id, prefix=settings.bus_prefix)
    return RedisStreamBus(redis, node_id=node_id, consumer=consumer, prefix=settings.bus_prefix)
