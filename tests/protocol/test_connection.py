from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from sn.protocol.actions import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SLOW_CONSUMER,
    Action,
    Close,
    SendText,
)
from sn.protocol.connection import ConnectionState, ConnectionStats
from sn.protocol.encoding import Dialect, PayloadCache
from sn.protocol.messages import Event
from sn.protocol.resync import Resync


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ev(event_id: int, kind: str = "post_created") -> Event:
    return msgspec.convert(
        {
            "event_id": event_id,
            "type": kind,
            "post_id": f"p{event_id}",
            "author_user_id": "author",
            "post_text": None if kind == "post_deleted" else f"text {event_id}",
            "created_at": "2024-05-01T10:00:00Z",
        },
        Event,
    )


def make(**kwargs: Any) -> tuple[ConnectionState, FakeClock]:
    clock = FakeClock()
    return ConnectionState(clock=clock, **kwargs), clock


def reply(actions: list[Action]) -> dict[str, Any]:
    """The single JSON reply in ``actions``."""
    assert len(actions) == 1, actions
    action = actions[0]
    assert isinstance(action, SendText), action
    result: dict[str, Any] = msgspec.json.decode(action.payload)
    return result


def sent(conn: ConnectionState) -> list[dict[str, Any]]:
    return [msgspec.json.decode(frame) for frame in conn.frames_to_send()]


# ------------------------------------------------------------------ client frames


def test_welcome_message() -> None:
    conn, _ = make()
    assert reply(conn.welcome(now=1234.5)) == {
        "type": "system",
        "data": {"message": "Connected successfully", "timestamp": 1234.5},
    }


def test_ping_gets_pong_with_current_timestamp() -> None:
    conn, clock = make()
    clock.now = 2000.25
    assert reply(conn.received_text('{"type":"ping"}')) == {"type": "pong", "data": {"timestamp": 2000.25}}


def test_get_stats_reports_this_connections_counters() -> None:
    conn, _ = make(connected_at=10.0)
    conn.received_text('{"type":"ping"}')
    conn.deliver(ev(1))
    frame = reply(conn.received_text(b'{"type":"get_stats"}'))
    assert frame["type"] == "stats"
    assert frame["data"] == {
        "connected_at": 10.0,
        "messages_received": 2,  # the ping and this get_stats
        "messages_sent": 2,  # the pong and the event
        "events_delivered": 1,
        "duplicates_dropped": 0,
        "last_event_id": 1,
    }


def test_get_stats_uses_the_provider_to_merge_cluster_counts() -> None:
    seen: list[ConnectionStats] = []

    def provider(stats: ConnectionStats) -> Mapping[str, Any]:
        seen.append(stats)
        return {"messages_received": stats.messages_received, "cluster_connections": 42}

    conn, _ = make(stats_provider=provider)
    frame = reply(conn.received_text('{"type":"get_stats"}'))
    assert frame["data"] == {"messages_received": 1, "cluster_connections": 42}
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "invalid JSON"),
        ("[]", "message must be a JSON object"),
        ('{"data": 1}', "missing message type"),
        ('{"type": "subscribe"}', "unknown message type: 'subscribe'"),
    ],
)
def test_bad_frames_get_an_error_and_the_connection_stays_open(raw: str, message: str) -> None:
    conn, _ = make()
    assert reply(conn.received_text(raw)) == {"type": "error", "data": {"message": message}}
    assert not conn.closed
    assert reply(conn.received_text('{"type":"ping"}'))["type"] == "pong"


def test_oversized_frame_closes_with_1009_and_silences_the_connection() -> None:
    conn, _ = make(max_frame_bytes=32)
    conn.deliver(ev(1))
    assert conn.received_text(b'{"type":"ping","pad":"' + b"x" * 32 + b'"}') == [
        Close(CLOSE_MESSAGE_TOO_BIG, "message too big")
    ]
    assert conn.closed
    assert conn.close_action == Close(1009, "message too big")
    assert conn.pending == 0  # queued frames are dropped on close
    assert conn.received_text('{"type":"ping"}') == []
    assert conn.deliver(ev(2)) == []
    assert conn.welcome(now=0.0) == []


def test_frame_size_is_measured_in_utf8_bytes() -> None:
    limit = 40
    ascii_frame = '{"type":"ping","p":"' + "a" * (limit - 22) + '"}'
    assert len(ascii_frame) == limit
    conn, _ = make(max_frame_bytes=limit)
    assert reply(conn.received_text(ascii_frame))["type"] == "pong"
    # Same character count, but "é" is two bytes in UTF-8.
    wide_frame = '{"type":"ping","p":"' + "é" * (limit - 22) + '"}'
    assert len(wide_frame) == limit
    assert conn.received_text(wide_frame) == [Close(1009, "message too big")]


# ------------------------------------------------------------------ server events


