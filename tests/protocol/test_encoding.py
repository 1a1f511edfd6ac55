from __future__ import annotations

from typing import Any

import msgspec

from sn.protocol.encoding import Dialect, PayloadCache, encode_event, encode_payload
from sn.protocol.messages import Event, OtusDeletedFrame, OtusPostFrame

CREATED = Event(5, "post_created", "p-1", "u-9", post_text="hello", created_at="2024-05-01T10:00:00Z")
UPDATED = Event(6, "post_updated", "p-1", "u-9", post_text="edited", created_at="2024-05-01T10:00:00Z")
DELETED = Event(7, "post_deleted", "p-1", "u-9")


def decode(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.json.decode(raw)
    return result


def test_seed_post_created_frame_shape_and_key_order() -> None:
    raw = encode_event(CREATED, Dialect.SEED)
    assert raw.startswith(b'{"type":"post_created","event_id":5,"data":')
    assert decode(raw) == {
        "type": "post_created",
        "event_id": 5,
        "data": {
            "post_id": "p-1",
            "author_user_id": "u-9",
            "post_text": "hello",
            "created_at": "2024-05-01T10:00:00Z",
        },
    }


def test_seed_deleted_frame_has_no_text() -> None:
    assert decode(encode_event(DELETED, Dialect.SEED)) == {
        "type": "post_deleted",
        "event_id": 7,
        "data": {"post_id": "p-1", "author_user_id": "u-9"},
    }


def test_otus_frames_carry_the_spec_fields_at_the_top_level() -> None:
    # otus-asyncapi.json: the message payload is {postId, postText, author_user_id}; type and
    # event_id stand beside them.
    for event, text in ((CREATED, "hello"), (UPDATED, "edited")):
        raw = encode_event(event, Dialect.OTUS)
        assert decode(raw) == {
            "type": event.type,
            "event_id": event.event_id,
            "postId": "p-1",
            "postText": text,
            "author_user_id": "u-9",
        }
        # The spliced bytes are exactly what the wire Struct encodes (and decodes back).
        frame = OtusPostFrame(event.type, event.event_id, "p-1", text, "u-9")
        assert raw == msgspec.json.encode(frame)
        assert msgspec.json.decode(raw, type=OtusPostFrame) == frame


def test_otus_deleted_has_post_id_and_author_only() -> None:
    raw = encode_event(DELETED, Dialect.OTUS)
    assert decode(raw) == {"type": "post_deleted", "event_id": 7, "postId": "p-1", "author_user_id": "u-9"}
    assert raw == msgspec.json.encode(OtusDeletedFrame("post_deleted", 7, "p-1", "u-9"))


def test_otus_frame_never_has_a_null_text() -> None:
    untexted = Event(8, "post_created", "p-2", "u-9")
    assert decode(encode_event(untexted, Dialect.OTUS))["postText"] == ""


def test_encode_event_splices_a_given_payload_verbatim() -> None:
    raw = encode_event(CREATED, Dialect.SEED, payload=b'{"precomputed":true}')
    assert raw == b'{"type":"post_created","event_id":5,"data":{"precomputed":true}}'


def test_payload_cache_encodes_once_per_content_and_dialect() -> None:
    cache = PayloadCache()
    # Same post for three recipients: only event_id differs.
    recipients = [msgspec.structs.replace(CREATED, event_id=i) for i in (10, 11, 12)]
    frames = [cache.frame(event, Dialect.SEED) for event in recipients]
    assert (cache.encoded, cache.hits) == (1, 2)
    assert [decode(f)["event_id"] for f in frames] == [10, 11, 12]
    assert len({msgspec.json.encode(decode(f)["data"]) for f in frames}) == 1
    # The shared payload is literally the same bytes object.
    assert cache.payload(recipients[0], Dialect.SEED) is cache.payload(recipients[2], Dialect.SEED)

    cache.payload(CREATED, Dialect.OTUS)
    cache.payload(UPDATED, Dialect.SEED)
    assert len(cache) == 3


def test_payload_cache_matches_uncached_encoding() -> None:
    cache = PayloadCache()
    for event in (CREATED, UPDATED, DELETED):
        for dialect in Dialect:
            assert cache.payload(event, dialect) == encode_payload(event, dialect)
            assert cache.frame(event, dialect) == encode_event(event, dialect)
