from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from sn.protocol.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SLOW_CONSUMER,
    ConnectionState,
    ConnectionStats,
    InvalidState,
    State,
)
from sn.protocol.encoding import Dialect, PayloadCache
from sn.protocol.frames import CLOSE_NO_STATUS, OP_CLOSE, OP_TEXT, CloseFrame
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


def unframe(data: bytes) -> list[tuple[int, bytes]]:
    """Split server frames (final, unmasked: RFC 6455 5.2) into (opcode, payload)."""
    frames = []
    while data:
        assert data[0] & 0xF0 == 0x80, data[:2]  # final, no reserved bits
        assert not data[1] & 0x80, data[:2]  # unmasked
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        frames.append((data[0] & 0x0F, data[start : start + length]))
        data = data[start + length :]
    return frames


def output(conn: ConnectionState) -> list[tuple[int, bytes]]:
    """Every frame ``data_to_send`` hands out now, in order."""
    return [frame for item in conn.data_to_send() for frame in unframe(item)]


def sent(conn: ConnectionState) -> list[dict[str, Any]]:
    """The JSON messages ``data_to_send`` hands out now (text frames only, in order)."""
    frames = output(conn)
    assert all(opcode == OP_TEXT for opcode, _ in frames), frames
    return [msgspec.json.decode(payload) for _, payload in frames]


def reply(conn: ConnectionState) -> dict[str, Any]:
    """The single JSON message ``conn`` has to send."""
    (message,) = sent(conn)
    return message


def closed_with(conn: ConnectionState) -> tuple[int, str]:
    """What the close frame that ``data_to_send`` hands out (as its last item) says."""
    *_, (opcode, payload) = output(conn)
    assert opcode == OP_CLOSE
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def handshake(conn: ConnectionState, now: float) -> tuple[bytes, list[dict[str, Any]]]:
    """``accept`` with a stand-in response: what comes out (response, then JSON messages)."""
    response = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    conn.accept(response, now)
    (item,) = conn.data_to_send()  # the response and the welcome: one write
    assert item.startswith(response)
    return response, [msgspec.json.decode(payload) for _, payload in unframe(item[len(response) :])]


# ------------------------------------------------------------------ client frames


def test_welcome_message_follows_the_handshake_response() -> None:
    conn, _ = make(state=State.CONNECTING)
    _, messages = handshake(conn, now=1234.5)
    assert messages == [{"type": "system", "data": {"message": "Connected successfully", "timestamp": 1234.5}}]
    assert conn.state is State.OPEN
    assert conn.stats().messages_sent == 1


def test_ping_gets_pong_with_current_timestamp() -> None:
    conn, clock = make()
    clock.now = 2000.25
    conn.receive_text('{"type":"ping"}')
    assert reply(conn) == {"type": "pong", "data": {"timestamp": 2000.25}}


def test_get_stats_reports_this_connections_counters() -> None:
    conn, _ = make(connected_at=10.0)
    conn.receive_text('{"type":"ping"}')
    conn.deliver(ev(1))
    conn.receive_text(b'{"type":"get_stats"}')
    pong, event, frame = sent(conn)  # in the order they were produced
    assert (pong["type"], event["event_id"]) == ("pong", 1)
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
    conn.receive_text('{"type":"get_stats"}')
    frame = reply(conn)
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
    conn.receive_text(raw)
    assert reply(conn) == {"type": "error", "data": {"message": message}}
    assert conn.state is State.OPEN
    conn.receive_text('{"type":"ping"}')
    assert reply(conn)["type"] == "pong"


def test_oversized_frame_closes_with_1009_and_silences_the_connection() -> None:
    conn, _ = make(max_frame_bytes=32)
    conn.deliver(ev(1))
    conn.receive_text(b'{"type":"ping","pad":"' + b"x" * 32 + b'"}')
    assert conn.state is State.CLOSING
    assert conn.close_sent == CloseFrame(CLOSE_MESSAGE_TOO_BIG, "message too big")
    assert output(conn) == [(OP_CLOSE, (1009).to_bytes(2, "big") + b"message too big")]  # the event is dropped
    conn.receive_text('{"type":"ping"}')
    conn.deliver(ev(2))
    assert conn.data_to_send() == []
    with pytest.raises(InvalidState):
        conn.accept(b"", now=0.0)


