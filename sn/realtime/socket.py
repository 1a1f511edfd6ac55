"""The connection actor: one per WebSocket, the thin adapter around two sans-I/O cores.

``ConnectionState`` decides what to say (replies, events, closes) and hands it over as bytes for
the wire (``data_to_send``); ``FrameReader`` turns bytes into client frames. This class is the
``asyncio.Protocol`` the transport calls once the upgrade is done (`sn.api.ws` hands the socket
over from Sanic's HTTP protocol), so an idle socket costs a transport and a few small objects:
no task, no event, no per-socket timer.

- After every input the socket writes what ``data_to_send`` returns (``_send``). Deliveries come
  from the router synchronously and are written at once when the socket can take them (the
  fan-out case: one prebuilt frame per event, see ``wire_frame``); while the transport has
  paused writing they wait in the state's bounded outbox, and a full outbox closes the
  connection as a slow consumer (4008). A close frame is written whatever the pause.
- Client frames are taken one at a time and stop being taken while writing is paused, so a
  client that sends without reading cannot make replies pile up here.
- Closing follows RFC 6455: once the state is CLOSING (its close frame written), the peer's
  answer or a timer that aborts. Ping and pong frames are written here, not by the state.
- Keepalive pings come from one sweep per worker (``Hub.keepalive_loop``) calling ``keepalive``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from sn.protocol.connection import ConnectionState, State
from sn.protocol.encoding import PayloadCache
from sn.protocol.frames import (
    OP_PING,
    OP_PONG,
    CloseFrame,
    Failure,
    FrameReader,
    Message,
    PingFrame,
    encode_frame,
)
from sn.protocol.messages import Event
from sn.protocol.resync import Resync


class SocketOwner(Protocol):
    """What a socket tells the worker that owns it (the ``Hub``), and all it may: the hub imports
    the socket to deliver into it, so the socket must not import the hub back."""

    def remove(self, socket: SocketActor) -> None:
        """The connection is gone: forget it."""

    def slow_consumer_closed(self) -> None:
        """It was closed for not reading its outbox (4008)."""

    def count_delivered(self, frames: int) -> None:
        """``frames`` event frames were written to the transport."""


log = logging.getLogger("sn.realtime.socket")

CLOSE_KEEPALIVE_TIMEOUT = 1011  # what websockets uses when a ping goes unanswered
CLOSE_POLICY_VIOLATION = 1008
# Client frames handled per read before the socket yields to the rest of the loop.
FRAMES_PER_TURN = 64
# What a client may send per second (a feed client sends a few small frames a minute); more
# closes the connection with 1008. Above the largest message (64 KiB), so one big message passes.
MAX_INBOUND_BYTES_PER_SECOND = 256 * 1024
# Each frame also counts as this many bytes: at most ~1,000 frames a second, however small.
FRAME_COST_BYTES = 256
# How long a closing socket waits for the peer's close frame (or for its buffer to drain)
# before the connection is dropped.
CLOSE_TIMEOUT_SECONDS = 5.0


class SocketActor(asyncio.Protocol):
    __slots__ = (
        "_abort_timer",
        "_close_sent",
        "_held",
        "_held_dropped",
        "_paused",
        "_reader",
        "_window_bytes",
        "_window_start",
        "_yielding",
        "last_heard",
        "owner",
        "ping_sent_at",
        "state",
        "transport",
        "user_id",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        user_id: int,
        state: ConnectionState,
        owner: SocketOwner,
        *,
        max_message_bytes: int,
    ) -> None:
        self.transport = transport
        self.user_id = user_id
        self.state = state
        self.owner = owner
        self._reader = FrameReader(max_message_bytes)
        self._paused = False  # the transport's buffer is over its high-water mark
        self._yielding = False  # frames left over for the next loop iteration (FRAMES_PER_TURN)
        self._window_start = 0.0  # inbound bytes are counted per one-second window
        self._window_bytes = 0
        self._close_sent = False  # the state's close frame was seen through (written, timer armed)
        self._abort_timer: asyncio.TimerHandle | None = None
        self.last_heard = time.monotonic()
        self.ping_sent_at = 0.0  # 0: no keepalive ping outstanding
        # Live events that arrive while the replay is being read are held, then delivered
        # after it: delivered first, they would advance the cursor past the replayed ones.
        self._held: list[tuple[Event, PayloadCache]] | None = None
        self._held_dropped = False  # more arrived than the outbox holds: the client gets a resync

    # -- transport callbacks ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_bytes = now, 0
        self._window_bytes += len(data)
        if self._over_budget():
            return
        self.last_heard = now
        self.ping_sent_at = 0.0  # any frame proves the peer alive, not only a pong
        self._reader.feed(data)
        self._take_frames()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost does the bookkeeping

    def pause_writing(self) -> None:
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self._send()
        self._take_frames()
        if not self._paused and not self._yielding and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.state.connection_lost()
        self.owner.remove(self)

    # -- client frames ------------------------------------------------------------------------

    def _take_frames(self) -> None:
        reader = self._reader
        budget = FRAMES_PER_TURN
        while not self._paused and not self._yielding:
            if not budget:
                # Many frames in one read: the rest wait for the next loop iteration, so other
                # sockets and tasks get their turn; nothing more is read from this socket meanwhile.
                self._yielding = True
                self.transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
                return
            budget -= 1
            item = reader.next()
            if item is None:
                return
            self._window_bytes += FRAME_COST_BYTES
            if self._over_budget():
                return
            if isinstance(item, Message):
                self.state.receive_text(item.data)
                self._send()
            elif isinstance(item, PingFrame):
                if self.state.state is State.OPEN:
                    self.transport.write(encode_frame(OP_PONG, item.payload))
            elif isinstance(item, CloseFrame):
                self._peer_closed(item)
                return
            elif isinstance(item, Failure):
                self.fail(item.code, item.reason)
                return
            # PongFrame: data_received already recorded that the peer is alive.

    def _over_budget(self) -> bool:
        if self._window_bytes <= MAX_INBOUND_BYTES_PER_SECOND:
            return False
        # A feed client sends a ping or a stats request now and then; a flood (pongs cost no
        # reply, so flow control never slows them) would take a worker's CPU from everyone.
        self.fail(CLOSE_POLICY_VIOLATION, "too many messages from the client")
        return True

    def _next_turn(self) -> None:
        self._yielding = False
        if self.transport.is_closing():
            return
        self._take_frames()
        if not self._yielding and not self._paused:
            self.transport.resume_reading()

    # -- the state's output ----------------------------------------------------------------------

    def _send(self) -> None:
        """Write what the state has for the wire; once it is CLOSING, see the close through."""
        state = self.state
        events = state.pending_events
        data = state.data_to_send()
        transport = self.transport
        if data and not transport.is_closing():
            write = transport.write
            for chunk in data:
                write(chunk)
            if events:
                self.owner.count_delivered(events)
        if state.state is State.CLOSING and not self._close_sent:
            self._close_sent = True
            if state.slow_consumer:
                self.owner.slow_consumer_closed()
            if transport.is_closing():
                return
            self._arm_abort()
            if self._paused:
                # The peer is not reading: its answer will not come before the timer, and
                # frames it sends meanwhile are of no use.
                transport.close()

    def _send_unless_paused(self) -> None:
        # While writing is paused events wait in the outbox; a close frame (the state is no
        # longer OPEN then, and the outbox holds nothing else) goes out at once.
        if not self._paused or self.state.state is not State.OPEN:
            self._send()

    # -- deliveries -----------------------------------------------------------------------------

    def deliver(self, event: Event, payloads: PayloadCache) -> None:
        """Called by the router; never awaits, so one slow socket cannot hold up the others."""
        if self._held is not None:
            if len(self._held) < self.state.outbox.capacity:
                self._held.append((event, payloads))
            else:
                self._held_dropped = True
            return
        self.state.deliver(event, payloads)
        self._send_unless_paused()

    def replay(self, since: int, missed: Sequence[Event] | Resync) -> None:
        self.state.replay(since, missed, PayloadCache())
        self._send_unless_paused()

    def resync(self, message: str) -> None:
        """Tell the client to refetch its feed; its cursor stays (later ids are higher)."""
        self.replay(self.state.last_event_id, Resync(self.state.last_event_id, None, message))

    def hold_live_events(self) -> None:
        """From now until ``finish_replay``, live events wait behind the replay."""
        self._held = []

    def finish_replay(self, since: int, missed: Sequence[Event] | Resync) -> None:
        """Queue the replay, then the live events held while it was read; if some of those had
        to be dropped, the client cannot be caught up frame by frame: it gets a resync instead."""
        held, self._held = self._held or [], None
        if self._held_dropped:
            self._held_dropped = False
            self.replay(since, Resync(since, None, "too many events arrived during the replay; refetch the feed"))
            return
        self.replay(since, missed)
        for event, payloads in held:
            self.deliver(event, payloads)

    # -- closing ----------------------------------------------------------------------------------

    def shutdown(self, code: int, reason: str) -> None:
        """Start the closing handshake; the peer's close frame (or the timer) ends it."""
        self.state.send_close(code, reason)
        self._send()

    def _peer_closed(self, frame: CloseFrame) -> None:
        self.state.receive_close(frame)  # echoed unless we had sent our close already
        self._send()
        # The server closes the TCP connection first (RFC 6455 7.1.1).
        self.transport.close()
        self._arm_abort()

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame if possible, then drop it."""
        self.state.send_close(code, reason)
        self._send()
        self.transport.close()
        self._arm_abort()

    def _arm_abort(self) -> None:
        # transport.close() waits for the write buffer to drain, which a peer that stopped
        # reading never lets happen: bound it.
        if self._abort_timer is None:
            loop = asyncio.get_running_loop()
            self._abort_timer = loop.call_later(CLOSE_TIMEOUT_SECONDS, self.transport.abort)

    # -- keepalive --------------------------------------------------------------------------------

    def keepalive(self, now: float, interval: float, timeout: float, *, may_ping: bool = True) -> bool:
        """Called by the hub's sweep (``now`` from time.monotonic): ping a quiet peer, drop a dead
        one. Returns whether it pinged; ``may_ping`` False (the sweep's budget is spent) defers it."""
        if self.state.state is not State.OPEN or self.transport.is_closing():
            return False
        if self.ping_sent_at:
            if now - self.ping_sent_at >= timeout:
                self.fail(CLOSE_KEEPALIVE_TIMEOUT, "keepalive ping timeout")
        elif may_ping and now - self.last_heard >= interval:
            self.ping_sent_at = now
            self.transport.write(encode_frame(OP_PING, b""))
            return True
        return False
