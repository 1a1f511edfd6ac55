"""Cluster administration: GET /admin/cluster/status, POST /admin/hot-users/{id} (admin token)."""

from __future__ import annotations

import asyncio
from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import Param, RouteDoc, current_admin, doc, id_param, json_response, path_id, services
from sn.citus import hot_users
from sn.citus.coordinator import dedicated_connection
from sn.citus.errors import ClusterError
from sn.citus.status import cluster_status as status_report
from sn.errors import BadRequest, Conflict, NotFound

bp = Blueprint("admin")

# Promotions started over HTTP run to the end even when the response went out before (202):
# the task holds its own connection, and this set keeps it referenced until it finishes.
_running: set[asyncio.Task[hot_users.HotChange | None]] = set()


@bp.get("/admin/cluster/status")
@doc(
    RouteDoc(
        "Citus cluster: nodes, shards, hot users, moves in progress", dict[str, Any], errors=(401, 403), auth="admin"
    )
)
async def cluster_status(request: Request) -> HTTPResponse:
    current_admin(request)
    app = services(request)
    assert app.settings.database_url is not None
    # A connection of its own: the status changes a session setting (the node connection timeout),
    # and pooled connections are handed back without RESET ALL (storage/db.py).
    async with dedicated_connection(app.settings.database_url) as conn:
        status = await status_report(conn, database_url=app.settings.database_url)
    return json_response(status)


async def _change(database_url: str, user_id: int, action: str) -> hot_users.HotChange | None:
    async with dedicated_connection(database_url) as conn:
        if action == "promote":
            return await hot_users.promote(conn, user_id)
        return await hot_users.demote(conn, user_id)


@bp.post("/admin/hot-users/<user_id:str>")
@doc(
    RouteDoc(
        "Promote (or demote) a hot user: its own shard",
        dict[str, Any],
        params=(
            id_param("user_id"),
            Param("action", "query", {"type": "string", "enum": ["promote", "demote"], "default": "promote"}),
        ),
        errors=(400, 401, 403, 404, 409),
        auth="admin",
        responses=((202, "Still running: follow it in /admin/cluster/status"),),
    )
)
async def hot_user(request: Request, user_id: str) -> HTTPResponse:
    """Promote (default) or, with `?action=demote`, demote a user.

    Answers 200 with what was done when it finishes within 60% of the request timeout; a larger
    tenant's shard move goes on in the background and the answer is 202 (follow it in
    /admin/cluster/status).
    """
    current_admin(request)
    app = services(request)
    uid = path_id(user_id, "user_id")
    action = request.args.get("action") or "promote"
    if action not in ("promote", "demote"):
        raise BadRequest("action: must be promote or demote")
    if not await app.users.exists(uid):
        raise NotFound("user not found")
    assert app.settings.database_url is not None
    task = asyncio.create_task(_change(app.settings.database_url, uid, action), name=f"hot-{action}-{uid}")
    _running.add(task)
    task.add_done_callback(_running.discard)
    try:
        change = await asyncio.wait_for(asyncio.shield(task), timeout=app.settings.request_timeout_seconds * 0.6)
    except TimeoutError:
        body: dict[str, Any] = {
            "message": f"{action} of user {uid} is still running; see GET /admin/cluster/status",
            "user_id": str(uid),
        }
        return json_response(body, status=202)
    except hot_users.UnknownUser as exc:
        raise NotFound("user not found") from exc
    except ClusterError as exc:
        raise Conflict(str(exc)) from exc
    assert change is not None  # the API waits for the cluster lock
    if app.shard_reads is not None:
        await app.shard_reads.refresh()  # this worker reads from the new placement at once
    return json_response(change.as_dict())
