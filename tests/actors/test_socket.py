"""The socket adapter's wire framing, checked against websockets' own frame serialiser."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from sn.actors.encoding import Dialect, PayloadCache
from sn.actors.messages import Event
from sn.actors.socket import wire_frame


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