def test_frame_size_is_measured_in_utf8_bytes() -> None:
    limit = 40
    ascii_frame = '{"type":"ping","p":"' + "a" * (limit - 22) + '"}'
    assert len(ascii_frame) == limit
    conn, _ = make(max_frame_bytes=limit)
    conn.receive_text(ascii_frame)
    assert reply(conn)["type"] == "pong"
    # Same character count, but "é" is two bytes in UTF-8.
    wide_frame = '{"type":"ping","p":"' + "é" * (limit - 22) + '"}'
    assert len(wide_frame) == limit
    conn.receive_text(wide_frame)
    assert closed_with(conn) == (1009, "message too big")


# ------------------------------------------------------------------ server events


def test_events_are_queued_for_the_writer_in_seed_dialect() -> None:
    conn, _ = make()
    conn.deliver(ev(1))
    conn.deliver(ev(2, "post_deleted"))
    assert conn.pending_events == 2
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
    assert conn.pending_events == 0
    assert conn.data_to_send() == []


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
    conn, _ = make(dialect=Dialect.OTUS, state=State.CONNECTING)
    assert handshake(conn, now=1.0)[1] == []
    assert conn.stats().messages_sent == 0


def test_duplicate_and_older_events_are_dropped() -> None:
    conn, _ = make()
    for event_id in (1, 2, 2, 1, 3, 3):
        conn.deliver(ev(event_id))
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


def test_recipients_of_one_event_share_one_wire_frame() -> None:
    # The fan-out's fast path: built once per event and dialect, not per socket.
    cache = PayloadCache()
    conns = [make()[0] for _ in range(3)]
    for conn in conns:
        conn.deliver(ev(5), cache)
    first, second, third = (conn.data_to_send()[0] for conn in conns)
    assert first is second is third


def test_slow_consumer_is_closed_with_4008_and_flagged() -> None:
    conn, _ = make(outbox_capacity=2)
    conn.deliver(ev(1))
    conn.deliver(ev(2))
    assert not conn.slow_consumer
    conn.deliver(ev(3))
    assert conn.slow_consumer
    assert conn.state is State.CLOSING
    assert conn.close_sent == CloseFrame(CLOSE_SLOW_CONSUMER, "slow consumer")
    assert output(conn) == [(OP_CLOSE, (4008).to_bytes(2, "big") + b"slow consumer")]  # the queued two are dropped
    conn.deliver(ev(4))
    assert conn.data_to_send() == []  # no second close


def test_a_writer_that_keeps_up_is_never_closed() -> None:
    conn, _ = make(outbox_capacity=2)
    for event_id in range(1, 50):
        conn.deliver(ev(event_id))
        assert len(conn.data_to_send()) == 1
    assert not conn.slow_consumer


# ------------------------------------------------------------------------ replay


def test_replay_queues_missed_events_and_then_live_duplicates_are_dropped() -> None:
    conn, _ = make()
    conn.replay(2, [ev(i) for i in range(3, 6)])
    conn.deliver(ev(5))  # racing live copy of a replayed event
    conn.deliver(ev(6))
    assert [f["event_id"] for f in sent(conn)] == [3, 4, 5, 6]


def test_a_replayed_post_arriving_again_live_under_a_later_id_is_dropped() -> None:
    # A celebrity post is in the log more than once (its fan-out logs it, then each batch): the
    # replay gives the client one copy, and the batch that holds the client comes later, live.
    conn, _ = make()
    replayed = ev(3)
    conn.replay(2, [replayed])
    again = msgspec.structs.replace(replayed, event_id=9)
    conn.deliver(again)
    edited = msgspec.structs.replace(replayed, event_id=10, type="post_updated", post_text="edited")
    conn.deliver(edited)  # a different event about the same post still arrives
    conn.deliver(ev(11))
    assert [(f["event_id"], f["type"]) for f in sent(conn)] == [
        (3, "post_created"),
        (10, "post_updated"),
        (11, "post_created"),
    ]
    assert conn.stats().duplicates_dropped == 1


def test_without_a_replay_no_content_check_is_made() -> None:
    conn, _ = make()
    conn.deliver(ev(3))
    conn.deliver(msgspec.structs.replace(ev(3), event_id=4))  # (only a replay arms the check)
    assert [f["event_id"] for f in sent(conn)] == [3, 4]


