"""The connection actor on a real transport (a socketpair), its client end spoken by websockets'
own sans-I/O client, so framing, control frames and closing are checked against an independent
implementation. Delivery order across a replay is checked on the actor's state directly."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from redis.asyncio import Redis
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from sn.protocol.connection import ConnectionState
from sn.protocol.connection import State as ConnectionStatus  # websockets' State is the client's here
from sn.protocol.encoding import Dialect, PayloadCache
from sn.protocol.messages import Event
from sn.realtime import socket as socket_module
from sn.realtime.hub import Hub
from sn.realtime.socket import CLOSE_KEEPALIVE_TIMEOUT, SocketActor
from sn.storage.redis_mux import MuxRedis
from tests.realtime.hubs import make_hub


class Peer:
    """The client end of the socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientProtocol(parse_uri("ws://test/"), state=State.OPEN, max_size=None)
        self.eof = False

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_text(self, text: bytes) -> None:
        self.protocol.send_text(text)
        await self.flush()

    async def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                await self.send(chunk)

    async def frames(self, count: int, timeout: float = 5.0) -> list[Frame]:
        """Read until ``count`` frames arrived (or the server closed the connection)."""
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        deadline = loop.time() + timeout
        while len(frames) < count and not self.eof:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), deadline - loop.time())
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
                self.eof = True
            frames += [event for event in self.protocol.events_received() if isinstance(event, Frame)]
        return frames

    async def until_eof(self, timeout: float = 5.0) -> list[Frame]:
        return await self.frames(1 << 30, timeout)


@pytest.fixture
async def hub(aredis: Redis, amux: MuxRedis) -> Hub:
    return make_hub(aredis, amux)


@pytest.fixture
async def connect(hub: Hub) -> AsyncIterator[Callable[..., object]]:
    opened: list[tuple[SocketActor, Peer]] = []

    async def open_socket(*, capacity: int = 8, max_message_bytes: int = 64 * 1024) -> tuple[SocketActor, Peer]:
        loop = asyncio.get_running_loop()
        server_end, client_end = socket.socketpair()
        client_end.setblocking(False)
        # How sn.api.ws gets there: the transport first belongs to another protocol (Sanic's).
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_end)
        transport.set_write_buffer_limits(low=16384, high=65536)  # as Sanic sets them
        state = ConnectionState(dialect=Dialect.SEED, outbox_capacity=capacity)
        actor = SocketActor(transport, 7, state, hub, max_message_bytes=max_message_bytes)
        transport.set_protocol(actor)
        hub.add(actor)
        peer = Peer(client_end)
        opened.append((actor, peer))
        return actor, peer

    yield open_socket
    for actor, peer in opened:
        if not actor.transport.is_closing():  # (closing ones finish by themselves, or by their timer)
            actor.transport.abort()
        peer.sock.close()
    await asyncio.sleep(0)


def _event(event_id: int, text: str = "t") -> Event:
    return Event(event_id=event_id, type="post_created", post_id=str(event_id), author_user_id="9", post_text=text)


def _json(frame: Frame) -> dict[str, object]:
    assert frame.opcode is Opcode.TEXT
    parsed: dict[str, object] = orjson.loads(frame.data)
    return parsed


async def test_a_delivery_reaches_the_client_as_one_text_frame(connect: Callable[..., object], hub: Hub) -> None:
    actor, peer = await connect()  # type: ignore[misc]
    actor.deliver(_event(1, "hello"), PayloadCache())
    (frame,) = await peer.frames(1)
    assert _json(frame)["event_id"] == 1
    assert _json(frame)["data"]["post_text"] == "hello"  # type: ignore[index]
    assert hub.delivered == 1


async def test_pings_and_requests_are_answered(connect: Callable[..., object]) -> None:
    actor, peer = await connect()  # type: ignore[misc]
    await peer.send(Frame(Opcode.PING, b"are you there").serialize(mask=True, extensions=[]))
    await peer.send_text(b'{"type":"ping"}')
    await peer.send_text(b"not json")
    pong, reply, error = await peer.frames(3)
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"are you there")
    assert _json(reply)["type"] == "pong"
    assert _json(error)["type"] == "error"
    assert not actor.transport.is_closing()  # a bad message costs an error frame, not the connection


