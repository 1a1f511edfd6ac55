"""GET /user/{user_id}/posts: one user's posts, newest first (a user's page in the web client).

The feed shows the posts of the people you follow; this is the other view a client needs, and
it is served from the same per-author post list the feed merges celebrities from.
"""

from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import (
    RouteDoc,
    doc,
    id_param,
    int_param,
    optional_user,
    path_id,
    query_id,
    query_int,
    raw_json_response,
    services,
)
from sn.errors import NotFound
from sn.models import Post

bp = Blueprint("user_posts")


@bp.get("/user/<user_id:str>/posts")
@doc(
    RouteDoc(
        "One user's posts, newest first",
        list[Post],
        params=(
            id_param("user_id"),
            int_param("limit", default=10, minimum=1, maximum=100),
            id_param("before", "query", "Only posts older than this post id"),
        ),
        errors=(400, 401, 404),
        auth="optional",
    )
)
async def user_posts(request: Request, user_id: str) -> HTTPResponse:
    app = services(request)
    optional_user(request)
    author = path_id(user_id, "user_id")
    limit = query_int(request, "limit", 10, minimum=1, maximum=100)
    before = query_id(request, "before")
    if not await app.users.exists(author):
        raise NotFound("user not found")
    return raw_json_response(await app.feed.author_page(author, limit=limit, before=before))
