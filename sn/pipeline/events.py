"""Messages of the feed pipeline (outbox -> bus -> consumers), as msgspec Structs."""

from __future__ import annotations

from typing import Literal

import msgspec

PostEventType = Literal["post_created", "post_updated", "post_deleted"]


class PostEvent(msgspec.Struct, frozen=True, tag="post", tag_field="kind"):
    type: PostEventType
    post_id: int
    author_id: int
    text: str | None = None
    created_at: str | None = None  # ISO 8601, as the API shows it


class FollowEvent(msgspec.Struct, frozen=True, tag="follow", tag_field="kind"):
    """`user_id` started (followed=True) or stopped following `friend_id`."""

    user_id: int
    friend_id: int
    followed: bool


PipelineEvent = PostEvent | FollowEvent

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PipelineEvent)


def encode(event: PipelineEvent) -> bytes:
    return _encoder.encode(event)


def decode(raw: bytes) -> PipelineEvent:
    event: PipelineEvent = _decoder.decode(raw)
    return event


def owner_of(event: PipelineEvent) -> int:
    return event.author_id if isinstance(event, PostEvent) else event.user_id
