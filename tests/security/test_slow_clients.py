"""Slow clients are cut off: a request head must be complete within SN_HEADER_TIMEOUT_SECONDS of
its first byte however the bytes trickle in, and a silent or idle keep-alive connection goes after
SN_KEEP_ALIVE_TIMEOUT_SECONDS, while everyone else is served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from tests.security.conftest import HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT, REQUEST_TIMEOUT, Hardened

TRICKLERS = 300
# Slack for a loaded machine (the point: bounded, where a trickler was never cut off before).
SLACK = 8.0


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(4096), limit):
            received += chunk
    return time.monotonic() - started, received


async def test_header_tricklers_are_cut_off_and_others_served(hardened: Hardened) -> None:
    async def trickle() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n")

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for index in range(100):
                    await asyncio.sleep(0.5)  # one header line every half second: never a complete head
                    writer.write(f"X-Drip-{index}: y\r\n".encode())
                    await writer.drain()

        dripping = asyncio.create_task(drip())
        try:
            return await _closed_after(reader, HEADER_TIMEOUT + 30)
        finally:
            dripping.cancel()
            writer.close()

    started = time.monotonic()
    trickling = [asyncio.create_task(trickle()) for _ in range(TRICKLERS)]
    async with httpx.AsyncClient(base_url=hardened.base_url, timeout=10) as client:
        await asyncio.sleep(0.5)
        served = await client.get("/health")  # (a new connection, while the tricklers hold theirs)
        assert served.status_code == 200
    results = await asyncio.gather(*trickling)
    elapsed = time.monotonic() - started
    assert elapsed < HEADER_TIMEOUT + SLACK + 2, elapsed
    for seconds, received in results:
        assert seconds < HEADER_TIMEOUT + SLACK, seconds
        assert received.startswith(b"HTTP/1.1 408"), received[:100]
        assert b"request head not complete within 2 s of its first byte" in received


async def test_silent_and_idle_connections_are_closed(hardened: Hardened) -> None:
    async def silent() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
        try:
            seconds, received = await _closed_after(reader, KEEP_ALIVE_TIMEOUT + 30)
            assert received == b""
            return seconds
        finally:
            writer.close()

    async def idle_after_a_request() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"keep-alive" in head.lower()
            seconds, _ = await _closed_after(reader, KEEP_ALIVE_TIMEOUT + 30)
            return seconds
        finally:
            writer.close()

    times = await asyncio.gather(*(silent() for _ in range(100)), *(idle_after_a_request() for _ in range(20)))
    assert max(times) < KEEP_ALIVE_TIMEOUT + SLACK, max(times)
    assert min(times) >= KEEP_ALIVE_TIMEOUT - 0.5, min(times)


async def test_body_tricklers_are_cut_off(hardened: Hardened) -> None:
    async def trickle() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
        writer.write(
            b"POST /login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(200):
                    await asyncio.sleep(0.5)  # a byte every half second: the body never completes
                    writer.write(b" ")
                    await writer.drain()

        dripping = asyncio.create_task(drip())
        try:
            return await _closed_after(reader, REQUEST_TIMEOUT + 60)
        finally:
            dripping.cancel()
            writer.close()

    results = await asyncio.gather(*(trickle() for _ in range(50)))
    for seconds, received in results:
        assert seconds < REQUEST_TIMEOUT + SLACK, seconds
        assert received.startswith(b"HTTP/1.1 408"), received[:100]
        assert f"request body not complete within {REQUEST_TIMEOUT} s".encode() in received
