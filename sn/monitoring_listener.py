"""The monitoring listener (SN_MONITORING_ACCESS=listen): a second address served by every worker.

Each worker listens on SN_MONITORING_LISTEN itself (SO_REUSEPORT: the kernel spreads connections
over the workers) with the same protocol and app as the main port; routes tell the two apart by
the connection's local port (``sn.api.monitoring.on_monitoring_listener``). Not Sanic's own
multi-server support (``app.prepare`` twice): that runs the app's start and stop listeners once
more for the second server, and stopping services twice hung the worker's shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sanic import Sanic

from sn.sanic_internals import ConnectionProtocol, connection_protocol_factory

log = logging.getLogger("sn.monitoring_listener")


class MonitoringListener:
    def __init__(self, app: Sanic[Any, Any], host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._connections: set[ConnectionProtocol] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        factory = connection_protocol_factory(self._app, loop, self._connections)
        self._server = await loop.create_server(factory, self._host, self._port, reuse_port=True, backlog=128)
        log.info("monitoring endpoints on %s:%d", self._host, self._port)

    def stop_accepting(self) -> None:
        """The worker drains: no new monitoring connections, idle ones closed."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close_if_idle()

    async def close(self) -> None:
        self.stop_accepting()
        for connection in list(self._connections):
            connection.close()  # (monitoring requests are short; none is worth waiting for here)
        if self._server is not None:
            await self._server.wait_closed()