def test_events_are_queued_for_the_writer_in_seed_dialect() -> None:
    conn, _ = make()
    assert conn.deliver(ev(1)) == []
    assert conn.deliver(ev(2, "post_deleted")) == []
    assert conn.pending == 2
    assert sent(conn) == [
        {
            "type": "post_created",
            "event_id": 1,
            "data": {
                "post_id": "p1",
                "author_user_id": "author",
                "post_text": "text 1",
                "created_at": "2024-05-01T10:00:00Z",
            },
        },
        {"type": "post_deleted", "event_id": 2, "data": {"post_id": "p2", "author_user_id": "author"}},
    ]
    assert conn.pending == 0


def test_events_in_otus_dialect() -> None:
    conn, _ = make(dialect=Dialect.OTUS)
    conn.deliver(ev(1))
    conn.deliver(ev(2, "post_updated"))
    conn.deliver(ev(3, "post_deleted"))
    assert sent(conn) == [
        {"type": "post_created", "event_id": 1, "postId": "p1", "postText": "text 1", "author_user_id": "author"},
        {"type": "post_updated", "event_id": 2, "postId": "p2", "postText": "text 2", "author_user_id": "author"},
        {"type": "post_deleted", "event_id": 3, "postId": "p3", "author_user_id": "author"},
    ]


def test_no_welcome_on_the_otus_channel() -> None:
    # Every message a spec-following client receives unasked is a Post.
    conn, _ = make(dialect=Dialect.OTUS)
    assert conn.welcome(now=1.0) == []


def test_duplicate_and_older_events_are_dropped() -> None:
    conn, _ = make()
    for event_id in (1, 2, 2, 1, 3, 3):
        assert conn.deliver(ev(event_id)) == []
    assert [f["event_id"] for f in sent(conn)] == [1, 2, 3]
    assert conn.stats().duplicates_dropped == 3
    assert conn.last_event_id == 3


def test_initial_cursor_drops_events_the_client_already_has() -> None:
    conn, _ = make(last_event_id=10)
    conn.deliver(ev(10))
    conn.deliver(ev(11))
    assert [f["event_id"] for f in sent(conn)] == [11]


def test_shared_payload_cache_across_connections() -> None:
    cache = PayloadCache()
    seed_a, _ = make()
    seed_b, _ = make()
    otus, _ = make(dialect=Dialect.OTUS)
    post = ev(1)
    for conn, event_id in ((seed_a, 4), (seed_b, 9), (otus, 2)):
        conn.deliver(msgspec.structs.replace(post, event_id=event_id), cache)
    assert (cache.encoded, cache.hits) == (2, 1)  # one payload per dialect
    assert sent(seed_a)[0]["event_id"] == 4
    assert sent(seed_b)[0]["event_id"] == 9
    assert sent(otus)[0]["postId"] == "p1"


def test_slow_consumer_is_closed_with_4008_and_flagged() -> None:
    conn, _ = make(outbox_capacity=2)
    assert conn.deliver(ev(1)) == []
    assert conn.deliver(ev(2)) == []
    assert conn.deliver(ev(3)) == [Close(CLOSE_SLOW_CONSUMER, "slow consumer")]
    assert conn.slow_consumer
    assert conn.closed
    assert conn.frames_to_send() == []
    assert conn.deliver(ev(4)) == []  # no second Close


def test_a_writer_that_keeps_up_is_never_closed() -> None:
    conn, _ = make(outbox_capacity=2)
    for event_id in range(1, 50):
        assert conn.deliver(ev(event_id)) == []
        assert len(conn.frames_to_send()) == 1
    assert not conn.slow_consumer


# ------------------------------------------------------------------------ replay


def test_replay_queues_missed_events_and_then_live_duplicates_are_dropped() -> None:
    conn, _ = make()
    assert conn.replay(2, [ev(i) for i in range(3, 6)]) == []
    conn.deliver(ev(5))  # racing live copy of a replayed event
    conn.deliver(ev(6))
    assert [f["event_id"] for f in sent(conn)] == [3, 4, 5, 6]


def test_replay_sets_cursor_even_with_nothing_missed() -> None:
    conn, _ = make()
    assert conn.replay(7, []) == []
    conn.deliver(ev(7))
    assert conn.pending == 0
    assert conn.last_event_id == 7


def test_replay_of_a_resync_sends_resync_frame() -> None:
    conn, _ = make()
    conn.replay(3, Resync(since=3, oldest_available=8))
    assert sent(conn) == [
        {
            "type": "resync",
            "data": {
                "message": "missed events are no longer available; refetch the feed",
                "since": 3,
                "oldest_available": 8,
            },
        }
    ]


def test_replay_larger_than_outbox_becomes_resync_not_a_close() -> None:
    conn, _ = make(outbox_capacity=3)
    assert conn.replay(0, [ev(i) for i in range(1, 6)]) == []
    assert not conn.closed
    (frame,) = sent(conn)
    assert frame["type"] == "resync"
    assert (frame["data"]["since"], frame["data"]["oldest_available"]) == (0, 1)


# ------------------------------------------------------------------ close


def test_server_close_is_idempotent() -> None:
    conn, _ = make()
    assert conn.close() == [Close(CLOSE_GOING_AWAY, "server shutting down")]
    assert conn.close(4000, "again") == []
    assert conn.close_action == Close(1001, "server shutting down")