async def test_a_client_close_is_answered_and_the_socket_leaves_the_hub(
    connect: Callable[..., object], hub: Hub
) -> None:
    actor, peer = await connect()  # type: ignore[misc]
    assert hub.connections == 1
    peer.protocol.send_close(1000, "bye")
    await peer.flush()
    frames = await peer.until_eof()
    assert [f.opcode for f in frames] == [Opcode.CLOSE]
    assert peer.protocol.close_rcvd is not None
    assert peer.protocol.close_rcvd.code == 1000
    await asyncio.sleep(0.05)
    assert hub.connections == 0
    assert actor.state.state is ConnectionStatus.CLOSED
    assert actor.state.close_rcvd is not None
    assert actor.state.close_rcvd.code == 1000


async def test_a_protocol_violation_fails_the_connection(connect: Callable[..., object]) -> None:
    _, peer = await connect()  # type: ignore[misc]
    await peer.send(Frame(Opcode.TEXT, b"unmasked").serialize(mask=False, extensions=[]))
    await peer.until_eof()
    assert peer.protocol.close_rcvd is not None
    assert peer.protocol.close_rcvd.code == 1002


async def test_an_oversized_message_is_refused_with_1009(connect: Callable[..., object]) -> None:
    _, peer = await connect(max_message_bytes=1000)  # type: ignore[misc]
    await peer.send_text(b"x" * 1001)
    await peer.until_eof()
    assert peer.protocol.close_rcvd is not None
    assert peer.protocol.close_rcvd.code == 1009


async def test_server_close_waits_for_the_peer_and_keeps_the_code(connect: Callable[..., object], hub: Hub) -> None:
    actor, peer = await connect()  # type: ignore[misc]
    actor.shutdown(1001, "server shutting down")
    assert actor.state.state is ConnectionStatus.CLOSING
    (frame,) = await peer.frames(1)
    assert frame.opcode is Opcode.CLOSE
    assert not actor.transport.is_closing()  # waiting for the client's half of the handshake
    await peer.flush()  # websockets answers the close
    await peer.until_eof()
    assert peer.protocol.close_rcvd is not None
    assert (peer.protocol.close_rcvd.code, peer.protocol.close_rcvd.reason) == (1001, "server shutting down")
    await asyncio.sleep(0.05)
    assert hub.connections == 0
    assert actor.state.state is ConnectionStatus.CLOSED


async def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer(
    connect: Callable[..., object], hub: Hub
) -> None:
    actor, peer = await connect(capacity=8)  # type: ignore[misc]
    big = "p" * 8000
    sent = 0
    while actor.state.state is ConnectionStatus.OPEN and sent < 1000:  # the kernel buffers and 64 KiB, then the outbox
        sent += 1
        actor.deliver(_event(sent, big), PayloadCache())
    assert actor.state.state is ConnectionStatus.CLOSING
    assert actor.state.slow_consumer
    assert hub.slow_consumer_closes == 1
    # Bounded: what the transport holds is its high-water mark plus a few frames, no more.
    assert actor.transport.get_write_buffer_size() <= 65536 + 9 * 8200
    frames = await peer.until_eof()
    received = [f for f in frames if f.opcode is Opcode.TEXT]
    assert [_json(f)["event_id"] for f in received] == list(range(1, len(received) + 1))  # in order, no gap
    assert len(received) < sent
    assert peer.protocol.close_rcvd is not None
    assert peer.protocol.close_rcvd.code == 4008


