"""GET /docs/openapi.json: built at startup by walking the app's router.

Each handler carries its `RouteDoc` (sn.api.common.doc, next to where the route is registered);
the JSON Schemas come from the msgspec types the handlers decode and encode, narrowed by the
checks the handlers add (blank text, limits from settings, id syntax), so that every request the
document allows is one the server accepts. A registered route without a RouteDoc stops the start:
the document cannot drift from the routes again.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, Sanic

from sn.api.common import NO_NUL, RouteDoc, doc, raw_json_response, route_doc
from sn.models import Message, ServerError
from sn.settings import Settings

bp = Blueprint("openapi")

PATH = "/docs/openapi.json"
_REF = "#/components/schemas/{name}"
_PLACEHOLDER = re.compile(r"<([^:>]+)(?::[^>]*)?>")
_AUTH_ERRORS = {"user": (401,), "optional": (401,), "admin": (401, 403), "monitoring": (401, 403)}


def registered(app: Sanic[Any, Any]) -> list[tuple[str, str, Any]]:
    """(Sanic path, method, handler) of every route, sorted: what the document must cover."""
    found = []
    for route in app.router.routes:
        path = "/" + route.path.lstrip("/")
        for method in route.methods:
            found.append((path, method.lower(), route.handler))
    return sorted(found, key=lambda item: (item[0], item[1]))


def _openapi_path(sanic_path: str, route: RouteDoc) -> str:
    """`/user/get/<user_id:str>` -> `/user/get/{id}`: the documented names, in order (the OTUS spec's)."""
    names = iter(p.name for p in route.params if p.where == "path")
    return _PLACEHOLDER.sub(lambda _m: "{" + next(names) + "}", sanic_path)


def _no_nul(schema: dict[str, Any]) -> None:
    """decode_body refuses NUL in any string (PostgreSQL text cannot hold it): say so in the schema."""
    if schema.get("type") == "string" and "pattern" not in schema and "format" not in schema:
        schema["pattern"] = NO_NUL
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            _no_nul(sub)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            _no_nul(sub)
    if isinstance(schema.get("items"), dict):
        _no_nul(schema["items"])


def _security(auth: str, settings: Settings) -> list[dict[str, list[str]]] | None:
    if auth == "monitoring":
        return None if settings.monitoring_access == "open" else [{"bearerAuth": []}]
    if auth in ("user", "admin"):
        return [{"bearerAuth": []}]
    if auth == "optional":
        return [{}, {"bearerAuth": []}]
    return None


def build(app: Sanic[Any, Any], settings: Settings) -> dict[str, Any]:
    routes = []
    for sanic_path, method, handler in registered(app):
        found = route_doc(handler)
        if found is None:
            raise RuntimeError(f"route {method.upper()} {sanic_path} has no RouteDoc (sn.api.common.doc)")
        routes.append((_openapi_path(sanic_path, found), method, found))

    types: list[Any] = [Message, ServerError]
    for _path, _method, found in routes:
        types.extend(t for t in (found.response, found.body) if t is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(map(repr, types), schemas, strict=True))

    for _path, _method, found in routes:
        if found.body is None:
            continue
        body = components[found.body.__name__]
        if found.body_fields is not None:
            for name, schema in found.body_fields(settings).items():
                # Keep the model's description and default; the handler's checks replace the rest.
                kept = {k: v for k, v in body["properties"][name].items() if k in ("description", "default")}
                body["properties"][name] = {**copy.deepcopy(schema), **kept}
        _no_nul(body)

    error = {"description": "The request was refused: the message says why", "content": _json(by_type[repr(Message)])}
    server_error = {
        "description": "Server error or a dependency is down (Retry-After when retrying helps)",
        "content": _json(by_type[repr(ServerError)]),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for path, method, found in routes:
        responses: dict[str, Any] = {}
        if not found.websocket:
            body_schema = by_type[repr(found.response)] if found.response is not None else {}
            content = _json(body_schema) if found.content_type.startswith("application/json") else None
            if content is None:
                content = {found.content_type: {"schema": {"type": "string"}}}
            responses["200"] = {"description": "OK", "content": content}
        for status, description in found.responses:
            responses[str(status)] = {"description": description}
        for status in sorted({*found.errors, *_AUTH_ERRORS.get(found.auth, ())}):
            if found.auth == "monitoring" and settings.monitoring_access == "open" and status in (401, 403):
                continue
            responses[str(status)] = error
        responses["5XX"] = server_error
        entry: dict[str, Any] = {"summary": found.summary, "operationId": f"{method}_{path}", "responses": responses}
        if found.description:
            entry["description"] = found.description
        if found.params:
            entry["parameters"] = [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "schema": p.schema,
                    **({"description": p.description} if p.description else {}),
                }
                for p in found.params
            ]
        if found.body is not None:
            entry["requestBody"] = {"required": True, "content": _json(by_type[repr(found.body)])}
        security = _security(found.auth, settings)
        if security is not None:
            entry["security"] = security
        if found.websocket:
            entry["tags"] = ["websocket"]
        paths.setdefault(path, {})[method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "sn: social network API (OTUS Highload Architect)", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


@bp.before_server_start
async def build_document(app: Sanic[Any, Any]) -> None:
    # Per worker, once: every route (blueprints included) is registered by now.
    app.ctx.openapi_document = msgspec.json.encode(build(app, app.ctx.settings))


@bp.get(PATH)
@doc(RouteDoc("This document: every route, generated from the registered routes", dict[str, Any], errors=()))
async def openapi(request: Request) -> HTTPResponse:
    document: bytes = request.app.ctx.openapi_document
    return raw_json_response(document)
