"""The server side of the opening handshake (RFC 6455 4.2), sans-I/O.

``accept`` checks an upgrade request's headers and returns the 101 response bytes, or raises
a ``HandshakeRefused`` (the 4xx status, a message and headers) that the HTTP layer answers before
anything is upgraded. Pure: it knows nothing of the API's error types, so it imports nothing from sn.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Final

__all__ = ["HandshakeRefused", "accept", "accept_key"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION: Final = "13"


class HandshakeRefused(Exception):
    """Not a valid upgrade request: answer ``status`` with ``message`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _upgrade_required(message: str) -> HandshakeRefused:
    return HandshakeRefused(426, message, {"Upgrade": "websocket", "Sec-WebSocket-Version": VERSION})


def _bad_request(message: str) -> HandshakeRefused:
    return HandshakeRefused(400, message)


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def accept(headers: Mapping[str, str]) -> bytes:
    """The 101 response for an upgrade request with these (case-insensitive) headers."""
    if "websocket" not in _tokens(headers.get("upgrade")):
        raise _upgrade_required("this endpoint speaks WebSocket only (Upgrade: websocket)")
    if "upgrade" not in _tokens(headers.get("connection")):
        raise _bad_request("WebSocket handshake: the Connection header must include 'Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != VERSION:
        raise _upgrade_required(f"WebSocket handshake: Sec-WebSocket-Version must be {VERSION}")
    if headers.get("transfer-encoding") or headers.get("content-length", "0").strip() != "0":
        raise _bad_request("WebSocket handshake: an upgrade request has no body")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _bad_request("WebSocket handshake: Sec-WebSocket-Key must be 16 bytes in base64")
    # No Sec-WebSocket-Extensions in the answer: frames stay uncompressed, which is what lets a
    # fan-out write the same bytes to every socket.
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
