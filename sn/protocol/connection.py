"""Per-WebSocket connection state machine, sans-I/O, shaped like python-websockets' ``Protocol``.

``ConnectionState`` takes inputs (the handshake's answer, client messages, server events, closes)
and has one output, :meth:`ConnectionState.data_to_send`: the bytes to write to the socket, in
order, ready for the wire. It never touches a socket, so every protocol decision is unit-testable
without a server, an event loop or a network; the adapter (``sn.realtime.socket``) feeds it and
writes what it says. A :class:`State` tells where the connection is::

    CONNECTING --accept()--> OPEN --send_close() / receive_close() / its own close--> CLOSING
    any state --connection_lost()--> CLOSED

Everything it sends goes through one bounded outbox (``Mailbox``), so replies and events leave
in the order they were produced:

* Feed events (live and replayed) and ``resync`` are pushed at the server's pace. If the outbox
  is full the client is not reading and we close it (4008, ``slow_consumer``) rather than buffer
  without bound: one slow phone must not cost the server memory for 10k others. A replay larger
  than the free room becomes a ``resync`` instead.
* Replies (pong, stats, error) are client-paced: the adapter takes no client frame while the
  transport has paused writing, so when a reply is queued the outbox has just been written out.
  One that found it full would mean the client is not reading either: the same 4008.
* A close clears what is queued (it would never be read) and puts the close frame last: the
  state becomes CLOSING, ``close_sent`` says the code and reason, and nothing is queued after it.

The control frames of the keepalive (ping, pong) stay with the adapter, which handles the
framing of what the client sends (``FrameReader``); RFC 6455 lets them go between any messages.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, assert_never

import msgspec

from sn.protocol.encoding import (
    Dialect,
    PayloadCache,
    encode_error,
    encode_event,
    encode_pong,
    encode_resync,
    encode_stats,
    encode_system,
)
from sn.protocol.frames import CLOSE_TOO_BIG, OP_TEXT, CloseFrame, close_frame, encode_frame, wire_frame
from sn.protocol.mailbox import Mailbox
from sn.protocol.messages import Event, FrameError, GetStats, Ping, parse_client_frame
from sn.protocol.resync import Resync

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_SLOW_CONSUMER",
    "WELCOME_MESSAGE",
    "ConnectionState",
    "ConnectionStats",
    "InvalidState",
    "State",
    "StatsProvider",
]

WELCOME_MESSAGE: Final = "Connected successfully"

CLOSE_GOING_AWAY: Final = 1001  # server shutdown
CLOSE_MESSAGE_TOO_BIG: Final = CLOSE_TOO_BIG  # 1009
# Application range (4000-4999).  Clients should reconnect with their last
# event_id as `since` and get the backlog via replay (or a resync).
CLOSE_SLOW_CONSUMER: Final = 4008


class State(enum.IntEnum):
    """Where a connection is (RFC 6455 4.1, 7.1.3, 7.1.4); the same four as websockets'."""

    CONNECTING, OPEN, CLOSING, CLOSED = range(4)


# Module globals: the hot path compares against these, one global lookup instead of two.
_OPEN: Final = State.OPEN
_CLOSING: Final = State.CLOSING


class InvalidState(RuntimeError):
    """An input that the connection's state does not allow (a programming error)."""


class ConnectionStats(msgspec.Struct, frozen=True):
    """Counters of one connection, handed to the stats provider."""

    connected_at: float
    messages_received: int
    messages_sent: int
    events_delivered: int
    duplicates_dropped: int
    last_event_id: int


# Must be synchronous: the adapter pre-fetches/caches cluster-wide counts and
# merges them here, so the state machine never waits on Redis.
StatsProvider = Callable[[ConnectionStats], Mapping[str, Any]]


def _local_stats(stats: ConnectionStats) -> Mapping[str, Any]:
    return msgspec.structs.asdict(stats)


