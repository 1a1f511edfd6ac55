"""The yardstick for sn's fan-out: `websockets.broadcast` to every connected socket.

    python bench/ws_broadcast_server.py PORT

One process on uvloop (as Sanic runs). Clients connect to /ws/{anything} and get a welcome
frame. A client on /control sends {"frame": "<text>"}; the server broadcasts that text to every
other socket in one `websockets.broadcast` call and answers with the call's start and end
(time.monotonic(), comparable with the load client's receipt times on the same machine).
"""

from __future__ import annotations

import json
import os
import sys
import time

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

WELCOME = '{"type":"system","data":{"message":"Connected successfully"}}'
CLIENTS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    if ws.request is not None and ws.request.path.startswith("/control"):
        async for message in ws:
            frame = json.loads(message)["frame"]
            started = time.monotonic()
            broadcast(CLIENTS, frame)
            finished = time.monotonic()
            await ws.send(json.dumps({"started": started, "finished": finished, "clients": len(CLIENTS)}))
        return
    await ws.send(WELCOME)
    CLIENTS.add(ws)
    try:
        await ws.wait_closed()
    finally:
        CLIENTS.discard(ws)


async def main(port: int) -> None:
    # No compression (the load client does not offer it, and sn does not use it either).
    async with serve(handler, "127.0.0.1", port, backlog=4096, compression=None, max_size=2**16) as server:
        print(f"broadcast server ready on {port}, pid {os.getpid()}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