def test_replay_sets_cursor_even_with_nothing_missed() -> None:
    conn, _ = make()
    conn.replay(7, [])
    conn.deliver(ev(7))
    assert conn.data_to_send() == []
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
    conn.replay(0, [ev(i) for i in range(1, 6)])
    assert conn.state is State.OPEN
    (frame,) = sent(conn)
    assert frame["type"] == "resync"
    assert (frame["data"]["since"], frame["data"]["oldest_available"]) == (0, 1)


# ------------------------------------------------------------------ close


def test_server_close_is_idempotent() -> None:
    conn, _ = make()
    conn.send_close()
    assert closed_with(conn) == (CLOSE_GOING_AWAY, "server shutting down")
    conn.send_close(4000, "again")
    assert conn.data_to_send() == []
    assert conn.close_sent == CloseFrame(1001, "server shutting down")


# ------------------------------------------------------------------ states


def test_states_from_connecting_to_closed() -> None:
    conn, _ = make(state=State.CONNECTING)
    conn.deliver(ev(1))  # nothing is sent before the handshake's answer
    conn.receive_text('{"type":"ping"}')
    assert conn.data_to_send() == []
    handshake(conn, now=1.0)
    assert conn.state is State.OPEN
    conn.deliver(ev(2))
    conn.send_close(1001, "bye")
    assert conn.state is State.CLOSING
    assert output(conn) == [(OP_CLOSE, (1001).to_bytes(2, "big") + b"bye")]  # the event never read
    conn.receive_close(CloseFrame(1001, ""))  # the client's answer: nothing more to send
    assert conn.data_to_send() == []
    assert (conn.state, conn.close_rcvd) == (State.CLOSING, CloseFrame(1001, ""))
    conn.connection_lost()
    assert conn.state is State.CLOSED
    conn.send_close()
    conn.deliver(ev(3))
    assert conn.data_to_send() == []


def test_a_client_close_is_echoed_with_its_code() -> None:
    conn, _ = make()
    conn.deliver(ev(1))
    conn.receive_close(CloseFrame(1000, "bye"))
    assert conn.state is State.CLOSING
    assert conn.close_sent == CloseFrame(1000, "")
    assert output(conn) == [(OP_CLOSE, (1000).to_bytes(2, "big"))]
    conn.receive_text('{"type":"ping"}')  # after the close, messages are not answered
    assert conn.data_to_send() == []


def test_a_client_close_without_a_code_is_echoed_without_one() -> None:
    conn, _ = make()
    conn.receive_close(CloseFrame(CLOSE_NO_STATUS, ""))
    assert output(conn) == [(OP_CLOSE, b"")]


def test_connection_lost_drops_what_was_queued() -> None:
    conn, _ = make()
    conn.deliver(ev(1))
    conn.connection_lost()
    assert conn.state is State.CLOSED
    assert conn.close_sent is None  # no close frame was sent
    assert (conn.data_to_send(), conn.pending_events) == ([], 0)
    assert not conn.outbox.allocated


def test_accept_only_once_and_only_while_connecting() -> None:
    conn, _ = make()
    with pytest.raises(InvalidState):
        conn.accept(b"", now=1.0)
    connecting, _ = make(state=State.CONNECTING)
    handshake(connecting, now=1.0)
    with pytest.raises(InvalidState):
        connecting.accept(b"", now=1.0)


def test_a_reply_that_finds_the_outbox_full_closes_as_a_slow_consumer() -> None:
    # The adapter takes no client frame while writing is paused, so it never gets here; if it
    # did, the client would not be reading its events either.
    conn, _ = make(outbox_capacity=1)
    conn.deliver(ev(1))
    conn.receive_text('{"type":"ping"}')
    assert conn.slow_consumer
    assert closed_with(conn) == (CLOSE_SLOW_CONSUMER, "slow consumer")


def test_pending_events_counts_events_and_resyncs_not_replies() -> None:
    conn, _ = make()
    conn.receive_text('{"type":"ping"}')
    conn.deliver(ev(1))
    conn.replay(1, Resync(since=1, oldest_available=None))
    assert conn.pending_events == 2
    assert len(conn.data_to_send()) == 3
    assert conn.pending_events == 0


def test_an_idle_connection_holds_no_outbox_storage() -> None:
    conn, _ = make()
    assert not conn.outbox.allocated
    conn.deliver(ev(1))
    assert conn.outbox.allocated
    conn.data_to_send()
    assert not conn.outbox.allocated
