"""A bare Sanic WebSocket echo app: the baseline for sn's idle memory per connection.

    python bench/ws_echo_sanic.py PORT [WORKERS]

Same framework, same worker model and the same /ws/{id} path as sn, but nothing of sn's
per-connection state (actor, mailbox, writer task, presence): the difference between the two
figures is what sn adds on top of Sanic. It greets every socket with a welcome frame, as sn
does, because the load client counts a connection as open when that first frame arrives.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from sanic import Request, Sanic
from sanic.server.websockets.impl import WebsocketImplProtocol

app = Sanic("ws_echo")
app.config.MOTD = False
app.config.ACCESS_LOG = False

WELCOME = '{"type":"system","data":{"message":"Connected successfully"}}'


@app.before_server_start
async def announce(app: Sanic[Any, Any]) -> None:
    # bench/ws_load.py finds the worker processes to measure by this line.
    print(f"Starting worker [{os.getpid()}]", flush=True)


@app.websocket("/ws/<user_id:str>")  # type: ignore[untyped-decorator]
async def echo(request: Request, ws: WebsocketImplProtocol, user_id: str) -> None:
    await ws.send(WELCOME)
    while True:
        message = await ws.recv()
        if message is None:
            return
        await ws.send(message)


if __name__ == "__main__":
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    app.run(host="127.0.0.1", port=port, workers=workers, backlog=4096, access_log=False, single_process=False)
