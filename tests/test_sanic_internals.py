"""The connection protocol serves keep-alive and closing connections and, with the cyclic
collector off, leaves no Sanic ``Http`` object behind once they end.

(The cycle it breaks showed up in the server under the isolation benchmark's load, found with a
``gc.callbacks`` probe: docs/benchmarks.md, session 3. This simple app does not build it with
Sanic's stock protocol either, so the test checks our protocol's behaviour, not the contrast.)"""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid

from sanic import Sanic, text
from sanic.http.http1 import Http
from sanic.server.protocols.http_protocol import HttpProtocol

from sn.sanic_internals import ConnectionProtocol


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _live_http_objects_after_requests(protocol: type[HttpProtocol], count: int) -> int:
    Sanic.test_mode = True
    app = Sanic(f"t{uuid.uuid4().hex[:8]}")

    @app.get("/")
    async def index(request: object) -> object:
        return text("ok")

    port = _free_port()
    server = await app.create_server(
        host="127.0.0.1", port=port, protocol=protocol, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    await server.startup()
    try:
        for _ in range(count):
            # A keep-alive connection the client closes after its response, while the server waits
            # for the next request: what most clients do.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\nok")).startswith(b"HTTP/1.1 200")
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.1)  # the server's side of each connection has ended
        return sum(1 for obj in gc.get_objects() if isinstance(obj, Http))
    finally:
        await server.close()


async def test_finished_connections_are_freed_without_the_cyclic_collector() -> None:
    gc.collect()
    gc.disable()
    try:
        live = await _live_http_objects_after_requests(ConnectionProtocol, 20)
    finally:
        gc.enable()
        gc.collect()
    assert live == 0
