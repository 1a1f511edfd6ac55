"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import RouteDoc, doc, json_response, services
from sn.models import Health, Readiness
from sn.realtime.supervision import WAITING_FOR_A_DEPENDENCY

bp = Blueprint("health")

_HEALTHY = b'{"status":"ok"}'


@bp.get("/health")
@doc(RouteDoc("Liveness: the worker answers", Health, errors=()))
async def health(request: Request) -> HTTPResponse:
    # Liveness only: the process answers. Dependencies are /ready's business, so a database
    # outage does not make an orchestrator restart every healthy pod.
    return HTTPResponse(_HEALTHY, content_type="application/json")


async def _check(name: str, probe: Awaitable[object]) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, timeout=2.0)
    except Exception as exc:
        return name, f"down: {type(exc).__name__}"
    return name, "ok"


@bp.get("/ready")
@doc(
    RouteDoc(
        "Readiness: PostgreSQL and Redis answer, no supervised loop failing, not draining",
        Readiness,
        errors=(),
        responses=((503, "Not ready: the failing checks (the same body), with Retry-After"),),
    )
)
async def ready(request: Request) -> HTTPResponse:
    app = services(request)
    checks = dict(
        await asyncio.gather(
            _check("postgres", app.pool.fetchval("SELECT 1")),
            _check("redis", app.redis.ping()),
        )
    )
    # A worker whose loop keeps crashing (or gave up) may answer HTTP but deliver nothing: that
    # is this worker's fault, and the balancer should send its clients elsewhere. A loop that
    # only waits out a dependency's outage (RabbitMQ down: posts commit to the outbox and go
    # out when it returns) is reported but does not fail the check: every worker waits alike,
    # and marking them all unready would turn a delay into an outage behind the balancer.
    waiting: list[str] = []
    for loop in app.loops:
        if (status := loop.status()) != "ok":
            checks[f"loop:{loop.name}"] = status
            if status.startswith(WAITING_FOR_A_DEPENDENCY):
                waiting.append(f"loop:{loop.name}")
    if request.app.ctx.draining:
        checks["server"] = "draining"
    ok = all(value == "ok" for name, value in checks.items() if name not in waiting)
    body = Readiness(status=("degraded" if waiting else "ok") if ok else "unavailable", checks=checks)
    return json_response(body, status=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})
