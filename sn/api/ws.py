"""WebSocket endpoints: the seed's /ws/{user_id} and the OTUS /post/feed/posted.

Authentication happens before the upgrade (a request middleware, `authenticate_upgrade`), so
a bad token gets a plain 401/403 response instead of an accepted socket that is then closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sanic import Blueprint, Request

from sn.api.common import (
    ID_SCHEMA,
    Param,
    RouteDoc,
    client_ip,
    doc,
    enforce_rate_limit,
    id_param,
    path_id,
    record_access,
    services,
)
from sn.errors import ApiError, BadRequest, Forbidden, Overloaded, ServiceUnavailable, TooManyRequests, Unauthorized
from sn.protocol import handshake
from sn.protocol.connection import ConnectionState, ConnectionStats, State, StatsProvider
from sn.protocol.encoding import Dialect
from sn.realtime.connlimits import ConnectionLimits, Refusal, Slot
from sn.realtime.hub import Hub
from sn.realtime.socket import SocketActor
from sn.sanic_internals import take_over_transport, upgrade_transport

log = logging.getLogger("sn.api.ws")

bp = Blueprint("ws")

OUTBOX_CAPACITY = 256
MAX_FRAME_BYTES = 64 * 1024
CLOSE_INTERNAL_ERROR = 1011
# Presence and replay must be done within this, or the socket is closed (1011) and the client
# reconnects: a socket without them would stay open and silently miss events.
SETUP_TIMEOUT_SECONDS = 10.0
# A refused socket (per-user or per-address limit) may retry after this: a slot frees only when
# another of its sockets closes, so an immediate retry would be refused again.
LIMIT_RETRY_AFTER_SECONDS = 10


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
    app = services(request)
    # Counted before the token is looked at: a flood of handshakes with guessed tokens is one too.
    await enforce_rate_limit(request, "ws-connect", client_ip(request), app.settings.ws_connect_rate)
    per_worker = app.settings.ws_max_per_worker
    if per_worker and app.hub.connections >= per_worker:
        raise Overloaded(
            f"websocket capacity of this worker reached ({per_worker} connections): retry later",
            headers={"Retry-After": "5"},
        )
    user_id, _ = await app.tokens.authenticate(_token(request))
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


async def _serve(request: Request, dialect: Dialect) -> None:
    """Answer the upgrade, then hand the socket from Sanic's HTTP protocol to a SocketActor.

    From here on the connection is ours: Sanic's protocol object, its request and its task
    are released, so an idle socket costs only the transport and the actor (see
    ``sn.realtime.socket``). The handler stays for the asynchronous setup only (presence, replay).
    """
    try:
        response = handshake.accept(request.headers)
    except handshake.HandshakeRefused as refused:
        error = ApiError(refused.message, headers=refused.headers)
        error.status = refused.status
        raise error from None
    if request.app.ctx.draining:
        # Checked again here (the middleware ran before any await of this request): a socket
        # taken over after the drain's "going away" round would never be told.
        raise ServiceUnavailable("server (draining)", retry_after=1)
    app = services(request)
    hub = app.hub
    transport = upgrade_transport(request)
    if transport is None:
        return  # the client left during authentication
    slot = await app.conn_limits.acquire(request.ctx.ws_user, client_ip(request))
    if isinstance(slot, Refusal):
        whose = "this user" if slot.subject == "user" else "this client address"
        raise TooManyRequests(
            f"too many websocket connections for {whose}: {slot.held} open, limit {slot.limit}",
            headers={"Retry-After": str(LIMIT_RETRY_AFTER_SECONDS)},
        )
    if transport.is_closing():  # (left while being counted)
        app.conn_limits.release(slot)
        return
    state = ConnectionState(
        dialect=dialect,
        max_frame_bytes=MAX_FRAME_BYTES,
        outbox_capacity=OUTBOX_CAPACITY,
        stats_provider=_stats_provider(hub),
        state=State.CONNECTING,
    )
    actor = CountedSocket(transport, request.ctx.ws_user, state, hub, max_message_bytes=MAX_FRAME_BYTES)
    actor.counted(app.conn_limits, slot)
    # The 101 and the welcome frame come out as one item: one syscall and one packet per handshake.
    state.accept(response, time.time())
    for data in state.data_to_send():
        transport.write(data)
    take_over_transport(request, actor)
    since = request.ctx.ws_since
    if since is not None:
        actor.hold_live_events()
    hub.add(actor)
    record_access(request, 101, str(request.id))
    try:
        async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
            # Present before the log is read: an event routed from now on reaches this socket
            # live, and anything routed earlier is in the log (see EventLog.route_to_followers).
            await hub.announce(actor.user_id)
            if since is not None:
                actor.finish_replay(since, await hub.missed_events(actor.user_id, since))
    except BaseException as exc:
        # Without presence (or its replay) the socket would stay open and silently miss
        # events: tell the client to come back instead (also when the setup was cancelled).
        if not isinstance(exc, asyncio.CancelledError):
            log.error("websocket setup failed for user %s: %r", actor.user_id, exc)
        actor.shutdown(CLOSE_INTERNAL_ERROR, "server error during connection setup; reconnect")
        if not isinstance(exc, Exception):
            raise


class CountedSocket(SocketActor):
    """A socket that gives its per-user and per-address counts back when it closes."""

    __slots__ = ("_limits", "_slot")

    def counted(self, limits: ConnectionLimits, slot: Slot) -> None:
        self._limits = limits
        self._slot = slot

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        slot, self._slot = self._slot, Slot(())
        self._limits.release(slot)


def _stats_provider(hub: Hub) -> StatsProvider:
    def stats(connection: ConnectionStats) -> dict[str, Any]:
        return {
            "connection": {
                "connected_at": connection.connected_at,
                "messages_received": connection.messages_received,
                "messages_sent": connection.messages_sent,
                "events_delivered": connection.events_delivered,
                "last_event_id": connection.last_event_id,
            },
            "worker": {
                "connections": hub.connections,
                "users": hub.users,
                "name": hub.worker_name,
                # Which app node (SN_NODE_ID) the socket reached: behind a balancer the client cannot tell otherwise.
                "node": hub.node_id,
            },
            "cluster": hub.cluster,
        }

    return stats


# OpenAPI cannot describe a WebSocket: each is documented as the GET that asks for the upgrade.
_WS_PARAMS = (
    Param("Upgrade", "header", {"type": "string", "enum": ["websocket"]}, required=True),
    Param("Sec-WebSocket-Key", "header", {"type": "string"}, required=True),
    Param("Sec-WebSocket-Version", "header", {"type": "string", "enum": ["13"]}, required=True),
    Param("token", "query", {"type": "string"}, description="The bearer token (or an Authorization header)"),
    Param("since", "query", ID_SCHEMA, description="The last event id seen: events after it are replayed"),
)
_WS_RESPONSES = (
    (101, "Switching Protocols: the feed's events follow as text frames"),
    (426, "Upgrade Required: not a WebSocket handshake"),
    (503, "Draining or at this worker's capacity (Retry-After)"),
)


def _ws_doc(summary: str, *params: Param) -> RouteDoc:
    return RouteDoc(
        summary,
        errors=(400, 401, 403, 429),
        params=(*params, *_WS_PARAMS),
        auth="user",
        responses=_WS_RESPONSES,
        websocket=True,
    )


# Plain GET routes, not Sanic's @websocket: the upgrade is ours (sn.protocol.handshake), and
# ``is_websocket`` tells Sanic that returning no response is intended.
@bp.get("/ws/<user_id:str>", ctx_ws_dialect=Dialect.SEED)
@doc(_ws_doc("The live feed (seed dialect): the token's subject must be the path's user", id_param("user_id")))
async def seed_socket(request: Request, user_id: str) -> None:
    await _serve(request, Dialect.SEED)


@bp.get("/post/feed/posted", ctx_ws_dialect=Dialect.OTUS)
@doc(_ws_doc("The live feed (OTUS dialect): posts of followed users as they are written"))
async def otus_socket(request: Request) -> None:
    await _serve(request, Dialect.OTUS)


for _handler in (seed_socket, otus_socket):
    _handler.is_websocket = True  # type: ignore[attr-defined]
