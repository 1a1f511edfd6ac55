"""The same pipeline over RabbitMQ, including RabbitMQ cut off mid-flight and restored."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest

from tests.api.test_ws import follow, open_socket, post, recv_type
from tests.proxy import TcpProxy
from tests.support import ServerProcess, eventually, port_open, register

AMQP_URL = os.environ.get("SN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
_amqp = urlsplit(AMQP_URL)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(
        not port_open(_amqp.hostname or "127.0.0.1", _amqp.port or 5672),
        reason=f"RabbitMQ not reachable at {_amqp.hostname}:{_amqp.port} (set SN_TEST_AMQP_URL)",
    ),
]


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"sntest{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def amqp_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(_amqp.hostname or "127.0.0.1", _amqp.port or 5672) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def rabbit_server(
    server_env: dict[str, str], amqp_proxy: TcpProxy, prefix: str, private_database_url: str
) -> Iterator[ServerProcess]:
    proxied = AMQP_URL.replace(f"{_amqp.hostname}:{_amqp.port}", f"127.0.0.1:{amqp_proxy.port}")
    env = {**server_env, "SN_AMQP_URL": proxied, "SN_BUS_PREFIX": prefix, "SN_DATABASE_URL": private_database_url}
    proc = ServerProcess(env, workers=2).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def _cleanup_queues(prefix: str) -> AsyncIterator[None]:
    yield
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in ("feed.events", "feed.celebrity", "feed.dead"):
            await channel.queue_delete(f"{prefix}.{name}")
        for name in ("feed", "feed.dlx"):
            await channel.exchange_delete(f"{prefix}.{name}")


@pytest.fixture(scope="module")
def rclient(rabbit_server: ServerProcess, _cleanup_queues: None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rabbit_server.base_url, timeout=15) as http:
        yield http


async def test_delivery_over_rabbitmq(rabbit_server: ServerProcess, rclient: httpx.Client) -> None:
    assert rclient.get("/stats").json()["feed_processor"]["rabbitmq_connected"] is True
    author, reader = register(rclient), register(rclient)
    follow(rclient, reader, author)
    async with await open_socket(rabbit_server, reader) as ws:
        post_id = post(rclient, author, "over rabbit")
        assert (await recv_type(ws, "post_created"))["data"]["post_id"] == post_id


async def test_rabbitmq_cut_and_restored_post_still_arrives(
    rabbit_server: ServerProcess, rclient: httpx.Client, amqp_proxy: TcpProxy
) -> None:
    author, reader = register(rclient), register(rclient)
    follow(rclient, reader, author)
    async with await open_socket(rabbit_server, reader) as ws:
        amqp_proxy.cut()
        try:
            eventually(lambda: rclient.get("/stats").json()["feed_processor"]["rabbitmq_connected"] is False)
            post_id = post(rclient, author, "written while the broker is away")  # committed: 200
            await asyncio.sleep(1.0)
            assert rclient.get("/stats").json()["feed_processor"]["outbox_pending"] >= 1
            # Every worker waits out the outage alike: /ready lists the waiting loops but stays 200,
            # so a balancer does not take every node out while posts commit and reads are served.
            readies = [rclient.get("/ready") for _ in range(8)]  # both workers answer
            assert all(r.status_code == 200 for r in readies), [r.text for r in readies]
            assert all(r.json()["status"] in ("ok", "degraded") for r in readies)
        finally:
            amqp_proxy.restore()
        event = await recv_type(ws, "post_created", timeout=30)
        assert event["data"]["post_id"] == post_id

    def feed() -> list[str]:
        return [p["id"] for p in rclient.get("/post/feed", headers=reader.auth).json()]

    eventually(lambda: feed() == [post_id])
    eventually(lambda: rclient.get("/stats").json()["feed_processor"]["outbox_pending"] == 0)
