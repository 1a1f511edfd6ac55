"""The connection actor: one per WebSocket, a thin adapter around `ConnectionState`.

Its mailbox is the state machine's bounded outbox; its one task is the writer draining it.
The router puts events in (never blocking: a full outbox is a slow consumer, closed with 4008),
the reader loop feeds client frames to the state machine and performs the replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from sn.actors.actions import Action, Close, SendText
from sn.actors.connection import ConnectionState
from sn.actors.encoding import PayloadCache
from sn.actors.history import Resync
from sn.actors.messages import Event

if TYPE_CHECKING:
    from sn.actors.hub import Hub

log = logging.getLogger("sn.actors.socket")


class WebSocket(Protocol):
    """What we use of Sanic's websocket (kept narrow so the adapter is testable with a real one)."""

    async def send(self, data: str | bytes) -> None: ...
    async def recv(self, timeout: float | None = None) -> str | bytes | None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...
    def fail_connection(self, code: int = 1006, reason: str = "") -> bool: ...


# Past this many bytes waiting in the kernel-side buffer of our transport, frames go through the
# writer task, which waits for the socket to drain (Sanic's flow control) instead of piling up.
_DIRECT_WRITE_LIMIT = 64 * 1024

DirectWrite = Callable[[bytes], bool]


def direct_writer(ws: object) -> DirectWrite | None:
    """A synchronous "write this text frame now" for a Sanic websocket, or None if it has no such path.

    A fan-out delivers one event to thousands of sockets; through ``await ws.send(str)`` each
    delivery wakes a writer task, decodes the frame to str and has websockets re-encode it. When
    nothing else is writing on the socket and its buffer is short, the frame goes straight from
    the router's call to the transport instead (websockets' sans-I/O protocol still frames it, so
    its state stays right). Anything unusual (a ping or close in progress, a full buffer) answers
    False and the caller falls back to the writer task.
    """
    protocol = getattr(ws, "ws_proto", None)
    io = getattr(ws, "io_proto", None)
    mutex = getattr(ws, "conn_mutex", None)
    if protocol is None or io is None or mutex is None or getattr(protocol, "extensions", None):
        return None  # (a compression extension would make each socket's frame its own)
    from websockets.protocol import State

    def write(frame: bytes) -> bool:
        transport = io.transport
        if (
            mutex.locked()
            or protocol.state is not State.OPEN
            or protocol.expect_continuation_frame
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > _DIRECT_WRITE_LIMIT
        ):
            return False
        transport.write(wire_frame(frame))
        return True

    return write


_last_frame: tuple[bytes, bytes] = (b"", b"\x81\x00")


def wire_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it.

    A fan-out hands the same payload object to every recipient (PayloadCache), so the last one
    built is kept: the frame is assembled once per event, not once per socket, as
    ``websockets.broadcast`` does.
    """
    global _last_frame
    if payload is _last_frame[0]:
        return _last_frame[1]
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    framed = header + payload
    _last_frame = (payload, framed)
    return framed


class SocketActor:
    __slots__ = (
        "_backlog",
        "_direct",
        "_held",
        "_held_dropped",
        "_sending",
        "_wake",
        "_writer",
        "hub",
        "state",
        "user_id",
        "ws",
    )

    def __init__(
        self, ws: WebSocket, user_id: int, state: ConnectionState, hub: Hub, direct: DirectWrite | None = None
    ) -> None:
        self.ws = ws
        self.user_id = user_id
        self.state = state
        self.hub = hub
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._direct = direct
        self._sending = False  # the writer task is between frames: direct writes would reorder
        self._backlog: list[bytes] = []  # frames drained for a direct write that must wait
        # Live events that arrive while the replay is being read are held, then delivered
        # after it: delivered first, they would advance the cursor past the replayed ones.
        self._held: list[tuple[Event, PayloadCache]] | None = None
        self._held_dropped = False  # more arrived than the outbox holds: the client gets a resync

    def deliver(self, event: Event, payloads: PayloadCache) -> None:
        """Called by the router; never awaits, so one slow socket cannot hold up the others."""
        if self._held is not None:
            if len(self._held) < self.state.outbox.capacity:
                self._held.append((event, payloads))
            else:
                self._held_dropped = True
            return
        actions = self.state.deliver(event, payloads)
        if actions:
            self._closing(actions)
        elif self.state.pending:
            if self._direct is None or self._sending or self._wake.is_set() or self._writer is None:
                self._wake.set()
            else:
                self._write_now()

    def _write_now(self) -> None:
        assert self._direct is not None
        frames = self.state.frames_to_send(64)
        for index, frame in enumerate(frames):
            if not self._direct(frame):
                self._backlog = frames[index:]
                self._wake.set()
                return
            self._sent()
        if self.state.pending:
            self._wake.set()

    def _sent(self) -> None:
        self.hub.delivered += 1  # the Prometheus counter follows once a second (Hub.presence_loop)

    def replay(self, since: int, missed: Sequence[Event] | Resync) -> None:
        actions = self.state.replay(since, missed, PayloadCache())
        if actions:
            self._closing(actions)
        self._wake.set()

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

    def shutdown(self, code: int, reason: str) -> None:
        self._closing(self.state.close(code, reason))

    def _closing(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Close):
                if self.state.slow_consumer:
                    self.hub.slow_consumer_closed()
                # Synchronous: sends the close frame and drops the connection even if the
                # client stopped reading (an awaited close could wait forever on its buffer).
                self.ws.fail_connection(action.code, action.reason)
        self._wake.set()

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendText):
                await self.ws.send(action.payload.decode())
            else:
                self._closing([action])

    async def _write_loop(self) -> None:
        while not self.state.closed:
            await self._wake.wait()
            self._wake.clear()
            self._sending = True
            try:
                frames, self._backlog = self._backlog + self.state.frames_to_send(64), []
                for frame in frames:
                    await self.ws.send(frame.decode())
                    self._sent()
            finally:
                self._sending = False
            if self.state.pending:
                self._wake.set()

    async def run(self, *, since: int | None, now: float) -> None:
        await self._perform(self.state.welcome(now))
        if since is not None:
            self._held = []
        self.hub.add(self)
        try:
            # Present before the log is read: an event routed from now on reaches this socket
            # live, and anything routed earlier is in the log (see EventLog.route_to_followers).
            await self.hub.announce(self.user_id)
            if since is not None:
                self.finish_replay(since, await self.hub.missed_events(self.user_id, since))
            self._writer = asyncio.create_task(self._write_loop())
            while not self.state.closed:
                message = await self.ws.recv()
                if message is None:  # closed by the peer
                    break
                await self._perform(self.state.received_text(message))
        finally:
            self.hub.remove(self)
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._writer
