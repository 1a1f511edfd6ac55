"""The OpenAPI document, generated from the msgspec models the handlers decode and encode."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import raw_json_response
from sn.models import (
    DialogMessage,
    DialogSendRequest,
    Health,
    LoginRequest,
    LoginResponse,
    Message,
    Post,
    PostCreateRequest,
    PostUpdateRequest,
    Readiness,
    RegisterRequest,
    RegisterResponse,
    ServerError,
    User,
)

bp = Blueprint("openapi")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    response: Any
    request: Any = None
    auth: bool = False
    optional_auth: bool = False
    params: tuple[tuple[str, str, str], ...] = ()  # (name, in, type)
    errors: tuple[int, ...] = field(default=(400,))


_PAGING = (("offset", "query", "integer"), ("limit", "query", "integer"))

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/user/register", "Register a user", RegisterResponse, RegisterRequest, errors=(400, 409, 429)),
    Operation("post", "/login", "Log in: a bearer token", LoginResponse, LoginRequest, errors=(400, 404, 429)),
    Operation("post", "/user/login", "Log in (seed's path)", LoginResponse, LoginRequest, errors=(400, 404, 429)),
    Operation(
        "get",
        "/user/get/{id}",
        "A user's profile",
        User,
        optional_auth=True,
        params=(("id", "path", "string"),),
        errors=(400, 401, 404),
    ),
    Operation(
        "get",
        "/user/search",
        "Prefix search by first and last name",
        list[User],
        optional_auth=True,
        params=(
            ("first_name", "query", "string"),
            ("last_name", "query", "string"),
            ("limit", "query", "integer"),
            ("after", "query", "string"),
        ),
    ),
    Operation(
        "put",
        "/friend/set/{user_id}",
        "Follow a user",
        Message,
        auth=True,
        params=(("user_id", "path", "string"),),
        errors=(400, 401, 404),
    ),
    Operation(
        "put",
        "/friend/delete/{user_id}",
        "Unfollow a user",
        Message,
        auth=True,
        params=(("user_id", "path", "string"),),
        errors=(400, 401, 404),
    ),
    Operation(
        "post",
        "/post/create",
        "Create a post: its id",
        str,
        PostCreateRequest,
        auth=True,
        errors=(400, 401, 429),
    ),
    Operation(
        "put",
        "/post/update",
        "Edit a post",
        Message,
        PostUpdateRequest,
        auth=True,
        errors=(400, 401, 403, 404),
    ),
    Operation(
        "put",
        "/post/delete/{id}",
        "Delete a post",
        Message,
        auth=True,
        params=(("id", "path", "string"),),
        errors=(400, 401, 403, 404),
    ),
    Operation(
        "get",
        "/post/get/{id}",
        "A post",
        Post,
        optional_auth=True,
        params=(("id", "path", "string"),),
        errors=(400, 401, 404),
    ),
    Operation(
        "get",
        "/post/feed",
        "Posts of followed users, newest first",
        list[Post],
        auth=True,
        params=(*_PAGING, ("before", "query", "string")),
        errors=(400, 401),
    ),
    Operation(
        "get",
        "/user/{user_id}/posts",
        "One user's posts, newest first",
        list[Post],
        optional_auth=True,
        params=(("user_id", "path", "string"), ("limit", "query", "integer"), ("before", "query", "string")),
        errors=(400, 401, 404),
    ),
    Operation(
        "post",
        "/dialog/{user_id}/send",
        "Send a message",
        Message,
        DialogSendRequest,
        auth=True,
        params=(("user_id", "path", "string"),),
        errors=(400, 401, 404, 429),
    ),
    Operation(
        "get",
        "/dialog/{user_id}/list",
        "A dialog, oldest first",
        list[DialogMessage],
        auth=True,
        params=(("user_id", "path", "string"), *_PAGING, ("after", "query", "string")),
        errors=(400, 401, 404),
    ),
    Operation("get", "/health", "Liveness", Health, errors=()),
    Operation("get", "/ready", "Readiness: PostgreSQL and Redis answer", Readiness, errors=()),
)


def _schema_refs() -> tuple[dict[str, Any], dict[str, Any]]:
    """One schema per Operation type, plus the shared components they reference."""
    types: list[Any] = [Message, ServerError]
    for op in OPERATIONS:
        types.append(op.response)
        if op.request is not None:
            types.append(op.request)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return dict(zip(map(repr, types), schemas, strict=True)), components


@cache
def document() -> bytes:
    by_type, components = _schema_refs()
    error_ref = by_type[repr(Message)]
    server_error = {
        "description": "Server error",
        "content": {"application/json": {"schema": by_type[repr(ServerError)]}},
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": by_type[repr(op.response)]}},
            }
        }
        for status in op.errors:
            responses[str(status)] = {
                "description": "Error",
                "content": {"application/json": {"schema": error_ref}},
            }
        responses["5XX"] = server_error
        entry: dict[str, Any] = {
            "summary": op.summary,
            "parameters": [
                {"name": n, "in": where, "required": where == "path", "schema": {"type": t}}
                for n, where, t in op.params
            ],
            "responses": responses,
        }
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": by_type[repr(op.request)]}},
            }
        if op.auth:
            entry["security"] = [{"bearerAuth": []}]
        elif op.optional_auth:
            entry["security"] = [{}, {"bearerAuth": []}]
        paths.setdefault(op.path, {})[op.method] = entry
    return msgspec.json.encode(
        {
            "openapi": "3.0.3",
            "info": {"title": "sn: social network API (OTUS Highload Architect)", "version": "1.0.0"},
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            },
        }
    )


@bp.get("/docs/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    return raw_json_response(document())