class ConnectionState:
    """Protocol state of one client connection; see the module docstring.

    ``state`` starts OPEN by default, as websockets' ``Protocol`` does (for tests and adapters
    that answer the handshake themselves); the server starts it CONNECTING and calls ``accept``.
    Inputs other than ``accept`` and ``connection_lost`` do nothing unless the state is OPEN.
    """

    __slots__ = (
        "_clock",
        "_delivered",
        "_duplicates",
        "_events_pending",
        "_last_event_id",
        "_received",
        "_replayed",
        "_sent",
        "_stats_provider",
        "close_rcvd",
        "close_sent",
        "connected_at",
        "dialect",
        "max_frame_bytes",
        "outbox",
        "slow_consumer",
        "state",
    )

    def __init__(
        self,
        *,
        dialect: Dialect = Dialect.SEED,
        max_frame_bytes: int = 64 * 1024,
        outbox_capacity: int = 256,
        last_event_id: int = 0,
        stats_provider: StatsProvider | None = None,
        clock: Callable[[], float] = time.time,
        connected_at: float | None = None,
        state: State = State.OPEN,
    ) -> None:
        self.state = state
        self.dialect = dialect
        self.max_frame_bytes = max_frame_bytes
        self.outbox: Mailbox[bytes] = Mailbox(outbox_capacity)
        self._stats_provider = stats_provider or _local_stats
        # Wall clock by default: it stamps pong/welcome timestamps that
        # clients compare with their own clocks.  Tests inject a fake.
        self._clock = clock
        self.connected_at = clock() if connected_at is None else connected_at
        self._last_event_id = last_event_id
        self._received = 0
        self._sent = 0
        self._delivered = 0
        self._duplicates = 0
        # What this connection's replay delivered, by content: None until it replays (see deliver).
        self._replayed: set[tuple[str, str, str | None]] | None = None
        self._events_pending = 0
        self.close_sent: CloseFrame | None = None
        """The close frame queued by this side (code and reason), once CLOSING."""
        self.close_rcvd: CloseFrame | None = None
        """The client's close frame, if it sent one."""
        self.slow_consumer = False  # the adapter exports this as a metric

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> list[bytes]:
        """Take the bytes to write to the socket, oldest first; call it after any input.

        Each item is ready for the wire: the handshake response, then whole frames. An event
        frame is the one ``wire_frame`` built for every recipient of that event (same object).
        Once the state is CLOSING the last item handed out is the close frame, and nothing
        follows it.
        """
        self._events_pending = 0
        return self.outbox.drain()

    @property
    def pending_events(self) -> int:
        """How many of the items ``data_to_send`` would return now are event (or resync) frames."""
        return self._events_pending

    # ------------------------------------------------------------------ state

    @property
    def last_event_id(self) -> int:
        return self._last_event_id

    def stats(self) -> ConnectionStats:
        return ConnectionStats(
            connected_at=self.connected_at,
            messages_received=self._received,
            messages_sent=self._sent,
            events_delivered=self._delivered,
            duplicates_dropped=self._duplicates,
            last_event_id=self._last_event_id,
        )

    # ----------------------------------------------------------------- inputs

    def accept(self, response: bytes, now: float) -> None:
        """The handshake is answered with ``response`` (the 101): CONNECTING -> OPEN.

        The response and the welcome come out as one item: one write, one packet per handshake.
        No welcome on the OTUS channel: every message a spec client gets unasked is a Post.
        """
        if self.state is not State.CONNECTING:
            raise InvalidState(f"accept() on a connection that is {self.state.name}")
        self.state = _OPEN
        if self.dialect is not Dialect.OTUS:
            self._sent += 1
            response += encode_frame(OP_TEXT, encode_system(WELCOME_MESSAGE, now))
        self.outbox.offer(response)

    def receive_text(self, raw: str | bytes) -> None:
        """Handle one client message.  Bad ones get an ``error`` reply, not a close."""
        if self.state is not _OPEN:
            return
        self._received += 1
        if self._too_big(raw):
            self._close(CLOSE_MESSAGE_TOO_BIG, "message too big")
            return
        frame = parse_client_frame(raw)
        if isinstance(frame, FrameError):
            self._reply(encode_error(frame.message))
        elif isinstance(frame, Ping):
            self._reply(encode_pong(self._clock()))
        elif isinstance(frame, GetStats):
            # Snapshot before counting the reply itself, so it reports what
            # the client has actually seen so far.
            data = dict(self._stats_provider(self.stats()))
            self._reply(encode_stats(data))
        else:
            assert_never(frame)

    def deliver(self, event: Event, payloads: PayloadCache | None = None) -> None:
        """Queue a server event; duplicates and stale redeliveries are dropped.

        Pass the batch's ``PayloadCache`` so the post body is encoded and framed once for all
        recipients instead of once per socket. The fan-out's hot path: nothing is allocated
        here but the outbox's one-item list.
        """
        if self.state is not _OPEN:
            return
        if event.event_id <= self._last_event_id:
            # At-least-once delivery (bus redelivery, replay racing live
            # events) is expected; the cursor makes it idempotent.
            self._duplicates += 1
            return
        if self._replayed is not None and (event.type, event.post_id, event.post_text) in self._replayed:
            # A post logged more than once (a celebrity's: at the start of its fan-out and with
            # each batch of followers, every entry under an id of its own) reaches a client that
            # replayed one entry again live, under a later id; by content it is the same event.
            self._duplicates += 1
            return
        outbox = self.outbox
        if outbox.full:
            # Checked before encoding: no point building a frame we will drop.
            self._slow_consumer()
            return
        dialect = self.dialect
        frame = encode_event(event, dialect) if payloads is None else payloads.frame(event, dialect)
        outbox.offer(wire_frame(frame))
        self._last_event_id = event.event_id
        self._events_pending += 1
        self._delivered += 1
        self._sent += 1

    def replay(
        self,
        since: int,
        missed: Sequence[Event] | Resync,
        payloads: PayloadCache | None = None,
    ) -> None:
        """Queue what a reconnecting client missed (the hub's replay from the event log, or a ``Resync``).

        Call it before delivering live events: it sets the cursor to
        ``since`` so live events the client already has are dropped.
        """
        if self.state is not _OPEN:
            return
        self._last_event_id = max(self._last_event_id, since)
        if isinstance(missed, Resync):
            self._queue_resync(missed.message, missed.since, missed.oldest_available)
            return
        fresh = [event for event in missed if event.event_id > self._last_event_id]
        if len(fresh) > self.outbox.free:
            # A replay larger than the outbox would trip the slow-consumer
            # close on a client that has not even had a chance to read; a
            # resync (refetch over HTTP) is the cheaper way to catch up.
            message = "too many missed events to replay; refetch the feed"
            self._queue_resync(message, since, fresh[0].event_id)
            return
        for event in fresh:
            self.deliver(event, payloads)
        if fresh:
            # At most an outbox's worth (checked above), kept while the connection lives: a live copy
            # can come as late as the last batch of a throttled fan-out.
            replayed = self._replayed if self._replayed is not None else set()
            replayed.update((event.type, event.post_id, event.post_text) for event in fresh)
            self._replayed = replayed

    def send_close(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        """Start the closing handshake (e.g. shutdown, a failed setup): OPEN -> CLOSING.

        Idempotent: in any other state it does nothing (a connection sends one close frame).
        """
        if self.state is _OPEN:
            self._close(code, reason)

    def receive_close(self, frame: CloseFrame) -> None:
        """The client's close frame. While OPEN it is echoed (its code, RFC 6455 5.5.1; no code
        if it had none) and the state becomes CLOSING; after our own close it completes the
        handshake and nothing more is sent."""
        self.close_rcvd = frame
        if self.state is _OPEN:
            self._close(frame.code, "")

    def connection_lost(self) -> None:
        """The TCP connection is gone: CLOSED, and whatever was queued is dropped."""
        self.state = State.CLOSED
        self.outbox.close()
        self.outbox.clear()
        self._events_pending = 0

    # ---------------------------------------------------------------- helpers

    def _too_big(self, raw: str | bytes) -> bool:
        limit = self.max_frame_bytes
        if isinstance(raw, bytes):
            return len(raw) > limit
        # UTF-8 needs 1..4 bytes per character, so the character count
        # settles most frames without paying for an encode.
        if len(raw) > limit:
            return True
        if len(raw) * 4 <= limit:
            return False
        return len(raw.encode("utf-8", "surrogatepass")) > limit

    def _reply(self, payload: bytes) -> None:
        if not self.outbox.offer(encode_frame(OP_TEXT, payload)):
            self._slow_consumer()
            return
        self._sent += 1

    def _queue_resync(self, message: str, since: int, oldest_available: int | None) -> None:
        frame = encode_frame(OP_TEXT, encode_resync(message, since, oldest_available))
        if not self.outbox.offer(frame):
            self._slow_consumer()
            return
        self._events_pending += 1
        self._sent += 1

    def _slow_consumer(self) -> None:
        self.slow_consumer = True
        self._close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def _close(self, code: int, reason: str) -> None:
        # Queued frames will never be read once we close: free them now, and send the close
        # frame alone (into the emptied outbox, which then refuses everything).
        outbox = self.outbox
        outbox.clear()
        self._events_pending = 0
        self.close_sent = CloseFrame(code, reason)
        outbox.offer(close_frame(code, reason))
        outbox.close()
        self.state = _CLOSING
