"""WebSocket endpoints: the seed's /ws/{user_id} and the OTUS /post/feed/posted.

Authentication happens before the upgrade (a request middleware, `authenticate_upgrade`), so
a bad token gets a plain 401/403 response instead of an accepted socket that is then closed.
"""

from __future__ import annotations

import time
from typing import Any

from sanic import Blueprint, Request
from sanic.server.websockets.impl import WebsocketImplProtocol

from sn.actors.connection import ConnectionState, ConnectionStats
from sn.actors.encoding import Dialect
from sn.actors.socket import SocketActor, direct_writer
from sn.api.common import path_id, services
from sn.errors import BadRequest, Forbidden, ServiceUnavailable, Unauthorized

bp = Blueprint("ws")

OUTBOX_CAPACITY = 256
MAX_FRAME_BYTES = 64 * 1024


def _token(request: Request) -> str:
    header: str | None = request.headers.get("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    token: str | None = request.args.get("token")
    if not token:
        raise Unauthorized("missing token (?token=<jwt> or Authorization: Bearer)")
    return token


async def authenticate_upgrade(request: Request) -> None:
    """Request middleware: runs before Sanic performs the WebSocket handshake."""
    route = request.route
    dialect = getattr(route.ctx, "ws_dialect", None) if route is not None else None
    if dialect is None:
        return
    if request.app.ctx.draining:
        raise ServiceUnavailable("server (draining)", retry_after=1)
    user_id, _ = services(request).tokens.verify(_token(request))
    if dialect == Dialect.SEED and path_id(request.match_info["user_id"], "user_id") != user_id:
        raise Forbidden("token subject does not match the user id in the path")
    request.ctx.ws_user = user_id
    request.ctx.ws_since = _since(request.args.get("since"))


def _since(raw: str | None) -> int | None:
    """The last event id the client saw (None: a fresh connection, no replay)."""
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise BadRequest("since: must be a non-negative event id")
    return int(raw)


async def _serve(request: Request, ws: WebsocketImplProtocol, dialect: Dialect) -> None:
    app = services(request)
    hub = app.hub

    def stats(connection: ConnectionStats) -> dict[str, Any]:
        return {
            "connection": {
                "connected_at": connection.connected_at,
                "messages_received": connection.messages_received,
                "messages_sent": connection.messages_sent,
                "events_delivered": connection.events_delivered,
                "last_event_id": connection.last_event_id,
            },
            "worker": {"connections": hub.connections, "users": hub.users, "name": hub.worker_name},
            "cluster": hub.cluster,
        }

    state = ConnectionState(
        dialect=dialect, max_frame_bytes=MAX_FRAME_BYTES, outbox_capacity=OUTBOX_CAPACITY, stats_provider=stats
    )
    actor = SocketActor(ws, request.ctx.ws_user, state, hub, direct=direct_writer(ws))
    await actor.run(since=request.ctx.ws_since, now=time.time())


@bp.websocket("/ws/<user_id:str>", ctx_ws_dialect=Dialect.SEED)  # type: ignore[untyped-decorator]
async def seed_socket(request: Request, ws: WebsocketImplProtocol, user_id: str) -> None:
    await _serve(request, ws, Dialect.SEED)


@bp.websocket("/post/feed/posted", ctx_ws_dialect=Dialect.OTUS)  # type: ignore[untyped-decorator]
async def otus_socket(request: Request, ws: WebsocketImplProtocol) -> None:
    await _serve(request, ws, Dialect.OTUS)
