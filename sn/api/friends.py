"""Follow / unfollow."""

from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import RouteDoc, current_user, doc, id_param, json_response, path_id, services
from sn.errors import BadRequest, NotFound
from sn.models import Message

bp = Blueprint("friends")


def _doc(summary: str) -> RouteDoc:
    # 400 also for your own id; 404: no such user.
    return RouteDoc(summary, Message, params=(id_param("user_id"),), errors=(400, 401, 404), auth="user")


async def _target(request: Request, raw: str) -> tuple[int, int]:
    me = current_user(request)
    friend = path_id(raw, "user_id")
    if friend == me:
        raise BadRequest("user_id: you cannot befriend yourself")
    if not await services(request).users.exists(friend):
        raise NotFound("user not found")
    return me, friend


@bp.put("/friend/set/<user_id:str>")
@doc(_doc("Follow a user"))
async def set_friend(request: Request, user_id: str) -> HTTPResponse:
    app = services(request)
    me, friend = await _target(request, user_id)
    async with app.follow_gate.hold(friend):  # a burst of follows of one user queues here (sn.keyed_limit)
        if await app.friends.follow(me, friend):
            await app.feed.follow_changed(me, friend)
            app.relay.nudge()
    return json_response(Message(message="friend added"))


@bp.put("/friend/delete/<user_id:str>")
@doc(_doc("Unfollow a user"))
async def delete_friend(request: Request, user_id: str) -> HTTPResponse:
    app = services(request)
    me, friend = await _target(request, user_id)
    async with app.follow_gate.hold(friend):
        if await app.friends.unfollow(me, friend):
            await app.feed.follow_changed(me, friend)
            app.relay.nudge()
    return json_response(Message(message="friend removed"))
