"""The socket adapter's wire framing, checked against websockets' own frame serialiser."""

from __future__ import annotations

import orjson
import pytest
from websockets.frames import Frame, Opcode

from sn.actors.connection import ConnectionState
from sn.actors.encoding import Dialect, PayloadCache
from sn.actors.messages import Event
from sn.actors.socket import SocketActor, wire_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_wire_frame_is_what_websockets_would_send(length: int) -> None:
    payload = (b"x" * length)[:length]
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert wire_frame(payload) == expected


def test_wire_frame_is_built_once_per_payload_object() -> None:
    first, second = b'{"a":1}', b'{"a":2}'
    framed = wire_frame(first)
    assert wire_frame(first) is framed  # the fan-out case: same payload, many sockets
    assert wire_frame(second) == Frame(Opcode.TEXT, second).serialize(mask=False, extensions=[])
    assert wire_frame(bytes(first)) == framed  # an equal but distinct payload is framed anew, identically


def test_one_routing_call_shares_one_frame_object() -> None:
    cache = PayloadCache()
    event = Event(event_id=7, type="post_created", post_id="1", author_user_id="2", post_text="hi")
    frame = cache.frame(event, Dialect.SEED)
    assert cache.frame(event, Dialect.SEED) is frame
    other_dialect = cache.frame(event, Dialect.OTUS)
    assert other_dialect != frame
    later = Event(event_id=8, type="post_created", post_id="1", author_user_id="2", post_text="hi")
    assert cache.frame(later, Dialect.SEED) != frame  # a new event id is a new frame


class _NoSocket:
    """The actor's socket side is not reached in these paths (no close, no direct write)."""

    async def send(self, data: str | bytes) -> None:
        raise AssertionError("not expected")

    async def recv(self, timeout: float | None = None) -> str | bytes | None:
        raise AssertionError("not expected")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        raise AssertionError("not expected")

    def fail_connection(self, code: int = 1006, reason: str = "") -> bool:
        raise AssertionError("not expected")


def _event(event_id: int) -> Event:
    return Event(event_id=event_id, type="post_created", post_id=str(event_id), author_user_id="9", post_text="t")


def _queued_types(actor: SocketActor) -> list[str]:
    return [orjson.loads(frame)["type"] for frame in actor.state.frames_to_send()]


def _actor(capacity: int) -> SocketActor:
    state = ConnectionState(dialect=Dialect.SEED, outbox_capacity=capacity)
    return SocketActor(_NoSocket(), 1, state, hub=None)  # type: ignore[arg-type]


async def test_events_held_during_a_replay_follow_it_in_order() -> None:
    actor = _actor(capacity=8)
    actor._held = []  # what run() sets while the log is read
    for event_id in (11, 12):
        actor.deliver(_event(event_id), PayloadCache())
    actor.finish_replay(5, [_event(6), _event(7)])
    frames = [orjson.loads(frame) for frame in actor.state.frames_to_send()]
    assert [(f["type"], f["event_id"]) for f in frames] == [("post_created", i) for i in (6, 7, 11, 12)]


async def test_too_many_events_held_during_a_replay_become_a_resync() -> None:
    actor = _actor(capacity=3)
    actor._held = []
    for event_id in range(10, 16):  # six arrive, three fit
        actor.deliver(_event(event_id), PayloadCache())
    actor.finish_replay(5, [_event(6)])
    assert _queued_types(actor) == ["resync"]
