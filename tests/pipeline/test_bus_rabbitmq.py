"""What only the RabbitMQ bus has to get right: message properties, dead-letter records, and
recovery from a close the broker itself initiates (as on a broker restart or node maintenance)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from typing import Any

import aio_pika
import pytest

from sn.pipeline.bus import BusUnavailable
from sn.pipeline.rabbitmq import ATTEMPT_HEADER, RabbitBus
from tests.pipeline.conftest import Inbox, RabbitHarness, eventually

pytestmark = pytest.mark.rabbitmq


async def test_published_messages_are_persistent_json_with_an_id(rabbit_harness: RabbitHarness) -> None:
    bus = await rabbit_harness.make()
    assert isinstance(bus, RabbitBus)
    await bus.publish("feed", b'{"p":1}', message_id="msg-1")

    connection = await aio_pika.connect(str(rabbit_harness.url))
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(bus.queue_names["feed"], ensure=False)
        message = await queue.get(no_ack=True, fail=False)
    assert message is not None
    assert message.body == b'{"p":1}'
    assert message.message_id == "msg-1"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_dead_lettered_message_keeps_its_id_and_attempts(rabbit_harness: RabbitHarness) -> None:
    bus = await rabbit_harness.make(max_deliveries=2)
    assert isinstance(bus, RabbitBus)
    rabbit_harness.consume(bus, "celebrity", Inbox(fail=lambda body, attempt: True))
    await bus.publish("celebrity", b'{"bad":1}', message_id="bad-1")
    await eventually(lambda: bus.stats()["dead_lettered"] == 1, what="dead-lettering")

    connection = await aio_pika.connect(str(rabbit_harness.url))
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(bus.dead_queue, ensure=False)
        message = None
        for _ in range(50):  # the broker dead-letters asynchronously after the reject
            if (message := await queue.get(no_ack=True, fail=False)) is not None:
                break
            await asyncio.sleep(0.05)
    assert message is not None
    assert message.message_id == "bad-1"
    assert message.headers[ATTEMPT_HEADER] == 2
    deaths: Any = message.headers["x-death"]
    assert len(deaths) == 1
    assert deaths[0]["reason"] == "rejected"
    assert deaths[0]["queue"] == bus.queue_names["celebrity"]


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=30).stdout


async def test_consumer_survives_a_broker_initiated_close(
    rabbit_harness: RabbitHarness, caplog: pytest.LogCaptureFixture
) -> None:
    if shutil.which("rabbitmqctl") is None or rabbit_harness.address[0] not in ("127.0.0.1", "localhost"):
        pytest.skip("needs rabbitmqctl for the local broker to force-close a connection")
    try:
        _rabbitmqctl("list_connections", "pid")
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"rabbitmqctl cannot reach the broker: {exc}")

    caplog.set_level(logging.INFO, logger=rabbit_harness.logger)
    bus = await rabbit_harness.make()
    inbox = Inbox()
    rabbit_harness.consume(bus, "feed", inbox)
    await bus.publish("feed", b'{"before":1}', message_id="b")
    await eventually(lambda: len(inbox.bodies) == 1)

    # CONNECTION_FORCED (320), what the broker sends its clients when it shuts down.
    name = f"sn-pipeline test-{rabbit_harness.prefix}"
    listing = await asyncio.to_thread(_rabbitmqctl, "list_connections", "pid", "client_properties")
    pids = [line.split("\t")[0] for line in listing.splitlines() if name in line]
    assert len(pids) == 1, listing
    await asyncio.to_thread(_rabbitmqctl, "close_connection", pids[0], "test: forced close")
    # Reconnecting takes milliseconds here, too fast to catch `connected` false: read the log.
    await eventually(lambda: "rabbitmq lost" in caplog.text, what="the close to be noticed")

    for _ in range(100):
        try:
            await bus.publish("feed", b'{"after":1}', message_id="a")
            break
        except BusUnavailable:
            await asyncio.sleep(0.1)
    await eventually(lambda: b'{"after":1}' in inbox.bodies, what="the consumer to be restored")
    assert bus.connected
    assert "rabbitmq regained" in caplog.text
