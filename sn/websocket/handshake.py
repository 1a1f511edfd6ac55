"""The server side of the opening handshake (RFC 6455 4.2), sans-I/O.

``accept`` checks an upgrade request's headers and returns the 101 response bytes, or raises
an ``ApiError`` (a 4xx with a message) that the HTTP layer answers before anything is upgraded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Final

from sn.errors import ApiError, BadRequest

__all__ = ["UpgradeRequired", "accept", "accept_key"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION: Final = "13"


class UpgradeRequired(ApiError):
    status = 426


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def accept(headers: Mapping[str, str]) -> bytes:
    """The 101 response for an upgrade request with these (case-insensitive) headers."""
    upgrade_headers = {"Upgrade": "websocket", "Sec-WebSocket-Version": VERSION}
    if "websocket" not in _tokens(headers.get("upgrade")):
        raise UpgradeRequired("this endpoint speaks WebSocket only (Upgrade: websocket)", headers=upgrade_headers)
    if "upgrade" not in _tokens(headers.get("connection")):
        raise BadRequest("WebSocket handshake: the Connection header must include 'Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != VERSION:
        raise UpgradeRequired(f"WebSocket handshake: Sec-WebSocket-Version must be {VERSION}", headers=upgrade_headers)
    if headers.get("transfer-encoding") or headers.get("content-length", "0").strip() != "0":
        raise BadRequest("WebSocket handshake: an upgrade request has no body")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise BadRequest("WebSocket handshake: Sec-WebSocket-Key must be 16 bytes in base64")
    # No Sec-WebSocket-Extensions in the answer: frames stay uncompressed, which is what lets a
    # fan-out write the same bytes to every socket.
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
