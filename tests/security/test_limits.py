"""WebSocket connection limits on the hardened server: per user and per client address across
both workers (Redis), per worker, and the connect rate; each refusal distinct and clear."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.security.conftest import CONNECT_RATE, PER_ADDRESS, PER_USER, PER_WORKER, Hardened, address
from tests.support import User, register


@dataclass
class Handshake:
    status: int
    headers: dict[str, str]
    body: bytes
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None


@dataclass
class Sockets:
    port: int
    open: list[Handshake] = field(default_factory=list)

    async def upgrade(self, user: User | None, client_address: str, *, token: str | None = None) -> Handshake:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        token = token if token is not None else (user.token if user else "x")
        writer.write(
            f"GET /post/feed/posted?token={token} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client_address}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if status == 101:
            shake = Handshake(status, headers, b"", writer, reader)
            self.open.append(shake)
            return shake
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        writer.close()
        return Handshake(status, headers, body)

    async def close(self, shake: Handshake) -> None:
        assert shake.writer is not None
        shake.writer.close()
        with contextlib.suppress(Exception):
            await shake.writer.wait_closed()
        self.open.remove(shake)

    async def close_all(self) -> None:
        for shake in list(self.open):
            await self.close(shake)


@pytest.fixture
async def sockets(hardened: Hardened) -> AsyncIterator[Sockets]:
    pool = Sockets(hardened.port)
    yield pool
    await pool.close_all()
    await asyncio.sleep(0.5)  # (the server gives the counts back in a batch)


@pytest.fixture
def users(client: httpx.Client) -> list[User]:
    # Fresh users (and addresses) per test: no count of another test's sockets, in any order.
    return [register(client) for _ in range(PER_WORKER + 2)]


async def test_per_user_limit_holds_across_workers(sockets: Sockets, users: list[User]) -> None:
    user = users[0]
    for _ in range(PER_USER):
        assert (await sockets.upgrade(user, address())).status == 101
    # New TCP connections land on either worker: each must see the user's count in Redis.
    for _ in range(6):
        refused = await sockets.upgrade(user, address())
        assert refused.status == 429, refused
        assert refused.headers["retry-after"] == "10"
        assert refused.body.decode() == (
            f'{{"message":"too many websocket connections for this user: {PER_USER} open, limit {PER_USER}"}}'
        )
    # A closed socket gives its slot back.
    await sockets.close(sockets.open[0])
    deadline = time.monotonic() + 10
    while (again := await sockets.upgrade(user, address())).status != 101:
        assert again.status == 429
        assert time.monotonic() < deadline, "the closed socket's slot never came back"
        await asyncio.sleep(0.2)


async def test_per_address_limit_uses_the_forwarded_address(sockets: Sockets, users: list[User]) -> None:
    crowded = address()
    for user in users[:PER_ADDRESS]:
        assert (await sockets.upgrade(user, crowded)).status == 101
    refused = await sockets.upgrade(users[PER_ADDRESS], crowded)
    assert refused.status == 429
    assert b"for this client address" in refused.body
    assert refused.headers["retry-after"]
    # Another address (the next proxy hop's X-Forwarded-For) is not affected.
    assert (await sockets.upgrade(users[PER_ADDRESS], address())).status == 101


async def test_per_worker_limit(sockets: Sockets, users: list[User]) -> None:
    refusals = []
    accepted = 0
    for user in users[:PER_WORKER]:
        for _ in range(PER_USER):
            shake = await sockets.upgrade(user, address())
            if shake.status == 101:
                accepted += 1
            else:
                refusals.append(shake)
    assert accepted <= 2 * PER_WORKER
    assert refusals, "two workers took more sockets than their limits allow"
    for refusal in refusals:
        assert refusal.status == 503
        assert refusal.headers["retry-after"] == "5"
        assert b"websocket capacity of this worker" in refusal.body


async def test_connect_rate_per_address(sockets: Sockets) -> None:
    hammering = address()
    statuses = [
        (await sockets.upgrade(None, hammering, token="not-a-token")).status for _ in range(2 * CONNECT_RATE + 2)
    ]
    # Counted before the token is checked: the first ones are 401, then 429 (a window boundary
    # in between allows at most one more window's worth).
    assert statuses.count(429) >= 2, statuses
    assert statuses.count(401) <= 2 * CONNECT_RATE
    refused = await sockets.upgrade(None, hammering, token="not-a-token")
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert b"rate limit exceeded for ws-connect" in refused.body
