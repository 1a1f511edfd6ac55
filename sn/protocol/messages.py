"""Wire messages: feed events, client frames and server frames as msgspec Structs.

Structs (rather than dicts) give us validation at the boundary for free and
let msgspec encode without building intermediate dicts, which matters when
one post fans out to thousands of sockets.

Ids are strings everywhere: user and post ids are UUIDs on the HTTP API, and
keeping one representation avoids int/str mismatches between adapters.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

__all__ = [
    "EVENT_TYPES",
    "ClientFrame",
    "ErrorData",
    "ErrorFrame",
    "Event",
    "EventFrame",
    "EventType",
    "FrameError",
    "GetStats",
    "OtusDeletedData",
    "OtusDeletedFrame",
    "OtusPostData",
    "OtusPostFrame",
    "Ping",
    "Pong",
    "PongData",
    "ResyncData",
    "ResyncFrame",
    "SeedDeletedData",
    "SeedPostData",
    "StatsFrame",
    "SystemData",
    "SystemFrame",
    "event_from_json",
    "event_to_json",
    "parse_client_frame",
]

EventType = Literal["post_created", "post_updated", "post_deleted"]
EVENT_TYPES: Final[frozenset[str]] = frozenset({"post_created", "post_updated", "post_deleted"})


# --------------------------------------------------------------------------- events


class Event(msgspec.Struct, frozen=True, gc=False):
    """One feed event for one recipient.

    ``event_id`` is a per-recipient, strictly increasing sequence number; it
    is what makes redelivery idempotent and replay possible.  Frozen because
    one instance may be shared by many connection states; ``gc=False``
    because it only holds scalars (no cycles possible) and there can be a lot
    of them alive during a fan-out, so skipping GC tracking is a cheap win.
    """

    event_id: int
    type: EventType
    post_id: str
    author_user_id: str
    post_text: str | None = None
    created_at: str | None = None


_EVENT_DECODER: Final = msgspec.json.Decoder(Event)
_ENCODER: Final = msgspec.json.Encoder()


def event_to_json(event: Event) -> bytes:
    """Serialise an event for the bus / history store (not a client frame)."""
    return _ENCODER.encode(event)


def event_from_json(raw: bytes | str) -> Event:
    """Parse and validate an event from the bus; raises ``msgspec.ValidationError``/``DecodeError``."""
    return _EVENT_DECODER.decode(raw)


# --------------------------------------------------------------------- client frames


class Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    """``{"type": "ping"}`` - application-level liveness check."""


class GetStats(msgspec.Struct, frozen=True, tag="get_stats", tag_field="type"):
    """``{"type": "get_stats"}`` - ask for connection (and cluster) counters."""


ClientFrame = Ping | GetStats

# Dispatch table instead of a tagged-union decode: it lets us tell "unknown
# type" apart from "malformed" and give the client a precise error message.
_CLIENT_FRAME_TYPES: Final[dict[str, type[Ping] | type[GetStats]]] = {
    "ping": Ping,
    "get_stats": GetStats,
}
# Echoing attacker-controlled strings back is harmless once JSON-encoded, but
# there is no reason to let a client make us send back a 1 MiB error frame.
_MAX_ECHO: Final = 64


class FrameError(msgspec.Struct, frozen=True):
    """Why a client frame was rejected; becomes an ``error`` frame, not a close."""

    message: str


def parse_client_frame(raw: bytes | str) -> ClientFrame | FrameError:
    """Validate one client frame.  Never raises on bad input: errors are values."""
    try:
        # Untyped decode first: client frames are tiny and size-capped, and
        # it lets us distinguish every failure mode without parsing msgspec's
        # exception text.
        obj: object = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return FrameError("invalid JSON")
    if not isinstance(obj, dict):
        return FrameError("message must be a JSON object")
    kind = obj.get("type")
    if kind is None:
        return FrameError("missing message type")
    if not isinstance(kind, str):
        return FrameError("message type must be a string")
    frame_type = _CLIENT_FRAME_TYPES.get(kind)
    if frame_type is None:
        return FrameError(f"unknown message type: {kind[:_MAX_ECHO]!r}")
    try:
        return msgspec.convert(obj, frame_type)
    except msgspec.ValidationError as exc:
        return FrameError(f"invalid {kind} message: {exc}")


# --------------------------------------------------------------------- server frames
# msgspec always encodes the tag field first, so "type" leads every frame and
# clients (and humans reading logs) can dispatch before reading the body.


class PongData(msgspec.Struct, frozen=True):
    timestamp: float


class Pong(msgspec.Struct, frozen=True, tag="pong", tag_field="type"):
    data: PongData


class ErrorData(msgspec.Struct, frozen=True):
    message: str


class ErrorFrame(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    data: ErrorData


class SystemData(msgspec.Struct, frozen=True):
    message: str
    timestamp: float


class SystemFrame(msgspec.Struct, frozen=True, tag="system", tag_field="type"):
    data: SystemData


class StatsFrame(msgspec.Struct, frozen=True, tag="stats", tag_field="type"):
    # Free-form: the adapter merges cluster-wide counters into it.
    data: dict[str, Any]


class ResyncData(msgspec.Struct, frozen=True):
    message: str
    since: int
    oldest_available: int | None


class ResyncFrame(msgspec.Struct, frozen=True, tag="resync", tag_field="type"):
    data: ResyncData


class EventFrame(msgspec.Struct, frozen=True):
    """``{"type", "event_id", "data"}``; ``data`` is pre-encoded and spliced in verbatim."""

    type: str
    event_id: int
    data: msgspec.Raw


# Event payloads, one shape per dialect.  Deleted posts have no text, so they
# get their own shape rather than a ``null`` that clients might render.


class SeedPostData(msgspec.Struct, frozen=True):
    """``/ws/{user_id}`` payload for post_created / post_updated."""

    post_id: str
    author_user_id: str
    post_text: str | None
    created_at: str | None


class SeedDeletedData(msgspec.Struct, frozen=True):
    post_id: str
    author_user_id: str


class OtusPostData(msgspec.Struct, frozen=True, rename={"post_id": "postId", "post_text": "postText"}):
    """The OTUS AsyncAPI ``Post`` message (camelCase post keys): the shareable part of a frame."""

    post_id: str
    post_text: str
    author_user_id: str


class OtusDeletedData(msgspec.Struct, frozen=True, rename={"post_id": "postId"}):
    post_id: str
    author_user_id: str


# ``/post/feed/posted`` frames: the AsyncAPI message *is* the payload, so a client written to
# the spec reads ``message.postId``; ``type`` and ``event_id`` stand beside the spec's fields
# instead of wrapping them in ``data`` as ``/ws/{user_id}`` does. Encoded by splicing the shared
# payload (encoding.encode_event); these Structs are the shape, for clients and tests.


class OtusPostFrame(msgspec.Struct, frozen=True, rename={"post_id": "postId", "post_text": "postText"}):
    type: str
    event_id: int
    post_id: str
    post_text: str
    author_user_id: str


class OtusDeletedFrame(msgspec.Struct, frozen=True, rename={"post_id": "postId"}):
    type: str
    event_id: int
    post_id: str
    author_user_id: str
