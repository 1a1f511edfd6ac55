"""Per-WebSocket connection state machine, sans-I/O.

``ConnectionState`` consumes inputs (client frames, server events) and
produces *actions*; it never touches a socket.  The adapter
performs the actions, which keeps every protocol decision unit-testable
without a server, an event loop or a network.

Two output paths, on purpose:

* Replies to client frames (pong, stats, error) and the welcome are returned
  as ``SendText`` actions for the adapter to send immediately.  Each client
  frame produces at most one reply and the reader loop awaits the send, so
  a client can only slow itself down; no buffer is needed.
* Feed events (live and replayed) and ``resync`` are pushed by the server at
  its own pace, so they go into the bounded ``outbox``.  The adapter's writer
  drains it with :meth:`ConnectionState.frames_to_send`.  If it is full the
  client is not keeping up and we close it (4008) rather than buffer without
  bound: one slow phone must not cost the server memory for 10k others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, assert_never

import msgspec

from sn.protocol.actions import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SLOW_CONSUMER,
    Action,
    Close,
    SendText,
)
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
from sn.protocol.mailbox import Mailbox
from sn.protocol.messages import Event, FrameError, GetStats, Ping, parse_client_frame
from sn.protocol.resync import Resync

__all__ = ["WELCOME_MESSAGE", "ConnectionState", "ConnectionStats", "StatsProvider"]

WELCOME_MESSAGE: Final = "Connected successfully"


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
    """Protocol state of one client connection; see the module docstring."""

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
    ) -> None:
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
        self._close: Close | None = None
        self.slow_consumer = False  # the adapter exports this as a metric

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def close_action(self) -> Close | None:
        """The ``Close`` that ended this connection, if any."""
        return self._close

    @property
    def last_event_id(self) -> int:
        return self._last_event_id

    @property
    def pending(self) -> int:
        """Frames waiting in the outbox; non-zero means wake the writer."""
        return len(self.outbox)

    def stats(self) -> ConnectionStats:
        return ConnectionStats(
            connected_at=self.connected_at,
            messages_received=self._received,
            messages_sent=self._sent,
            events_delivered=self._delivered,
            duplicates_dropped=self._duplicates,
            last_event_id=self._last_event_id,
        )

    def frames_to_send(self, max_items: int | None = None) -> list[bytes]:
        """Drain queued event frames, oldest first, for the writer to send."""
        return self.outbox.drain(max_items)

    # ----------------------------------------------------------------- inputs

    def welcome(self, now: float) -> list[Action]:
        # None on the OTUS channel: every message a spec client gets unasked is a Post.
        if self.closed or self.dialect is Dialect.OTUS:
            return []
        return [self._reply(encode_system(WELCOME_MESSAGE, now))]

    def received_text(self, raw: str | bytes) -> list[Action]:
        """Handle one client frame.  Bad frames get an ``error`` reply, not a close."""
        if self.closed:
            return []
        self._received += 1
        if self._too_big(raw):
            return self._shutdown(CLOSE_MESSAGE_TOO_BIG, "message too big")
        frame = parse_client_frame(raw)
        if isinstance(frame, FrameError):
            return [self._reply(encode_error(frame.message))]
        if isinstance(frame, Ping):
            return [self._reply(encode_pong(self._clock()))]
        if isinstance(frame, GetStats):
            # Snapshot before counting the reply itself, so it reports what
            # the client has actually seen so far.
            data = dict(self._stats_provider(self.stats()))
            return [self._reply(encode_stats(data))]
        assert_never(frame)

    def deliver(self, event: Event, payloads: PayloadCache | None = None) -> list[Action]:
        """Queue a server event; duplicates and stale redeliveries are dropped.

        Pass the batch's ``PayloadCache`` so the post body is encoded once
        for all recipients instead of once per socket.
        """
        if self.closed:
            return []
        if event.event_id <= self._last_event_id:
            # At-least-once delivery (bus redelivery, replay racing live
            # events) is expected; the cursor makes it idempotent.
            self._duplicates += 1
            return []
        if self.outbox.full:
            # Checked before encoding: no point building a frame we will drop.
            return self._slow_consumer()
        dialect = self.dialect
        frame = encode_event(event, dialect) if payloads is None else payloads.frame(event, dialect)
        self.outbox.offer(frame)
        self._last_event_id = event.event_id
        self._delivered += 1
        self._sent += 1
        return []

    def replay(
        self,
        since: int,
        missed: Sequence[Event] | Resync,
        payloads: PayloadCache | None = None,
    ) -> list[Action]:
        """Queue what a reconnecting client missed (the hub's replay from the event log, or a ``Resync``).

        Call it before delivering live events: it sets the cursor to
        ``since`` so live events the client already has are dropped.
        """
        if self.closed:
            return []
        self._last_event_id = max(self._last_event_id, since)
        if isinstance(missed, Resync):
            return self._queue(encode_resync(missed.message, missed.since, missed.oldest_available))
        fresh = [event for event in missed if event.event_id > self._last_event_id]
        if len(fresh) > self.outbox.free:
            # A replay larger than the outbox would trip the slow-consumer
            # close on a client that has not even had a chance to read; a
            # resync (refetch over HTTP) is the cheaper way to catch up.
            message = "too many missed events to replay; refetch the feed"
            return self._queue(encode_resync(message, since, fresh[0].event_id))
        actions: list[Action] = []
        for event in fresh:
            actions = self.deliver(event, payloads)
            if actions:  # only a Close can come back; stop as the connection is gone
                break
        return actions

    def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> list[Action]:
        """Adapter-initiated close (e.g. shutdown); idempotent."""
        if self.closed:
            return []
        return self._shutdown(code, reason)

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

    def _reply(self, payload: bytes) -> SendText:
        self._sent += 1
        return SendText(payload)

    def _queue(self, frame: bytes) -> list[Action]:
        if not self.outbox.offer(frame):
            return self._slow_consumer()
        self._sent += 1
        return []

    def _slow_consumer(self) -> list[Action]:
        self.slow_consumer = True
        return self._shutdown(CLOSE_SLOW_CONSUMER, "slow consumer")

    def _shutdown(self, code: int, reason: str) -> list[Action]:
        action = Close(code, reason)
        self._close = action
        # Queued frames will never be written once we close; free them now
        # instead of holding them until the adapter gets around to it.
        self.outbox.close()
        self.outbox.clear()
        return [action]
