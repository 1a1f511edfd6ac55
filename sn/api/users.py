"""Registration, login, profiles, search."""

from __future__ import annotations

import datetime as dt

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import (
    ID_SCHEMA,
    NO_NUL,
    NOT_BLANK,
    SPACE,
    Param,
    RouteDoc,
    client_ip,
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
)
from sn.errors import BadRequest, Conflict, NotFound
from sn.models import LoginRequest, LoginResponse, RegisterRequest, RegisterResponse, User
from sn.storage.users import EmailTaken, NewUser

bp = Blueprint("users")

_OLDEST_BIRTHDATE = dt.date(1900, 1, 1)


def _interests(value: list[str] | str) -> list[str] | None:
    # The seed sends interests as a comma-separated string; the list form is the structured one.
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()][:50] or None


def _birthdate_pattern(today: dt.date) -> str:
    """1900-01-01 up to the end of last year (days 01-28: every match is a real date)."""
    last = today.year - 1
    decades = "|".join(f"{d}" for d in range(190, last // 10))
    years = f"(({decades})[0-9]|{last // 10}[0-{last % 10}])"
    return f"^{years}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$"


def _register_fields(_settings: object) -> dict[str, dict[str, object]]:
    name = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": NOT_BLANK}
    return {
        "first_name": name,
        "second_name": name,
        "city": name,
        "birthdate": {"type": "string", "pattern": _birthdate_pattern(dt.date.today()), "examples": ["1990-01-01"]},
        "email": {"type": "string", "maxLength": 254, "pattern": rf"^[^@{SPACE}]+@[^@{SPACE}]+$"},
    }


@bp.post("/user/register")
@doc(
    RouteDoc(
        "Register a user",
        RegisterResponse,
        RegisterRequest,
        body_fields=_register_fields,
        errors=(400, 409, 429),
        description="409: the email is already registered.",
    )
)
async def register(request: Request) -> HTTPResponse:
    app = services(request)
    await enforce_rate_limit(request, "auth", client_ip(request), app.settings.rate_limit_auth)
    body = decode_body(request, RegisterRequest)
    if not _OLDEST_BIRTHDATE <= body.birthdate <= dt.date.today():
        raise BadRequest("birthdate: must be between 1900-01-01 and today")
    for name in ("first_name", "second_name", "city"):
        if not getattr(body, name).strip():
            raise BadRequest(f"{name}: must not be blank")
    user_id = app.ids.next_id()
    try:
        await app.users.create(
            NewUser(
                id=user_id,
                first_name=body.first_name.strip(),
                second_name=body.second_name.strip(),
                birthdate=body.birthdate,
                city=body.city.strip(),
                # Unset optional fields are stored as NULL, as before; reads turn them into "" / [].
                biography=body.biography or None,
                gender=body.gender or None,
                interests=_interests(body.interests),
                email=body.email.strip().lower() or None,
                password_hash=await app.passwords.hash(body.password),
            )
        )
    except EmailTaken as exc:
        raise Conflict("email: already registered") from exc
    return json_response(RegisterResponse(user_id=str(user_id)))


async def _login(request: Request) -> HTTPResponse:
    app = services(request)
    await enforce_rate_limit(request, "auth", client_ip(request), app.settings.rate_limit_auth)
    body = decode_body(request, LoginRequest)
    user_id = path_id(body.id, "id")
    password_hash = await app.users.password_hash(user_id)
    if password_hash is None:
        raise NotFound("user not found")
    if not await app.passwords.verify(password_hash, body.password):
        # 400, not 401: the OTUS spec lists 400 for invalid login data.
        raise BadRequest("password: does not match")
    return json_response(LoginResponse(token=app.tokens.issue(user_id)))


_login.__dict__["openapi_doc"] = RouteDoc(
    "Log in: a bearer token",
    LoginResponse,
    LoginRequest,
    body_fields=lambda _settings: {"id": ID_SCHEMA},
    errors=(400, 404, 429),
    description="404: no such user; 400: the password does not match.",
)
bp.add_route(_login, "/login", methods=["POST"], name="login")
bp.add_route(_login, "/user/login", methods=["POST"], name="user_login")


@bp.get("/user/get/<user_id:str>")
@doc(RouteDoc("A user's profile", User, params=(id_param("id"),), errors=(400, 401, 404), auth="optional"))
async def get_user(request: Request, user_id: str) -> HTTPResponse:
    app = services(request)
    optional_user(request)
    uid = path_id(user_id, "id")
    cached = await app.profiles.get_raw(uid)
    if cached is not None:
        return raw_json_response(cached)
    user = await app.users.get(uid)
    if user is None:
        raise NotFound("user not found")
    return raw_json_response(await app.profiles.put(user))


_SEARCH_NAME = {"type": "string", "maxLength": 100, "pattern": NO_NUL}


@bp.get("/user/search")
@doc(
    RouteDoc(
        "Prefix search by first and last name",
        list[User],
        params=(
            Param("first_name", "query", _SEARCH_NAME, required=True, description="Prefix; empty matches every name"),
            Param("last_name", "query", _SEARCH_NAME, required=True, description="Prefix; empty matches every name"),
            int_param("limit", default=100, minimum=1, maximum=1000),
            id_param("after", "query", "The last id of the previous page"),
        ),
        errors=(400, 401),
        auth="optional",
    )
)
async def search(request: Request) -> HTTPResponse:
    app = services(request)
    optional_user(request)
    # Blank values are kept: an empty prefix matches every name (the other one still filters).
    args = request.get_args(keep_blank_values=True)
    first_name = args.get("first_name")
    last_name = args.get("last_name")
    if first_name is None or last_name is None:
        raise BadRequest("first_name and last_name query parameters are required")
    if len(first_name) > 100 or len(last_name) > 100:
        raise BadRequest("first_name/last_name: at most 100 characters")
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = query_id(request, "after") or 0
    return json_response(await app.users.search(first_name, last_name, limit, after))
