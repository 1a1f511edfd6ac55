"""RFC 6455 framing, sans-I/O: bytes in, frames out; frames in, bytes out.

No awaits, no sockets: ``FrameReader`` is fed whatever the transport read and hands back
complete client messages and control frames one at a time, so the adapter can stop taking
them (flow control) without the reader buffering more than one read. Everything a client can
get wrong ends in a ``Failure`` naming the close code the connection must be failed with;
the reader is dead afterwards.

Servers never mask and we negotiate no extensions, so the reserved bits must be clear and
every client frame must be masked (RFC 6455 5.1, 5.2).
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseFrame",
    "Failure",
    "FrameReader",
    "Message",
    "PingFrame",
    "PongFrame",
    "close_frame",
    "encode_frame",
    "unmask",
    "unmask_python",
    "wire_frame",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NO_STATUS: Final = 1005  # a close frame without a code (never sent on the wire)
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009

# Codes a peer may put on the wire (RFC 6455 7.4.1 and the IANA registry); 1005, 1006 and
# 1015 are reserved for reporting and must never be sent.
_SENDABLE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class Message(msgspec.Struct, frozen=True):
    """A complete data message (fragments joined); text payloads are valid UTF-8."""

    data: bytes
    text: bool


class PingFrame(msgspec.Struct, frozen=True):
    payload: bytes


class PongFrame(msgspec.Struct, frozen=True):
    payload: bytes


class CloseFrame(msgspec.Struct, frozen=True):
    code: int  # CLOSE_NO_STATUS when the frame carried none
    reason: str


class Failure(msgspec.Struct, frozen=True):
    """The client broke the protocol: fail the connection with this code and reason."""

    code: int
    reason: str


Incoming = Message | PingFrame | PongFrame | CloseFrame | Failure

# Empty fragments cost nothing against the size limit, so their number is limited too.
MAX_FRAGMENTS: Final = 1024


class _Fragment:
    """A data frame that only continued a message: nothing to hand out yet."""


_FRAGMENT: Final = _Fragment()


BytesLike = bytes | bytearray | memoryview


def unmask_python(data: BytesLike, mask: bytes | bytearray) -> bytes:
    """XOR with the 4-byte key, done as one big-integer operation (no per-byte loop)."""
    size = len(memoryview(data))
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


# websockets ships a C version (4x faster on a 20-byte frame, 100x on 64 KiB, and it takes
# a memoryview, saving a copy); the big-integer XOR is the fallback where its wheel is missing.
try:
    from websockets.speedups import apply_mask as unmask
except ImportError:  # pragma: no cover - the tests check the fallback against it directly
    unmask = unmask_python


class FrameReader:
    """Parses client frames. ``feed`` appends bytes; ``next`` returns one item or None."""

    __slots__ = ("_buffer", "_failed", "_fragment_size", "_fragment_text", "_fragments", "_start", "max_message_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        # Unparsed bytes are buffer[start:]: frames are taken by moving ``start``, and the buffer
        # is compacted once per feed, so a read full of small frames costs linear time.
        self._buffer = bytearray()
        self._start = 0
        self._fragments: list[bytes] | None = None
        self._fragment_text = False
        self._fragment_size = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> None:
        if self._failed:
            return
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next(self) -> Incoming | None:
        while not self._failed:
            item = self._frame()
            if not isinstance(item, _Fragment):
                return item
        return None

    def _frame(self) -> Incoming | _Fragment | None:
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < 2:
            return None
        first, second = buffer[start], buffer[start + 1]
        if first & 0x70:
            return self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
        if not second & 0x80:
            return self._fail(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        final = bool(first & 0x80)
        opcode = first & 0x0F
        length = second & 0x7F
        offset = 2
        if length == 126:
            if available < 4:
                return None
            length = int.from_bytes(buffer[start + 2 : start + 4], "big")
            offset = 4
        elif length == 127:
            if available < 10:
                return None
            length = int.from_bytes(buffer[start + 2 : start + 10], "big")
            offset = 10
        control = opcode >= 0x8
        if control:
            if length > 125:
                return self._fail(CLOSE_PROTOCOL_ERROR, "control frame payload longer than 125 bytes")
            if not final:
                return self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
        elif self._fragment_size + length > self.max_message_bytes:
            # Refused on the header, before the payload is buffered: a client cannot make us hold
            # more than one read beyond the limit.
            return self._fail(CLOSE_TOO_BIG, f"message too big (limit {self.max_message_bytes} bytes)")
        end = offset + 4 + length
        if available < end:
            return None
        mask = bytes(buffer[start + offset : start + offset + 4])
        with memoryview(buffer) as view:
            payload = unmask(view[start + offset + 4 : start + end], mask)
        self._start = start + end
        if self._start == len(buffer):
            buffer.clear()
            self._start = 0
        if control:
            return self._control(opcode, payload)
        return self._data(opcode, final, payload)

    def _control(self, opcode: int, payload: bytes) -> Incoming:
        if opcode == OP_PING:
            return PingFrame(payload)
        if opcode == OP_PONG:
            return PongFrame(payload)
        if opcode != OP_CLOSE:
            return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not payload:
            return CloseFrame(CLOSE_NO_STATUS, "")
        if len(payload) == 1:
            return self._fail(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
            return self._fail(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            return self._fail(CLOSE_INVALID_DATA, "close reason is not valid UTF-8")
        return CloseFrame(code, reason)

    def _data(self, opcode: int, final: bool, payload: bytes) -> Incoming | _Fragment:
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                return self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
            if len(self._fragments) >= MAX_FRAGMENTS:
                return self._fail(CLOSE_TOO_BIG, f"message in more than {MAX_FRAGMENTS} fragments")
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if not final:
                return _FRAGMENT
            payload = b"".join(self._fragments)
            text = self._fragment_text
            self._fragments, self._fragment_size = None, 0
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                return self._fail(CLOSE_PROTOCOL_ERROR, "new message before the fragmented one ended")
            text = opcode == OP_TEXT
            if not final:
                self._fragments, self._fragment_text, self._fragment_size = [payload], text, len(payload)
                return _FRAGMENT
        else:
            return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if text:
            try:
                payload.decode()
            except UnicodeDecodeError:
                return self._fail(CLOSE_INVALID_DATA, "text message is not valid UTF-8")
        return Message(payload, text)

    def _fail(self, code: int, reason: str) -> Failure:
        self._failed = True
        self._buffer = bytearray()
        self._start = 0
        self._fragments = None
        return Failure(code, reason)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame as a server sends it (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; ``CLOSE_NO_STATUS`` makes one without a code (how a close that carried
    none is echoed, RFC 6455 5.5.1)."""
    if code == CLOSE_NO_STATUS:
        return encode_frame(OP_CLOSE, b"")
    # The whole control payload is at most 125 bytes; cut the reason on a character boundary.
    encoded = reason.encode()[:123].decode(errors="ignore").encode()
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + encoded)


_last_frame: tuple[bytes, bytes] = (b"", encode_frame(OP_TEXT, b""))


def wire_frame(payload: bytes) -> bytes:
    """A text frame for ``payload``, with the last one built kept.

    A fan-out hands the same payload object to every recipient (PayloadCache), so the frame is
    assembled once per event, not once per socket, as ``websockets.broadcast`` does.
    """
    global _last_frame
    if payload is _last_frame[0]:
        return _last_frame[1]
    framed = encode_frame(OP_TEXT, payload)
    _last_frame = (payload, framed)
    return framed
