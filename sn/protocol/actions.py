"""What a ``ConnectionState`` asks its adapter to do, and the close codes it uses.

Actions are plain values rather than callbacks so the state machine never
calls into I/O and tests can compare outputs with ``==``.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_SLOW_CONSUMER",
    "Action",
    "Close",
    "SendText",
]

CLOSE_GOING_AWAY: Final = 1001  # server shutdown
CLOSE_MESSAGE_TOO_BIG: Final = 1009
# Application range (4000-4999).  Clients should reconnect with their last
# event_id as `since` and get the backlog via replay (or a resync).
CLOSE_SLOW_CONSUMER: Final = 4008


class SendText(msgspec.Struct, frozen=True):
    """Send ``payload`` (UTF-8 JSON) as a text frame now."""

    payload: bytes


class Close(msgspec.Struct, frozen=True):
    """Close the WebSocket with this code and reason; no further actions follow."""

    code: int
    reason: str


Action = SendText | Close
