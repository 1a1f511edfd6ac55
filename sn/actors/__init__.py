"""Actor layer: one state machine and mailbox per socket, driven by the worker's hub.

Sans-I/O in the spirit of python-websockets: ``ConnectionState``, ``Mailbox`` and
``RestartPolicy`` never await and never touch sockets, Redis or Sanic; the socket adapter
(``socket.py``) and the hub feed them inputs and perform the actions they return. The fan-out
and celebrity consumers (``fanout.py``) and the supervised loops (``service.py``) are the
asynchronous parts.
"""

from __future__ import annotations

from sn.actors.actions import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SLOW_CONSUMER,
    Action,
    Close,
    SendText,
)
from sn.actors.connection import ConnectionState, ConnectionStats, StatsProvider
from sn.actors.encoding import Dialect, PayloadCache, encode_event, encode_payload
from sn.actors.history import Resync
from sn.actors.mailbox import Mailbox
from sn.actors.messages import (
    ClientFrame,
    Event,
    EventType,
    FrameError,
    GetStats,
    Ping,
    event_from_json,
    event_to_json,
    parse_client_frame,
)
from sn.actors.policy import RestartDecision, RestartPolicy, RestartTracker

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_SLOW_CONSUMER",
    "Action",
    "ClientFrame",
    "Close",
    "ConnectionState",
    "ConnectionStats",
    "Dialect",
    "Event",
    "EventType",
    "FrameError",
    "GetStats",
    "Mailbox",
    "PayloadCache",
    "Ping",
    "RestartDecision",
    "RestartPolicy",
    "RestartTracker",
    "Resync",
    "SendText",
    "StatsProvider",
    "encode_event",
    "encode_payload",
    "event_from_json",
    "event_to_json",
    "parse_client_frame",
]
