"""Turning events and replies into the exact bytes written to a socket.

Fan-out is the hot path: one post by a popular author becomes thousands of
frames.  The expensive part of a frame is the post body, and it is identical
for every recipient using the same dialect; only ``event_id`` (a per-recipient
sequence number) differs.  So we encode the ``data`` payload once per
(event content, dialect) and splice it into each recipient's frame as
``msgspec.Raw``, which msgspec copies verbatim instead of re-encoding.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

from sn.protocol.messages import (
    ErrorData,
    ErrorFrame,
    Event,
    EventFrame,
    OtusDeletedData,
    OtusPostData,
    Pong,
    PongData,
    ResyncData,
    ResyncFrame,
    SeedDeletedData,
    SeedPostData,
    StatsFrame,
    SystemData,
    SystemFrame,
)

__all__ = [
    "Dialect",
    "PayloadCache",
    "encode_error",
    "encode_event",
    "encode_payload",
    "encode_pong",
    "encode_resync",
    "encode_stats",
    "encode_system",
]

# One encoder for the module: it reuses its internal buffer between calls.
_ENCODER: Final = msgspec.json.Encoder()


class Dialect(enum.StrEnum):
    """Which client contract a connection speaks; only event payload keys differ."""

    SEED = "seed"  # /ws/{user_id}: {"type","event_id","data":{snake_case keys, created_at}}
    OTUS = "otus"  # /post/feed/posted: {"type","event_id", postId, postText, author_user_id} per the spec


def encode_payload(event: Event, dialect: Dialect) -> bytes:
    """Encode only the ``data`` object of an event frame: the shareable part."""
    payload: msgspec.Struct
    if dialect is Dialect.OTUS:
        if event.type == "post_deleted":
            payload = OtusDeletedData(event.post_id, event.author_user_id)
        else:
            payload = OtusPostData(event.post_id, event.post_text or "", event.author_user_id)
    elif event.type == "post_deleted":
        payload = SeedDeletedData(event.post_id, event.author_user_id)
    else:
        payload = SeedPostData(event.post_id, event.author_user_id, event.post_text, event.created_at)
    return _ENCODER.encode(payload)


def encode_event(event: Event, dialect: Dialect, payload: bytes | None = None) -> bytes:
    """Encode a complete event frame; pass ``payload`` to reuse an already-encoded body.

    The result embeds ``event.event_id``, so it can be shared verbatim only
    between sockets of the same recipient (e.g. several browser tabs).
    """
    if payload is None:
        payload = encode_payload(event, dialect)
    if dialect is Dialect.OTUS:
        # The spec's fields at the top level (OtusPostFrame / OtusDeletedFrame): the payload
        # object's members follow type and event_id. The type is one of three fixed names.
        return b'{"type":"%s","event_id":%d,%s' % (event.type.encode(), event.event_id, payload[1:])
    return _ENCODER.encode(EventFrame(event.type, event.event_id, msgspec.Raw(payload)))


# The key is the event *content* without event_id: every field that
# encode_payload reads, so equal keys guarantee byte-identical payloads.
_PayloadKey = tuple[Dialect, str, str, str, str | None, str | None]


class PayloadCache:
    """Per-batch memo of :func:`encode_payload`.

    The router creates one per fan-out batch and hands it to every connection
    in the batch; each distinct (event content, dialect) pair is encoded once.
    Short-lived by design: drop it after the batch so it never grows.
    """

    __slots__ = ("_frames", "_hits", "_payloads")

    def __init__(self) -> None:
        self._payloads: dict[_PayloadKey, bytes] = {}
        self._frames: dict[tuple[int, Dialect], tuple[Event, bytes]] = {}
        self._hits = 0

    def payload(self, event: Event, dialect: Dialect) -> bytes:
        key: _PayloadKey = (
            dialect,
            event.type,
            event.post_id,
            event.author_user_id,
            event.post_text,
            event.created_at,
        )
        cached = self._payloads.get(key)
        if cached is not None:
            self._hits += 1
            return cached
        encoded = self._payloads[key] = encode_payload(event, dialect)
        return encoded

    def frame(self, event: Event, dialect: Dialect) -> bytes:
        """The full event frame, reusing the shared payload; one routing call's recipients (same
        event, same id) share one frame object, which lets the socket layer frame it once too."""
        key = (event.event_id, dialect)
        cached = self._frames.get(key)
        if cached is not None and (cached[0] is event or cached[0] == event):
            return cached[1]
        encoded = encode_event(event, dialect, self.payload(event, dialect))
        self._frames[key] = (event, encoded)
        return encoded

    @property
    def encoded(self) -> int:
        """How many payloads were actually encoded (cache misses)."""
        return len(self._payloads)

    @property
    def hits(self) -> int:
        return self._hits

    def __len__(self) -> int:
        return len(self._payloads)


# ----------------------------------------------------------------- reply frames


def encode_pong(timestamp: float) -> bytes:
    return _ENCODER.encode(Pong(PongData(timestamp)))


def encode_error(message: str) -> bytes:
    return _ENCODER.encode(ErrorFrame(ErrorData(message)))


def encode_system(message: str, timestamp: float) -> bytes:
    return _ENCODER.encode(SystemFrame(SystemData(message, timestamp)))


def encode_stats(data: dict[str, Any]) -> bytes:
    return _ENCODER.encode(StatsFrame(data))


def encode_resync(message: str, since: int, oldest_available: int | None) -> bytes:
    return _ENCODER.encode(ResyncFrame(ResyncData(message, since, oldest_available)))
