"""The Sanic application factory: settings, middleware, error handling, blueprints, listeners.

Workers are spawned processes that each call `create_app()`; everything per-process (pools,
clients, actors) is created in listeners, never at import time.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import secrets
import time
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import BaseHTTPResponse

from sn import logs
from sn.access_log import AccessLog
from sn.api import admin, dialogs, friends, health, monitoring, openapi, posts, user_posts, users, web, ws
from sn.api.common import authenticate, record_access, reject_nul_query
from sn.context import Services
from sn.errors import ApiError, NotFound, ServiceUnavailable
from sn.loop_monitor import LoopMonitor
from sn.models import Message, ServerError
from sn.monitoring_listener import MonitoringListener
from sn.protocol.connection import CLOSE_GOING_AWAY
from sn.realtime.socket import CLOSE_TIMEOUT_SECONDS
from sn.settings import Settings, load_settings

log = logging.getLogger("sn.app")

_encoder = msgspec.json.Encoder()

# Exceptions meaning "a dependency does not answer", which deserve a 503 and a Retry-After
# rather than a 500: the request may well succeed once the dependency is back.
_DEPENDENCY_ERRORS: tuple[tuple[type[BaseException], ...], str] = (
    (
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.TooManyConnectionsError,
    ),
    "postgres",
)
# Connection-level failures whose origin the exception does not tell; named generically.
_NETWORK_ERRORS = (ConnectionError, OSError, asyncio.TimeoutError)


def _dependency_of(exc: BaseException) -> str | None:
    if isinstance(exc, ServiceUnavailable):
        return exc.dependency
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "redis"
    if isinstance(exc, _DEPENDENCY_ERRORS[0]):
        return _DEPENDENCY_ERRORS[1]
    if isinstance(exc, _NETWORK_ERRORS):
        return _origin(exc)
    return None


_CLIENT_LIBRARIES = {"asyncpg": "postgres", "redis": "redis", "aio_pika": "rabbitmq", "aiormq": "rabbitmq"}


def _origin(exc: BaseException) -> str:
    """Name the service behind a bare OSError/timeout by the client library it was raised in."""
    frame_tb = exc.__traceback__
    origin = "a backing service"
    while frame_tb is not None:
        module = frame_tb.tb_frame.f_globals.get("__name__", "")
        library = _CLIENT_LIBRARIES.get(module.partition(".")[0])
        if library is not None:
            origin = library  # the innermost library frame wins
        frame_tb = frame_tb.tb_next
    return origin


def _error_response(request: Request, exc: Exception) -> HTTPResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        status, body = exc.status, _encoder.encode(Message(message=exc.message))
        headers.update(exc.headers)
    elif isinstance(exc, SanicException) and exc.status_code < 500:
        status, body = exc.status_code, _encoder.encode(Message(message=str(exc) or exc.message or "error"))
        headers.update({k: str(v) for k, v in (exc.headers or {}).items()})
    elif (dependency := _dependency_of(exc)) is not None:
        retry_after = exc.retry_after if isinstance(exc, ServiceUnavailable) else 5
        log.error(
            "dependency unavailable: %s (%s)",
            dependency,
            type(exc).__name__,
            extra={"request_id": str(request.id)},
        )
        status = 503
        body = _encoder.encode(
            ServerError(message=f"{dependency} is unavailable", request_id=str(request.id), code=503)
        )
        headers["Retry-After"] = str(retry_after)
    else:
        log.exception("unhandled error", exc_info=exc, extra={"request_id": str(request.id)})
        status = 500
        body = _encoder.encode(ServerError(message="internal server error", request_id=str(request.id), code=500))
    return HTTPResponse(body, status=status, headers=headers, content_type="application/json")


def _cors_headers(settings: Settings, request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    if not origin:
        return {}
    allowed = settings.cors_origins
    # Let browser code read the request id (to quote in bug reports) and Retry-After.
    exposed = {"Access-Control-Expose-Headers": "X-Request-ID, Retry-After"}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*", **exposed}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", **exposed}
    return {}


# On every response (unless the route set its own): API responses are JSON and never a page, so
# nothing may be sniffed into HTML, framed, loaded from them, or leak the URL onwards.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


# CPython's default (700 allocations per young collection, a full one every 100 of those) walks
# every long-lived object again and again: with 10k sockets' worth of actors, buffers and tasks
# alive, full collections landed on whatever allocated at the moment (a handshake, a delivery)
# as pauses of tens of milliseconds, and were the largest single cost of a reconnect storm.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    """Move what start-up allocated out of the collector's sight, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class _Request(Request):
    """Generated request ids are a per-process random prefix and a counter: unique across workers
    in practice, and cheaper than Sanic's uuid4 (which was 4% of a whole /health request)."""

    _ids = itertools.count()

    @classmethod
    def start_ids(cls) -> None:
        cls._ids = itertools.count(secrets.randbits(40) << 32)

    @classmethod
    def generate_id(cls, *_: object) -> int:
        return next(cls._ids)


