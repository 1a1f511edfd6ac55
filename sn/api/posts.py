"""Posts and the feed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import (
    ID_SCHEMA,
    NOT_BLANK,
    RouteDoc,
    current_user,
    decode_body,
    doc,
    enforce_rate_limit,
    id_param,
    int_param,
    json_response,
    optional_user,
    path_id,
    query_id,
    query_int,
    raw_json_response,
    services,
    text_field,
)
from sn.errors import Forbidden, NotFound
from sn.feed import to_wire
from sn.models import Message, Post, PostCreateRequest, PostUpdateRequest

if TYPE_CHECKING:
    from sn.settings import Settings

bp = Blueprint("posts")


def _text(limit: str) -> Callable[[Settings], dict[str, dict[str, Any]]]:
    """text_field: not blank, at most the setting's number of characters."""

    def fields(settings: Settings) -> dict[str, dict[str, Any]]:
        return {"text": {"type": "string", "minLength": 1, "maxLength": getattr(settings, limit), "pattern": NOT_BLANK}}

    return fields


async def _owned_post_author(request: Request, post_id: int, me: int) -> int:
    author = await services(request).posts.author_of(post_id)
    if author is None:
        raise NotFound("post not found")
    if author != me:
        raise Forbidden("only the author may change this post")
    return author


@bp.post("/post/create")
@doc(
    RouteDoc(
        "Create a post: its id (a JSON string)",
        str,
        PostCreateRequest,
        body_fields=_text("post_max_chars"),
        errors=(400, 401, 429),
        auth="user",
    )
)
async def create(request: Request) -> HTTPResponse:
    app = services(request)
    me = current_user(request)
    await enforce_rate_limit(request, "write", str(me), app.settings.rate_limit_write)
    body = decode_body(request, PostCreateRequest)
    text = text_field(body.text, name="text", max_chars=app.settings.post_max_chars)
    row = await app.posts.create(app.ids.next_id(), me, text)
    await app.feed.post_written(row)
    app.relay.nudge()  # the outbox row committed with the post: publish it now
    # The spec's PostId: the response body is the id as a JSON string.
    return json_response(str(row.id))


@bp.put("/post/update")
@doc(
    RouteDoc(
        "Edit a post (its author only)",
        Message,
        PostUpdateRequest,
        body_fields=lambda settings: {"id": ID_SCHEMA, **_text("post_max_chars")(settings)},
        errors=(400, 401, 403, 404),
        auth="user",
    )
)
async def update(request: Request) -> HTTPResponse:
    app = services(request)
    me = current_user(request)
    body = decode_body(request, PostUpdateRequest)
    post_id = path_id(body.id, "id")
    text = text_field(body.text, name="text", max_chars=app.settings.post_max_chars)
    author = await _owned_post_author(request, post_id, me)
    row = await app.posts.update(author, post_id, text)
    if row is None:
        raise NotFound("post not found")
    await app.feed.post_written(row)
    app.relay.nudge()
    return json_response(Message(message="post updated"))


@bp.put("/post/delete/<post_id:str>")
@doc(
    RouteDoc(
        "Delete a post (its author only)", Message, params=(id_param("id"),), errors=(400, 401, 403, 404), auth="user"
    )
)
async def delete(request: Request, post_id: str) -> HTTPResponse:
    app = services(request)
    me = current_user(request)
    pid = path_id(post_id, "id")
    author = await _owned_post_author(request, pid, me)
    if not await app.posts.delete(author, pid):
        raise NotFound("post not found")
    await app.feed.post_removed(pid)
    app.relay.nudge()
    return json_response(Message(message="post deleted"))


@bp.get("/post/get/<post_id:str>")
@doc(RouteDoc("A post", Post, params=(id_param("id"),), errors=(400, 401, 404), auth="optional"))
async def get(request: Request, post_id: str) -> HTTPResponse:
    app = services(request)
    optional_user(request)
    pid = path_id(post_id, "id")
    cached = await app.post_cache.get_raw(pid)
    if cached is not None:
        return raw_json_response(cached)
    author = await app.posts.author_of(pid)
    row = await app.posts.get(author, pid) if author is not None else None
    if row is None:
        raise NotFound("post not found")
    post = to_wire(row)
    await app.post_cache.put_many([post])
    return json_response(post)


@bp.get("/post/feed")
@doc(
    RouteDoc(
        "Posts of followed users, newest first",
        list[Post],
        params=(
            int_param("offset", default=0, minimum=0, maximum=100_000),
            int_param("limit", default=10, minimum=1, maximum=1000),
            id_param("before", "query", "Only posts older than this post id"),
        ),
        errors=(400, 401),
        auth="user",
    )
)
async def feed(request: Request) -> HTTPResponse:
    app = services(request)
    me = current_user(request)
    offset = query_int(request, "offset", 0, minimum=0, maximum=100_000)
    limit = query_int(request, "limit", 10, minimum=1, maximum=1000)
    before = query_id(request, "before")
    return raw_json_response(await app.feed.page(me, offset=offset, limit=limit, before=before))
