"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import json_response, services
from sn.models import Readiness

bp = Blueprint("health")

_HEALTHY = b'{"status":"ok"}'


@bp.get("/health")
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
async def ready(request: Request) -> HTTPResponse:
    app = services(request)
    checks = dict(
        await asyncio.gather(
            _check("postgres", app.pool.fetchval("SELECT 1")),
            _check("redis", app.redis.ping()),
        )
    )
    # A worker whose loop keeps crashing (or gave up) may answer HTTP but deliver nothing.
    for loop in app.loops:
        if (status := loop.status()) != "ok":
            checks[f"loop:{loop.name}"] = status
    if request.app.ctx.draining:
        checks["server"] = "draining"
    ok = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return json_response(body, status=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})
