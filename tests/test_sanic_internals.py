"""sn.sanic_internals: the installed Sanic is of a tested series; the connection protocol serves
keep-alive and closing connections and, with the cyclic collector off, leaves no Sanic ``Http``
object behind once they end; SIGTERM to the real `sn serve` manager, during start-up and after,
stops it without its being killed (the manager patches).

(The cycle it breaks showed up in the server under the isolation benchmark's load, found with a
``gc.callbacks`` probe. This simple app does not build it with
Sanic's stock protocol either, so the test checks our protocol's behaviour, not the contrast.)"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sanic import Sanic, text
from sanic.http.http1 import Http
from sanic.server.protocols.http_protocol import HttpProtocol

from sn import sanic_internals
from sn.sanic_internals import TESTED_SANIC_SERIES, ConnectionProtocol, check_sanic_version, sanic_series
from tests.support import FAST_HASHING, ROOT, free_port, kill_session


def test_the_installed_sanic_is_of_a_tested_series() -> None:
    # Every workaround in sn.sanic_internals reads or patches Sanic's private API as of these
    # series. An upgrade fails here until each one has been re-checked and the series added.
    assert sanic_series(sanic_internals.installed_sanic_version()) in TESTED_SANIC_SERIES
    assert check_sanic_version()


def test_an_untested_sanic_series_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sanic_internals, "installed_sanic_version", lambda: "26.3.0")
    with caplog.at_level(logging.WARNING, logger="sn.sanic_internals"):
        assert not check_sanic_version()
    assert "Sanic 26.3.0 is not of a tested series (25.12)" in caplog.text
    assert sanic_series("25.12.1") == "25.12"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _live_http_objects_after_requests(protocol: type[HttpProtocol], count: int) -> int:
    Sanic.test_mode = True
    app = Sanic(f"t{uuid.uuid4().hex[:8]}")

    @app.get("/")
    async def index(request: object) -> object:
        return text("ok")

    port = _free_port()
    server = await app.create_server(
        host="127.0.0.1", port=port, protocol=protocol, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    await server.startup()
    try:
        for _ in range(count):
            # A keep-alive connection the client closes after its response, while the server waits
            # for the next request: what most clients do.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\nok")).startswith(b"HTTP/1.1 200")
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.1)  # the server's side of each connection has ended
        return sum(1 for obj in gc.get_objects() if isinstance(obj, Http))
    finally:
        await server.close()


async def test_finished_connections_are_freed_without_the_cyclic_collector() -> None:
    gc.collect()
    gc.disable()
    try:
        live = await _live_http_objects_after_requests(ConnectionProtocol, 20)
    finally:
        gc.enable()
        gc.collect()
    assert live == 0


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A "PostgreSQL" that completes TCP handshakes (the kernel does, from the listen backlog) and
    never answers: a worker's start-up hangs on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/sn"


@pytest.mark.slow
def test_sigterm_while_workers_are_still_starting(silent_database: str, redis_url: str, tmp_path: Path) -> None:
    # Sanic's manager waits for every worker's start-up acknowledgement before it handles
    # anything; a SIGTERM in that window used to be re-queued forever (a busy loop) while the
    # worker hung. It must stop the server promptly instead.
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        **FAST_HASHING,
        "SN_DATABASE_URL": silent_database,
        "SN_REDIS_URL": redis_url,
        "SN_JWT_SECRET": "x" * 40,
        "SN_HOST": "127.0.0.1",
        "SN_PORT": str(free_port()),
        "SN_WORKERS": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sn", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "Starting worker" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # the worker is now stuck connecting to the silent database
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while proc.poll() is None:
            assert time.monotonic() - started < 15, "the manager did not stop:\n" + log_path.read_text()[-3000:]
            time.sleep(0.1)
        text = log_path.read_text(errors="replace")
        assert "Received signal SIGTERM. Shutting down." in text
        assert "Killing" not in text  # stopped by the shutdown, not escalated to SIGKILL
    finally:
        if proc.poll() is None:
            kill_session(proc)