async def test_a_client_that_sends_without_reading_is_not_buffered_without_bound(
    connect: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket_module, "MAX_INBOUND_BYTES_PER_SECOND", 1 << 30)  # flow control, not rate, here
    actor, peer = await connect()  # type: ignore[misc]
    request = Frame(Opcode.TEXT, b'{"type":"get_stats"}').serialize(mask=True, extensions=[])
    count = 5000  # ~1.5 MB of replies: more than the socket buffers and the high-water mark
    sender = asyncio.create_task(peer.send(request * count))
    await asyncio.sleep(0.3)
    assert actor._paused
    assert actor.transport.get_write_buffer_size() < 1 << 20
    replies = await peer.frames(count, timeout=20)
    await sender
    assert len(replies) == count  # once the client reads again, every request is answered
    assert all(_json(frame)["type"] == "stats" for frame in replies)


async def test_a_flood_of_small_frames_is_closed_with_1008(connect: Callable[..., object]) -> None:
    _, peer = await connect()  # type: ignore[misc]
    pong = Frame(Opcode.PONG, b"").serialize(mask=True, extensions=[])  # no reply, so no backpressure
    await peer.send(pong * 2000)
    await peer.until_eof()
    assert peer.protocol.close_rcvd is not None
    assert peer.protocol.close_rcvd.code == 1008


async def test_many_frames_in_one_read_are_taken_in_turns_and_all_answered(connect: Callable[..., object]) -> None:
    actor, peer = await connect()  # type: ignore[misc]
    count = socket_module.FRAMES_PER_TURN * 3 + 5
    await peer.send(Frame(Opcode.TEXT, b'{"type":"ping"}').serialize(mask=True, extensions=[]) * count)
    replies = await peer.frames(count)
    assert [_json(frame)["type"] for frame in replies] == ["pong"] * count
    assert not actor.transport.is_closing()


async def test_keepalive_pings_a_quiet_peer_and_drops_a_dead_one(connect: Callable[..., object]) -> None:
    live, live_peer = await connect()  # type: ignore[misc]
    dead, dead_peer = await connect()  # type: ignore[misc]
    later = time.monotonic() + 21
    assert not live.keepalive(later, 20, 20, may_ping=False)  # the sweep's ping budget is spent: later
    assert not live.keepalive(time.monotonic(), 20, 20)  # heard from recently: nothing to do
    for actor in (live, dead):
        assert actor.keepalive(later, 20, 20)
    (ping,) = await live_peer.frames(1)
    assert ping.opcode is Opcode.PING
    await live_peer.flush()  # websockets queued the pong
    (dead_ping,) = await dead_peer.frames(1)
    assert dead_ping.opcode is Opcode.PING  # read, but never answered
    await asyncio.sleep(0.05)
    for actor in (live, dead):
        actor.keepalive(later + 21, 20, 20, may_ping=False)  # a dead peer is dropped whatever the budget
    await dead_peer.until_eof()
    assert dead_peer.protocol.close_rcvd is not None
    assert dead_peer.protocol.close_rcvd.code == CLOSE_KEEPALIVE_TIMEOUT
    assert not live.transport.is_closing()


# -- delivery order across a replay (state only: no bytes leave the actor while events are held)


async def test_events_held_during_a_replay_follow_it_in_order(connect: Callable[..., object]) -> None:
    actor, peer = await connect()  # type: ignore[misc]
    actor.hold_live_events()
    for event_id in (11, 12):
        actor.deliver(_event(event_id), PayloadCache())
    actor.finish_replay(5, [_event(6), _event(7)])
    frames = await peer.frames(4)
    assert [(_json(f)["type"], _json(f)["event_id"]) for f in frames] == [("post_created", i) for i in (6, 7, 11, 12)]


async def test_too_many_events_held_during_a_replay_become_a_resync(connect: Callable[..., object]) -> None:
    actor, peer = await connect(capacity=3)  # type: ignore[misc]
    actor.hold_live_events()
    for event_id in range(10, 16):  # six arrive, three fit
        actor.deliver(_event(event_id), PayloadCache())
    actor.finish_replay(5, [_event(6)])
    (frame,) = await peer.frames(1)
    assert _json(frame)["type"] == "resync"
