"""The message bus the feed pipeline runs on, as an interface with two implementations.

`RabbitBus` (aio-pika) when SN_AMQP_URL is set; `RedisStreamBus` otherwise, so the embedded
default needs no RabbitMQ. Both give the same guarantees to the pipeline:

- `publish` returns only once the broker has the message durably (publisher confirm / XADD
  reply); otherwise it raises `BusUnavailable` and the caller keeps the message (the outbox).
- `consume` delivers each message at least once; a message is acknowledged only after the
  handler returns. A handler exception means "retry later"; after `max_deliveries` attempts the
  message goes to a dead-letter queue instead of blocking the queue forever.
- Queues are independent: a backlog on `celebrity` never delays `feed`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

Queue = Literal["feed", "celebrity"]
QUEUES: tuple[Queue, ...] = ("feed", "celebrity")
Handler = Callable[[bytes], Awaitable[None]]


class BusUnavailable(Exception):
    """The broker did not take the message (down, unreachable, or it refused to confirm)."""


class FeedBus(Protocol):
    @property
    def kind(self) -> str:
        """ "rabbitmq" or "redis-streams", for /stats."""
        ...

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None:
        """Connect and declare queues. Must not fail if the broker is down: reconnects in the background."""
        ...

    async def close(self) -> None: ...

    async def publish(self, queue: Queue, body: bytes, *, message_id: str) -> None: ...

    async def consume(self, queue: Queue, handler: Handler, *, prefetch: int = 64) -> None:
        """Run the handler on every message of `queue` until cancelled (survives broker restarts)."""
        ...

    def stats(self) -> dict[str, object]:
        """Counters for /stats: published, consumed, failed, dead-lettered, connected, queue depth if known."""
        ...
