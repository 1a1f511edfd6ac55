from __future__ import annotations

import msgspec
import pytest

from sn.protocol.messages import (
    Event,
    FrameError,
    GetStats,
    Ping,
    event_from_json,
    event_to_json,
    parse_client_frame,
)


@pytest.mark.parametrize("raw", ['{"type":"ping"}', b'{"type":"ping"}', b' {"type": "ping", "extra": [1]} '])
def test_parses_ping_from_text_or_bytes_ignoring_extra_keys(raw: str | bytes) -> None:
    assert parse_client_frame(raw) == Ping()


def test_parses_get_stats() -> None:
    assert parse_client_frame('{"type":"get_stats"}') == GetStats()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        ("", "invalid JSON"),
        ("[1, 2]", "message must be a JSON object"),
        ('"ping"', "message must be a JSON object"),
        ("{}", "missing message type"),
        ('{"type": null}', "missing message type"),
        ('{"type": 7}', "message type must be a string"),
        ('{"type": "subscribe"}', "unknown message type: 'subscribe'"),
    ],
)
def test_bad_frames_become_error_values(raw: str | bytes, message: str) -> None:
    assert parse_client_frame(raw) == FrameError(message)


def test_unknown_type_echo_is_truncated() -> None:
    result = parse_client_frame(msgspec.json.encode({"type": "x" * 10_000}))
    assert isinstance(result, FrameError)
    assert result.message.startswith("unknown message type: 'xxx")
    assert len(result.message) < 100


def test_event_round_trips_through_json() -> None:
    event = Event(7, "post_updated", "p-1", "u-1", post_text="hi", created_at="2024-01-01T00:00:00Z")
    assert event_from_json(event_to_json(event)) == event


def test_event_defaults_optional_fields_to_none() -> None:
    event = event_from_json(b'{"event_id":1,"type":"post_deleted","post_id":"p","author_user_id":"u"}')
    assert (event.post_text, event.created_at) == (None, None)


def test_event_rejects_unknown_type_and_non_string_ids() -> None:
    with pytest.raises(msgspec.ValidationError, match="type"):
        event_from_json(b'{"event_id":1,"type":"post_liked","post_id":"p","author_user_id":"u"}')
    with pytest.raises(msgspec.ValidationError, match="post_id"):
        event_from_json(b'{"event_id":1,"type":"post_created","post_id":5,"author_user_id":"u"}')


def test_events_are_immutable_because_they_are_shared() -> None:
    event = Event(1, "post_created", "p", "u")
    with pytest.raises(AttributeError):
        event.post_text = "changed"  # type: ignore[misc]