def create_app(settings: Settings | None = None, *, name: str = "sn") -> Sanic[Any, Any]:
    settings = settings or load_settings()
    app = Sanic(name, log_config=logs.log_config(settings), request_class=_Request)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.REQUEST_TIMEOUT = int(settings.request_timeout_seconds)
    app.config.RESPONSE_TIMEOUT = int(settings.request_timeout_seconds)
    app.config.KEEP_ALIVE_TIMEOUT = settings.keep_alive_timeout_seconds  # type: ignore[assignment]  # (a float works)
    app.config.HEADER_TIMEOUT = settings.header_timeout_seconds  # read by sn.sanic_internals
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.graceful_shutdown_seconds
    app.config.ACCESS_LOG = False  # our middleware logs one line per request, in our format
    app.config.MOTD = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.PROXIES_COUNT = settings.proxies_count
    if settings.real_ip_header:
        app.config.REAL_IP_HEADER = settings.real_ip_header
    app.ctx.settings = settings
    app.ctx.draining = False

    for module in (users, friends, posts, user_posts, dialogs, health, openapi, ws, monitoring, admin, web):
        app.blueprint(module.bp)

    @app.before_server_start
    async def start_services(app: Sanic[Any, Any]) -> None:
        app.ctx.access_log = AccessLog(settings.log_format)
        _Request.start_ids()
        app.ctx.services = await Services.start(settings)
        _tune_gc()
        app.ctx.loop_monitor = LoopMonitor(warn_after=settings.loop_stall_warning_ms / 1000)
        app.ctx.loop_monitor.start()

    if settings.monitoring_access == "listen":
        host, port = settings.monitoring_address()
        monitoring_listener = MonitoringListener(app, host, port)

        @app.after_server_start
        async def start_monitoring_listener(app: Sanic[Any, Any]) -> None:
            await monitoring_listener.start()

        @app.before_server_stop
        async def drain_monitoring_listener(app: Sanic[Any, Any]) -> None:
            monitoring_listener.stop_accepting()

        @app.after_server_stop
        async def close_monitoring_listener(app: Sanic[Any, Any]) -> None:
            await monitoring_listener.close()

    @app.before_server_stop
    async def drain(app: Sanic[Any, Any]) -> None:
        # /ready turns 503 and new upgrades are refused; open sockets get "going away" so
        # clients reconnect to another worker or pod.
        app.ctx.draining = True
        services: Services | None = getattr(app.ctx, "services", None)
        if services is not None:
            for actor in services.hub.all_sockets():
                actor.shutdown(CLOSE_GOING_AWAY, "server shutting down")
            # The sockets are not Sanic's connections (sn.api.ws took them over), so Sanic
            # would not wait for their closing handshakes: wait here, bounded.
            await services.hub.wait_closed(CLOSE_TIMEOUT_SECONDS + 1)

    @app.after_server_stop
    async def stop_services(app: Sanic[Any, Any]) -> None:
        services: Services | None = getattr(app.ctx, "services", None)
        loop_monitor: LoopMonitor | None = getattr(app.ctx, "loop_monitor", None)
        if loop_monitor is not None:
            await loop_monitor.stop()
        try:
            if services is not None:
                await services.close()
        finally:
            access_log: AccessLog | None = getattr(app.ctx, "access_log", None)
            if access_log is not None:
                access_log.flush()

    async def preflight(request: Request) -> HTTPResponse | None:
        request.ctx.started = time.perf_counter()
        if request.method == "OPTIONS" and request.headers.get("access-control-request-method"):
            headers = _cors_headers(settings, request)
            headers.update(
                {
                    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-ID",
                    "Access-Control-Max-Age": "600",
                }
            )
            return HTTPResponse(status=204, headers=headers)
        return None

    async def listener_routes(request: Request) -> None:
        if monitoring.on_monitoring_listener(request) and request.path not in monitoring.LISTENER_PATHS:
            raise NotFound("the monitoring listener serves only " + ", ".join(sorted(monitoring.LISTENER_PATHS)))

    async def finish(request: Request, response: BaseHTTPResponse) -> None:
        request_id = str(request.id)
        response.headers["X-Request-ID"] = request_id
        response.headers.update(_cors_headers(settings, request))
        headers = response.headers
        for name, value in SECURITY_HEADERS:
            if name not in headers:  # a route's own (the web client's pages set their CSP)
                headers[name] = value
        record_access(request, response.status, request_id)

    app.register_middleware(preflight, "request", priority=100)
    app.register_middleware(reject_nul_query, "request", priority=95)
    app.register_middleware(authenticate, "request", priority=75)
    if settings.monitoring_access == "listen":
        app.register_middleware(listener_routes, "request", priority=90)
    app.register_middleware(ws.authenticate_upgrade, "request", priority=50)
    app.register_middleware(finish, "response", priority=100)
    app.error_handler.add(Exception, _error_response)
    return app
