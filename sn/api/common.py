"""What every handler needs: body decoding, auth, path/query parsing, JSON responses, and the
route documentation (`doc`) that /docs/openapi.json is built from."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
from sanic import HTTPResponse, Request

from sn.context import Services
from sn.errors import BadRequest, Forbidden, TooManyRequests, Unauthorized
from sn.ids import parse_id

if TYPE_CHECKING:
    from sn.settings import Settings

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
JSON = "application/json"


def services(request: Request) -> Services:
    state: Services = request.app.ctx.services
    return state


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(_encoder.encode(body), status=status, headers=headers, content_type=JSON)


def raw_json_response(body: bytes, status: int = 200) -> HTTPResponse:
    return HTTPResponse(body, status=status, content_type=JSON)


def decode_body(request: Request, model: type[T]) -> T:
    """Decode and validate a JSON body; the 400 message names the offending field."""
    body = request.body
    if not body:
        raise BadRequest("request body is required (JSON)")
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError as exc:
        value = _with_integral_floats(body, model, exc)
    except msgspec.DecodeError as exc:
        if _LONE_SURROGATE.search(body):  # (msgspec calls it "Input data was truncated")
            raise BadRequest("malformed JSON: a lone UTF-16 surrogate escape (\\ud800-\\udfff) in a string") from exc
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON: nested too deeply") from exc
    _reject_nul(value, "$")
    return value  # type: ignore[no-any-return]


def _with_integral_floats(body: bytes, model: type[T], error: msgspec.ValidationError) -> T:
    """JSON Schema, and so the OpenAPI document, counts ``1000.0`` as an integer; msgspec's strict
    decoding does not. Retried only after such a failure, so a valid body pays nothing for it."""
    if "got `float`" not in str(error):
        raise BadRequest(f"invalid field: {error}") from error
    try:
        return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(body)), model)
    except msgspec.ValidationError as again:
        raise BadRequest(f"invalid field: {again}") from again


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


# A high surrogate escape not followed by a low one, or a low one not preceded by a high one.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<![0-9a-fA-F]{4})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _reject_nul(value: object, where: str) -> None:
    """PostgreSQL text cannot hold U+0000 (a JSON "\\u0000" decodes to it): refused by name here
    rather than failing in the database as a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"invalid field: NUL characters (\\u0000) are not allowed - at `{where}`")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul(item, f"{where}[{index}]")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _reject_nul(getattr(value, name), f"{where}.{name}")


async def reject_nul_query(request: Request) -> None:
    """Request middleware: a NUL in the query string (raw or %00) is refused before any handler
    passes it to PostgreSQL or Redis."""
    query = request.query_string
    if query and ("\x00" in query or "%00" in query):
        raise BadRequest("query string: NUL characters (%00) are not allowed")


def text_field(value: str, *, name: str, max_chars: int) -> str:
    if not value.strip():
        raise BadRequest(f"{name}: must not be empty")
    if len(value) > max_chars:
        raise BadRequest(f"{name}: at most {max_chars} characters allowed (got {len(value)})")
    return value


def path_id(raw: str, name: str) -> int:
    value = parse_id(raw)
    if value is None:
        raise BadRequest(f"{name}: not a valid id: {raw[:40]!r}")
    return value


def query_int(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name}: must be an integer") from exc
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name}: must be between {minimum} and {maximum}")
    return value


