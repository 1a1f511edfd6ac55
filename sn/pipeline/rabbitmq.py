"""`FeedBus` on RabbitMQ (aio-pika), used when SN_AMQP_URL is set.

Topology, all durable, names under `prefix` ("sn" in production):

    exchange sn.feed (topic) --"feed"------> queue sn.feed.events     --+ x-dead-letter-exchange
                             --"celebrity"-> queue sn.feed.celebrity  --+
    exchange sn.feed.dlx (fanout) ---------> queue sn.feed.dead      <--+

Retries. A failed message is not nack-requeued: that puts it back at the head of the queue, to be
redelivered at once, and the broker does not count classic-queue redeliveries. Instead, after
`retry_delay`, it is republished through the default exchange straight to the queue it came from
(so other bindings of the routing key never see it twice) with header `x-sn-attempt` + 1, and only
then is the original acked. The delivery that fails at attempt `max_deliveries` is rejected without
requeue, which the broker dead-letters to sn.feed.dead with its x-death record. A delivery lost with
a dying consumer comes back with the same attempt number: crashes are not counted.

Connection. The first connection is made by a background task with exponential backoff, so
`start()` never fails on a broker that is down. From then on aio-pika's RobustConnection reconnects
every `reconnect_interval` and restores the channels, declarations, QoS and consumers it knows of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import (
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from yarl import URL

from sn.pipeline.bus import QUEUES, BusUnavailable, Handler, Queue

log = logging.getLogger("sn.pipeline.rabbitmq")

ATTEMPT_HEADER = "x-sn-attempt"
CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 30.0


class RabbitBus:
    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        max_deliveries: int = 5,
        prefix: str = "sn",
        retry_delay: float = 1.0,
        publish_timeout: float = 5.0,
        reconnect_interval: float = 2.0,
    ) -> None:
        self._url = url
        self._node_id = node_id
        self._max_deliveries = max_deliveries
        self._retry_delay = retry_delay
        self._publish_timeout = publish_timeout
        self._reconnect_interval = reconnect_interval
        self.exchange_name = f"{prefix}.feed"
        self.dlx_name = f"{prefix}.feed.dlx"
        self.dead_queue = f"{prefix}.feed.dead"
        self.queue_names: dict[Queue, str] = {"feed": f"{prefix}.feed.events", "celebrity": f"{prefix}.feed.celebrity"}
        # Every declaration of a queue must carry the same arguments, or the broker refuses it.
        self._queue_arguments: dict[str, str] = {"x-dead-letter-exchange": self.dlx_name}
        self._connection: AbstractRobustConnection | None = None
        # Strong references matter: the robust connection only restores channels still alive (WeakSet).
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connector: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._attempted = asyncio.Event()
        self._closed = asyncio.Event()
        self._state: bool | None = None  # None until the first attempt, for once-per-transition logs
        self._counters = dict.fromkeys(
            ("published", "publish_failures", "consumed", "handler_failures", "retried", "dead_lettered"), 0
        )

    @property
    def kind(self) -> str:
        return "rabbitmq"

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def stats(self) -> dict[str, object]:
        return {"kind": self.kind, "connected": self.connected, **self._counters}

    async def start(self) -> None:
        if self._connector is None:
            self._connector = asyncio.create_task(self._connect(), name="rabbitmq-connect")
        # Wait for the first attempt only: a reachable broker is ready when start() returns (the
        # first publish does not fail needlessly); an unreachable one costs one failed connect.
        await self._attempted.wait()

    async def close(self) -> None:
        self._closed.set()
        self._up.clear()
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            # Built by hand rather than with connect_robust() so that a failed first attempt can be
            # closed: otherwise its reconnect task may live on, retrying in the background forever.
            connection = aio_pika.RobustConnection(
                URL(self._url),
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": f"sn-pipeline {self._node_id}"},
            )
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                    await connection.connect(timeout=CONNECT_TIMEOUT)
                    await self._declare(connection)
            except asyncio.CancelledError:  # close() during an attempt
                await _close_quietly(connection)
                raise
            except Exception as exc:
                await _close_quietly(connection)
                self._transition(False, exc)
                self._attempted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_connection_restored)
            self._connection = connection
            self._transition(True)
            self._attempted.set()
            return

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        # Confirms + on_return_raises: publish() returns only once the broker has queued the message.
        channel = connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.initialize()
        dlx = await channel.declare_exchange(self.dlx_name, aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(self.dead_queue, durable=True)
        await dead.bind(dlx, routing_key="")
        exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        for queue in QUEUES:
            declared = await channel.declare_queue(
                self.queue_names[queue], durable=True, arguments=dict(self._queue_arguments)
            )
            await declared.bind(exchange, routing_key=queue)
        self._channel, self._exchange = channel, exchange

    def _on_connection_lost(self, _sender: AbstractConnection | None, exc: BaseException | None) -> None:
        if not self._closed.is_set():
            self._transition(False, exc)

    def _on_connection_restored(self, _sender: AbstractRobustConnection | None) -> None:
        # Fired after the robust connection has restored every channel, not merely the socket.
        self._transition(True)

    def _transition(self, up: bool, exc: BaseException | None = None) -> None:
        if up:
            self._up.set()
        else:
            self._up.clear()
        if up == self._state:
            return
        previous, self._state = self._state, up
        if not up:
            log.warning("rabbitmq lost: %r", exc)
        elif previous is False:
            log.warning("rabbitmq regained")  # as loud as "lost", so whoever sees one sees both
        else:
            log.info("rabbitmq connected")

    async def publish(self, queue: Queue, body: bytes, *, message_id: str) -> None:
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id=self._node_id,
        )
        await self._send(message, queue, direct=False)
        self._counters["published"] += 1

    async def _send(self, message: aio_pika.Message, routing_key: str, *, direct: bool) -> None:
        channel, exchange = self._channel, self._exchange
        if not self._up.is_set() or channel is None or exchange is None:
            self._counters["publish_failures"] += 1
            raise BusUnavailable("rabbitmq is not connected")
        target = channel.default_exchange if direct else exchange
        try:
            async with asyncio.timeout(self._publish_timeout):
                await target.publish(message, routing_key=routing_key)
        except Exception as exc:  # lost channel, nack (DeliveryError), unroutable (PublishError), timeout
            self._counters["publish_failures"] += 1
            raise BusUnavailable(f"rabbitmq did not confirm the message: {exc!r}") from exc

    async def consume(self, queue: Queue, handler: Handler, *, prefetch: int = 64) -> None:
        # aio-pika runs each delivery in its own task: up to `prefetch` handlers run at once.
        inflight: set[asyncio.Task[object]] = set()
        stopping = False

        async def on_message(message: AbstractIncomingMessage) -> None:
            if stopping:
                return  # left unacked: the broker requeues it when the channel closes
            task = asyncio.current_task()
            if task is not None:
                inflight.add(task)
            try:
                await self._process(queue, handler, message)
            finally:
                if task is not None:
                    inflight.discard(task)

        channel = await self._open_consumer(queue, on_message, prefetch)
        try:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # aiormq's RPC timeouts use asyncio.wait_for, which on Python 3.11 can drop a
                # cancellation landing as the call completes: do not wait forever after one.
                raise asyncio.CancelledError
            await self._closed.wait()
        finally:
            stopping = True
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            with contextlib.suppress(Exception):
                await channel.close()

    async def _open_consumer(
        self, queue: Queue, on_message: Callable[[AbstractIncomingMessage], Awaitable[None]], prefetch: int
    ) -> AbstractRobustChannel:
        """A channel of its own per consumer, so one queue's prefetch window never starves another's."""
        while True:
            await self._up.wait()
            assert self._connection is not None
            channel = self._connection.channel(publisher_confirms=False)
            ready = False
            try:
                await channel.initialize()
                await channel.set_qos(prefetch_count=prefetch)
                declared = await channel.declare_queue(
                    self.queue_names[queue], durable=True, arguments=dict(self._queue_arguments)
                )
                await declared.consume(on_message)
                ready = True
                return channel
            except Exception as exc:  # the connection dropped mid-setup: wait for it and start over
                log.debug("rabbitmq: cannot consume %s yet: %r", queue, exc)
            finally:
                if not ready:
                    with contextlib.suppress(Exception):
                        await channel.close()
            await asyncio.sleep(self._reconnect_interval)

    async def _process(self, queue: Queue, handler: Handler, message: AbstractIncomingMessage) -> None:
        try:
            await handler(message.body)
        except Exception as exc:
            self._counters["handler_failures"] += 1
            await self._retry_or_dead_letter(queue, message, exc)
        else:
            self._counters["consumed"] += 1
            await _settle(message.ack())

    async def _retry_or_dead_letter(self, queue: Queue, message: AbstractIncomingMessage, exc: Exception) -> None:
        attempt = _attempt(message)
        if attempt >= self._max_deliveries:
            log.error("%s: message %s failed %d times, dead-lettered: %r", queue, message.message_id, attempt, exc)
            self._counters["dead_lettered"] += 1
            await _settle(message.reject(requeue=False))
            return
        log.warning("%s: message %s failed (attempt %d), retrying: %r", queue, message.message_id, attempt, exc)
        await asyncio.sleep(self._retry_delay)
        retry = aio_pika.Message(
            message.body,
            headers={**message.headers, ATTEMPT_HEADER: attempt + 1},
            message_id=message.message_id,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id=message.app_id,
        )
        try:
            await self._send(retry, self.queue_names[queue], direct=True)
        except BusUnavailable:
            # Give it back as is; had the connection gone, the broker would requeue it anyway.
            await _settle(message.nack(requeue=True))
            return
        self._counters["retried"] += 1
        await _settle(message.ack())


def _attempt(message: AbstractIncomingMessage) -> int:
    value = message.headers.get(ATTEMPT_HEADER)
    return value if isinstance(value, int) and value > 0 else 1


async def _settle(action: Awaitable[None]) -> None:
    # Acking needs the channel the message came on. If the connection was lost since, the broker
    # has already requeued the delivery and there is nothing left to settle.
    try:
        await action
    except Exception as exc:
        log.debug("rabbitmq: could not settle a delivery: %r", exc)


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()
