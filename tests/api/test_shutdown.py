"""Graceful shutdown: SIGTERM sends open sockets "going away" so clients reconnect elsewhere."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support import ServerProcess, register

pytestmark = pytest.mark.slow


async def test_sigterm_closes_sockets_with_going_away(server_env: dict[str, str]) -> None:
    server = ServerProcess(server_env, workers=1).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            user = register(http)
        url = server.base_url.replace("http://", "ws://") + f"/ws/{user.id}?token={user.token}"
        async with connect(url, open_timeout=5) as ws:
            assert json.loads(await ws.recv())["type"] == "system"
            assert server.proc is not None
            server.proc.terminate()
            await ws.wait_closed()  # the server closes; the client only answers the close frame
            assert ws.close_code == 1001
        assert server.proc.wait(timeout=20) == 0
    finally:
        server.stop()