def query_id(request: Request, name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    return path_id(raw, name)


def bearer_token(request: Request) -> str | None:
    header: str | None = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()


async def authenticate(request: Request) -> None:
    """Request middleware: check a bearer token (signature, expiry, and that its subject is a user)
    before the handler, which reads the outcome synchronously (`current_user` and friends).

    The outcome, failures included, is kept rather than raised: a route that takes no token (say
    /login with a stale header) must not fail because of one."""
    request.ctx.auth = None
    try:
        token = bearer_token(request)
        if token is not None:
            request.ctx.auth = await services(request).tokens.authenticate(token)
    except Exception as exc:
        request.ctx.auth = exc


def _auth(request: Request) -> tuple[int, dict[str, object]] | None:
    auth: tuple[int, dict[str, object]] | Exception | None = getattr(request.ctx, "auth", None)
    if isinstance(auth, Exception):
        raise auth
    return auth


def current_user(request: Request) -> int:
    auth = _auth(request)
    if auth is None:
        raise Unauthorized("missing bearer token")
    return auth[0]


def current_admin(request: Request) -> int:
    auth = _auth(request)
    if auth is None:
        raise Unauthorized("missing bearer token")
    user_id, claims = auth
    if claims.get("admin") is not True:
        raise Forbidden("admin token required (see `sn admin-token`)")
    return user_id


def optional_user(request: Request) -> int | None:
    """The spec lets some reads go without a token, but a token that is sent must be valid."""
    auth = _auth(request)
    return auth[0] if auth is not None else None


def client_ip(request: Request) -> str:
    settings = request.app.ctx.settings
    if settings.proxies_count or settings.real_ip_header:
        return request.remote_addr or request.ip or "unknown"
    # No trusted proxy: no forwarded headers to parse (remote_addr would be "" after parsing them).
    return request.ip or "unknown"


def record_access(request: Request, status: int, request_id: str) -> None:
    """One access-log line for this request (HTTP responses and WebSocket upgrades alike)."""
    if not request.app.ctx.settings.access_log:
        return
    started = getattr(request.ctx, "started", None)
    duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    request.app.ctx.access_log.record(request.method, request.path, status, duration_ms, request_id, client_ip(request))


async def enforce_rate_limit(request: Request, bucket: str, subject: str, limit: int) -> None:
    verdict = await services(request).rate_limiter.hit(bucket, subject, limit)
    if not verdict.allowed:
        raise TooManyRequests(
            f"rate limit exceeded for {bucket}: retry in {verdict.retry_after} s",
            headers={"Retry-After": str(verdict.retry_after)},
        )


# --- Route documentation: recorded where each route is registered, read by sn.api.openapi ---

Auth = Literal["none", "optional", "user", "admin", "monitoring"]
# Constraints the helpers above enforce, as JSON Schema (so the document promises what is accepted).
NO_NUL = r"^[^\x00]*$"
# One character that str.strip() keeps: Python's whitespace spelled out, since a schema's regex
# follows ECMA-262, whose \s differs (it leaves out \x1c-\x1f and \x85).
SPACE = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"^[^\x00]*[^{SPACE}][^\x00]*$"
# parse_id: a positive 63-bit integer; 18 digits keep every match below 2**63 without a range check.
ID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[1-9][0-9]{0,17}$", "examples": ["88284721356554240"]}


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: dict[str, Any]
    required: bool = False
    description: str = ""


def id_param(name: str, where: Literal["path", "query"] = "path", description: str = "") -> Param:
    return Param(name, where, ID_SCHEMA, required=where == "path", description=description)


def int_param(name: str, *, default: int, minimum: int, maximum: int) -> Param:
    return Param(name, "query", {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default})


@dataclass(frozen=True)
class RouteDoc:
    """What /docs/openapi.json says about one handler (sn.api.openapi walks the router for these)."""

    summary: str
    response: Any = None  # the msgspec type of a 200 JSON body; None with content_type for other bodies
    body: Any = None  # the msgspec Struct the handler decodes
    # Per body field, JSON Schema the handler's own checks add (blank text, limits from settings).
    body_fields: Callable[[Settings], dict[str, dict[str, Any]]] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = (400,)
    auth: Auth = "none"
    content_type: str = JSON
    responses: tuple[tuple[int, str], ...] = ()  # other statuses: (status, description)
    websocket: bool = False
    description: str = ""


H = TypeVar("H", bound=Callable[..., Any])


def doc(route_doc: RouteDoc) -> Callable[[H], H]:
    """Attach the route's documentation to its handler (put it under the @bp.get/post decorator)."""

    def attach(handler: H) -> H:
        handler.__dict__["openapi_doc"] = route_doc
        return handler

    return attach


def route_doc(handler: Callable[..., Any]) -> RouteDoc | None:
    found: RouteDoc | None = getattr(handler, "openapi_doc", None)
    return found
