"""The frame reader and writer, checked against websockets' own (independent) frame code."""

from __future__ import annotations

import pytest
from websockets.frames import Close, Frame, Opcode

from sn.protocol.frames import (
    CLOSE_NO_STATUS,
    MAX_FRAGMENTS,
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    CloseFrame,
    Failure,
    FrameReader,
    Incoming,
    Message,
    PingFrame,
    PongFrame,
    close_frame,
    encode_frame,
    unmask,
    wire_frame,
)


def client(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    """A frame exactly as a client sends it: masked with a random key."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


def raw(first_byte: int, payload: bytes) -> bytes:
    """A masked frame with any first byte, including ones websockets refuses to build."""
    key = b"\x11\x22\x33\x44"
    length = len(payload)
    if length < 126:
        header = bytes((first_byte, 0x80 | length))
    else:
        header = bytes((first_byte, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + key + unmask(payload, key)


def unmasked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=False, extensions=[])


def read_all(data: bytes, *, limit: int = 1 << 20, chunk: int | None = None) -> list[Incoming]:
    reader = FrameReader(limit)
    items: list[Incoming] = []
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
        while (item := reader.next()) is not None:
            items.append(item)
    return items


def test_unmask_matches_websockets() -> None:
    from websockets.utils import apply_mask

    for size in (0, 1, 3, 4, 5, 125, 1000, 70_000):
        payload = bytes(range(256)) * (size // 256 + 1)
        payload = payload[:size]
        assert unmask(payload, b"\x01\x82\xfe\x7f") == apply_mask(payload, b"\x01\x82\xfe\x7f")


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_every_kind_of_frame_whole_or_split_at_any_byte(chunk: int | None) -> None:
    stream = b"".join(
        [
            client(Opcode.TEXT, '{"type":"ping","ü":1}'.encode()),
            client(Opcode.BINARY, b"\x00\xff"),
            client(Opcode.PING, b"hb"),
            client(Opcode.PONG, b""),
            client(Opcode.TEXT, b"x" * 200),  # 16-bit length
            client(Opcode.TEXT, b"y" * 70_000),  # 64-bit length
            client(Opcode.CLOSE, Close(4001, "bye ✓").serialize()),
        ]
    )
    assert read_all(stream, chunk=chunk) == [
        Message('{"type":"ping","ü":1}'.encode(), True),
        Message(b"\x00\xff", False),
        PingFrame(b"hb"),
        PongFrame(b""),
        Message(b"x" * 200, True),
        Message(b"y" * 70_000, True),
        CloseFrame(4001, "bye ✓"),
    ]


def test_fragments_are_joined_and_control_frames_may_come_between() -> None:
    stream = (
        client(Opcode.TEXT, b"he", fin=False)
        + client(Opcode.PING, b"")
        + client(Opcode.CONT, b"ll", fin=False)
        + client(Opcode.CONT, b"o", fin=True)
    )
    assert read_all(stream, chunk=2) == [PingFrame(b""), Message(b"hello", True)]


def test_close_without_a_code() -> None:
    assert read_all(client(Opcode.CLOSE, b"")) == [CloseFrame(CLOSE_NO_STATUS, "")]


@pytest.mark.parametrize(
    ("stream", "code", "words"),
    [
        (unmasked(Opcode.TEXT, b"hi"), 1002, "masked"),
        (raw(0x80 | 0x40 | OP_TEXT, b"hi"), 1002, "reserved bits"),
        (raw(0x80 | OP_PING, b"p" * 126), 1002, "125"),
        (raw(OP_PING, b""), 1002, "fragmented control"),
        (client(Opcode.CONT, b"x"), 1002, "continuation"),
        (client(Opcode.TEXT, b"a", fin=False) + client(Opcode.TEXT, b"b"), 1002, "before the fragmented"),
        (raw(0x81, b"\xff\xfe"), 1007, "UTF-8"),
        (raw(0x88, b"\x03"), 1002, "one-byte"),
        (raw(0x88, (1005).to_bytes(2, "big")), 1002, "invalid close code"),
        (raw(0x88, (1000).to_bytes(2, "big") + b"\xff"), 1007, "UTF-8"),
        (bytes((0x83, 0x80)) + b"mask", 1002, "unknown opcode"),
        (bytes((0x8B, 0x80)) + b"mask", 1002, "unknown opcode"),
    ],
)
def test_protocol_violations_fail_with_the_right_code(stream: bytes, code: int, words: str) -> None:
    items = read_all(stream)
    assert len(items) == 1
    failure = items[0]
    assert isinstance(failure, Failure)
    assert failure.code == code
    assert words in failure.reason


def test_a_message_over_the_limit_is_refused_on_its_header() -> None:
    reader = FrameReader(1000)
    header = client(Opcode.TEXT, b"z" * 5000)[:8]  # the header only: the payload never arrives
    reader.feed(header)
    assert reader.next() == Failure(1009, "message too big (limit 1000 bytes)")
    reader.feed(client(Opcode.TEXT, b"ok"))  # a dead reader takes nothing more
    assert reader.next() is None
    assert reader.buffered == 0


def test_fragments_count_against_the_limit_together() -> None:
    stream = client(Opcode.TEXT, b"a" * 600, fin=False) + client(Opcode.CONT, b"b" * 600)
    assert read_all(stream, limit=1000) == [Failure(1009, "message too big (limit 1000 bytes)")]


def test_endless_empty_fragments_are_refused() -> None:
    stream = client(Opcode.TEXT, b"", fin=False) + client(Opcode.CONT, b"", fin=False) * (MAX_FRAGMENTS + 1)
    items = read_all(stream)
    assert len(items) == 1
    assert isinstance(items[0], Failure)
    assert items[0].code == 1009


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_server_frames_are_what_websockets_would_send(length: int) -> None:
    payload = b"x" * length
    assert encode_frame(OP_TEXT, payload) == unmasked(Opcode.TEXT, payload)
    assert encode_frame(OP_BINARY, payload) == unmasked(Opcode.BINARY, payload)
    assert wire_frame(payload) == unmasked(Opcode.TEXT, payload)
    if length <= 125:
        assert encode_frame(OP_PING, payload) == unmasked(Opcode.PING, payload)


def test_close_frames_carry_code_and_a_reason_cut_to_fit() -> None:
    assert close_frame(4008, "slow consumer") == unmasked(Opcode.CLOSE, Close(4008, "slow consumer").serialize())
    long_reason = "é" * 100  # 200 bytes: cut to 123 bytes, then back to a whole character
    frame = close_frame(1001, long_reason)
    parsed = Close.parse(frame[2:])
    assert parsed.code == 1001
    assert parsed.reason == "é" * 61
    assert len(frame) - 2 <= 125


def test_wire_frame_is_built_once_per_payload_object() -> None:
    first, second = b'{"a":1}', b'{"a":2}'
    framed = wire_frame(first)
    assert wire_frame(first) is framed  # the fan-out case: same payload, many sockets
    assert wire_frame(second) == unmasked(Opcode.TEXT, second)
    assert wire_frame(bytes(first)) == framed  # an equal but distinct payload is framed anew, identically
