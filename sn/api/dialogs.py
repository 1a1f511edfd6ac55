"""Dialogs between two users."""

from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import (
    NOT_BLANK,
    RouteDoc,
    current_user,
    decode_body,
    doc,
    enforce_rate_limit,
    id_param,
    int_param,
    json_response,
    path_id,
    query_id,
    query_int,
    services,
    text_field,
)
from sn.errors import BadRequest, NotFound
from sn.models import DialogMessage, DialogSendRequest, Message

bp = Blueprint("dialogs")


async def _peer(request: Request, raw: str) -> tuple[int, int]:
    me = current_user(request)
    peer = path_id(raw, "user_id")
    if peer == me:
        raise BadRequest("user_id: a dialog needs another user")
    if not await services(request).users.exists(peer):
        raise NotFound("user not found")
    return me, peer


@bp.post("/dialog/<user_id:str>/send")
@doc(
    RouteDoc(
        "Send a message",
        Message,
        DialogSendRequest,
        body_fields=lambda settings: {
            "text": {"type": "string", "minLength": 1, "maxLength": settings.dialog_max_chars, "pattern": NOT_BLANK}
        },
        params=(id_param("user_id"),),
        errors=(400, 401, 404, 429),
        auth="user",
    )
)
async def send(request: Request, user_id: str) -> HTTPResponse:
    app = services(request)
    me, peer = await _peer(request, user_id)
    await enforce_rate_limit(request, "write", str(me), app.settings.rate_limit_write)
    body = decode_body(request, DialogSendRequest)
    text = text_field(body.text, name="text", max_chars=app.settings.dialog_max_chars)
    await app.dialogs.send(app.ids.next_id(), me, peer, text)
    return json_response(Message(message="message sent"))


@bp.get("/dialog/<user_id:str>/list")
@doc(
    RouteDoc(
        "A dialog, oldest first",
        list[DialogMessage],
        params=(
            id_param("user_id"),
            int_param("offset", default=0, minimum=0, maximum=1_000_000),
            int_param("limit", default=100, minimum=1, maximum=1000),
            id_param("after", "query", "The last message id of the previous page"),
        ),
        errors=(400, 401, 404),
        auth="user",
    )
)
async def list_messages(request: Request, user_id: str) -> HTTPResponse:
    app = services(request)
    me, peer = await _peer(request, user_id)
    offset = query_int(request, "offset", 0, minimum=0, maximum=1_000_000)
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = query_id(request, "after") or 0
    rows = await app.dialogs.list(me, peer, after=after, offset=offset, limit=limit)
    return json_response(
        [
            DialogMessage(
                id=str(r.id), from_=str(r.sender_id), to=str(r.recipient_id), text=r.text, created_at=r.created_at
            )
            for r in rows
        ]
    )
