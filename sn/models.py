"""Wire models: every request body and response of the REST API, as msgspec Structs.

The handlers decode and encode with these, and the OpenAPI document is generated from them,
so the document cannot drift from what the server does.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

UserId = Annotated[str, msgspec.Meta(description="User id (decimal string)", examples=["88284721356554240"])]
PostId = Annotated[str, msgspec.Meta(description="Post id (decimal string)", examples=["88284721356554241"])]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256, description="At least 8 characters")]


class RegisterRequest(msgspec.Struct, forbid_unknown_fields=False):
    # The OTUS spec types every field as a string: null is refused (400 naming the field), an
    # optional one is left out to leave it unset, and reads give it back as "" (see User).
    first_name: Name
    second_name: Name
    birthdate: dt.date
    password: Password
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    biography: Annotated[str, msgspec.Meta(max_length=5000)] = ""
    gender: Annotated[str, msgspec.Meta(max_length=32)] = ""
    interests: list[Annotated[str, msgspec.Meta(max_length=100)]] | str = msgspec.field(default_factory=list)
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] = ""


class RegisterResponse(msgspec.Struct):
    user_id: UserId


class LoginRequest(msgspec.Struct):
    id: UserId
    password: Annotated[str, msgspec.Meta(max_length=256)]


class LoginResponse(msgspec.Struct):
    token: str


class User(msgspec.Struct):
    """A profile. Never null: an unset biography or gender is "", unset interests are []."""

    id: UserId
    first_name: str
    second_name: str
    birthdate: dt.date
    biography: str
    city: str
    gender: str
    interests: list[str]


class PostCreateRequest(msgspec.Struct):
    text: str


class PostUpdateRequest(msgspec.Struct):
    id: PostId
    text: str


class Post(msgspec.Struct):
    id: PostId
    text: str
    author_user_id: UserId
    created_at: dt.datetime


class DialogSendRequest(msgspec.Struct):
    text: str


class DialogMessage(msgspec.Struct, rename={"from_": "from"}):
    id: Annotated[str, msgspec.Meta(description="Message id: pass as `after` to page on")]
    from_: UserId
    to: UserId
    text: str
    created_at: dt.datetime


class Message(msgspec.Struct):
    """A 4xx body: what was wrong, naming the field."""

    message: str


class ServerError(msgspec.Struct):
    """A 5xx body, as the OTUS spec gives it."""

    message: str
    request_id: str
    code: int


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]
