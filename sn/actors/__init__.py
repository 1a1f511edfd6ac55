"""Actor layer: pure state machines for the real-time feed plus a tiny asyncio runtime.

Sans-I/O in the spirit of python-websockets: ``ConnectionState``,
``EventHistory``, ``Mailbox`` and ``RestartPolicy`` never await and never
touch sockets, Redis or Sanic; thin adapters elsewhere feed them inputs and
perform the actions they return.  ``runtime``/``supervisor`` are the only
modules that use asyncio.
"""

from __future__ import annotations

from sn.actors.actions import (
    CLOSE_GOING_AWAY,
    CLOSE_IDLE_TIMEOUT,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SLOW_CONSUMER,
    Action,
    Close,
    SendText,
)
from sn.actors.connection import ConnectionState, ConnectionStats, StatsProvider
from sn.actors.encoding import Dialect, PayloadCache, encode_event, encode_payload
from sn.actors.history import EventHistory, Resync, plan_replay
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
from sn.actors.runtime import Actor, ActorRef, ActorStatus, AsyncMailbox
from sn.actors.supervisor import Supervisor, SupervisorStats

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_IDLE_TIMEOUT",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_SLOW_CONSUMER",
    "Action",
    "Actor",
    "ActorRef",
    "ActorStatus",
    "AsyncMailbox",
    "ClientFrame",
    "Close",
    "ConnectionState",
    "ConnectionStats",
    "Dialect",
    "Event",
    "EventHistory",
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
    "Supervisor",
    "SupervisorStats",
    "encode_event",
    "encode_payload",
    "event_from_json",
    "event_to_json",
    "parse_client_frame",
    "plan_replay",
]
