"""Operators' endpoints: /stats, /celebrity-stats, /celebrity-settings, /test-post, /metrics."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import ID_SCHEMA, NO_NUL, RouteDoc, current_admin, decode_body, doc, json_response, path_id, services
from sn.errors import NotFound
from sn.fanout.celebrity import celebrity_report
from sn.fanout.live_settings import CelebritySettings
from sn.metrics import render
from sn.protocol.messages import Event, event_to_json
from sn.realtime.stats import cluster_stats, websocket_summary

bp = Blueprint("monitoring")

# Routes served on the monitoring listener (SN_MONITORING_ACCESS=listen); the probes too, so a
# scraper or an operator on that address can tell a live server from a dead one.
LISTENER_PATHS = frozenset({"/metrics", "/stats", "/celebrity-stats", "/health", "/ready"})


def on_monitoring_listener(request: Request) -> bool:
    settings = request.app.ctx.settings
    if settings.monitoring_access != "listen":
        return False
    conn_info = request.conn_info
    return conn_info is not None and conn_info.server_port == settings.monitoring_address()[1]


def _require_monitoring_access(request: Request) -> None:
    """SN_MONITORING_ACCESS: `open` lets anyone read; `admin` wants an admin token; `listen` serves
    the monitoring listener without one and wants an admin token on the main port."""
    access = request.app.ctx.settings.monitoring_access
    if access == "open" or on_monitoring_listener(request):
        return
    current_admin(request)


class CelebritySettingsRequest(msgspec.Struct, forbid_unknown_fields=True):
    celebrity_threshold: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    batch_delay: Annotated[float, msgspec.Meta(ge=0, le=60)] | None = None


class TestPostRequest(msgspec.Struct):
    # Any label: a test notification needs no stored post (the seed's own example is "test_123").
    post_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    author_user_id: str
    post_text: Annotated[str, msgspec.Meta(max_length=10_000)]


@bp.get("/stats")
@doc(
    RouteDoc(
        "Cluster statistics: WebSocket, feed processor, celebrity handler, workers",
        dict[str, Any],
        errors=(401, 403),
        auth="monitoring",
    )
)
async def stats(request: Request) -> HTTPResponse:
    _require_monitoring_access(request)
    app = services(request)
    workers = await cluster_stats(app.redis)
    live = await app.live.refresh()
    total_celebrities = await app.social.celebrity_count(live.celebrity_threshold)
    outbox_pending = await app.relay.pending()
    active_users = await app.presence.count_online(await app.presence.streams())
    body: dict[str, Any] = {
        "websocket": websocket_summary(workers, active_users),
        "feed_processor": {
            "is_running": bool(workers)
            and all(w.extra.get("loops", {}).get("fanout", {}).get("running") for w in workers),
            "bus": app.bus.kind,
            "rabbitmq_connected": app.bus.connected if app.bus.kind == "rabbitmq" else None,
            "bus_connected": app.bus.connected,
            "outbox_pending": outbox_pending,
            "events_handled": sum(w.extra.get("fanout", {}).get("handled", 0) for w in workers),
        },
        "celebrity_handler": {
            "threshold": live.celebrity_threshold,
            "batch_size": live.batch_size,
            "batch_delay": live.batch_delay,
            "total_celebrities": total_celebrities,
        },
        "workers": [msgspec.structs.asdict(w) for w in workers],
    }
    return json_response(body)


@bp.get("/celebrity-stats")
@doc(
    RouteDoc(
        "Celebrity fan-out: settings, celebrities, batches in progress and recent",
        dict[str, Any],
        errors=(401, 403),
        auth="monitoring",
    )
)
async def celebrity_stats(request: Request) -> HTTPResponse:
    _require_monitoring_access(request)
    app = services(request)
    live = await app.live.refresh()
    celebrities = await app.social.celebrities(live.celebrity_threshold)
    return json_response(
        {
            "settings": msgspec.structs.asdict(live),
            "celebrities": [{"user_id": str(u), "followers": n} for u, n in celebrities],
            **await celebrity_report(app.redis),
        }
    )


@bp.post("/celebrity-settings")
@doc(
    RouteDoc(
        "Change the celebrity fan-out settings (every worker within a second)",
        dict[str, Any],
        CelebritySettingsRequest,
        errors=(400, 401, 403),
        auth="admin",
    )
)
async def celebrity_settings(request: Request) -> HTTPResponse:
    app = services(request)
    current_admin(request)
    body = decode_body(request, CelebritySettingsRequest)
    current = await app.live.refresh()
    updated = CelebritySettings(
        celebrity_threshold=body.celebrity_threshold or current.celebrity_threshold,
        batch_size=body.batch_size or current.batch_size,
        batch_delay=body.batch_delay if body.batch_delay is not None else current.batch_delay,
    )
    await app.live.store(updated)  # every worker picks it up within a second
    return json_response({"message": "settings updated", "settings": msgspec.structs.asdict(updated)})


@bp.post("/test-post")
@doc(
    RouteDoc(
        "Deliver a synthetic post event to the author's online followers",
        dict[str, Any],
        TestPostRequest,
        body_fields=lambda _settings: {
            "author_user_id": ID_SCHEMA,
            "post_id": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_NUL},
            "post_text": {"type": "string", "maxLength": 10_000, "pattern": NO_NUL},
        },
        errors=(400, 401, 403, 404),
        auth="admin",
    )
)
async def test_post(request: Request) -> HTTPResponse:
    app = services(request)
    current_admin(request)
    body = decode_body(request, TestPostRequest)
    author = path_id(body.author_user_id, "author_user_id")
    if not await app.users.exists(author):
        raise NotFound(f"author_user_id: no user {author}")
    followers = await app.social.followers(author)
    online = await app.presence.locate(followers)
    event = Event(
        event_id=0, type="post_created", post_id=body.post_id, author_user_id=str(author), post_text=body.post_text
    )
    event_id = await app.eventlog.route(event_to_json(event), author, online)
    recipients = sum(len(users) for users in online.values())
    return json_response({"message": "test post delivered", "event_id": event_id, "online_followers": recipients})


@bp.get("/metrics")
@doc(
    RouteDoc("Prometheus metrics of this worker", str, errors=(401, 403), auth="monitoring", content_type="text/plain")
)
async def prometheus(request: Request) -> HTTPResponse:
    _require_monitoring_access(request)
    return HTTPResponse(render(), content_type="text/plain; version=0.0.4; charset=utf-8")
