"""A second `sn serve` with small limits and timeouts, the monitoring listener, a narrowed CORS list
and a trusted proxy (so tests choose their client address with X-Forwarded-For).

It shares the session's database and Redis: users registered through the session server exist here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support import ServerProcess, free_port

HEADER_TIMEOUT = 2.0
KEEP_ALIVE_TIMEOUT = 3.0
REQUEST_TIMEOUT = 6
PER_USER = 3
PER_ADDRESS = 5
PER_WORKER = 8
CONNECT_RATE = 12
ALLOWED_ORIGIN = "https://app.example"


@dataclass
class Hardened:
    server: ServerProcess
    monitoring_port: int

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def monitoring_url(self) -> str:
        return f"http://127.0.0.1:{self.monitoring_port}"


@pytest.fixture(scope="session")
def hardened(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    monitoring_port = free_port()
    env = {
        **server_env,
        "SN_BUS_PREFIX": f"snsec{uuid.uuid4().hex[:8]}",
        "SN_PROXIES_COUNT": "1",
        "SN_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "SN_KEEP_ALIVE_TIMEOUT_SECONDS": str(KEEP_ALIVE_TIMEOUT),
        "SN_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        "SN_WS_MAX_PER_USER": str(PER_USER),
        "SN_WS_MAX_PER_ADDRESS": str(PER_ADDRESS),
        "SN_WS_MAX_PER_WORKER": str(PER_WORKER),
        "SN_WS_CONNECT_RATE": str(CONNECT_RATE),
        "SN_MONITORING_ACCESS": "listen",
        "SN_MONITORING_LISTEN": f"127.0.0.1:{monitoring_port}",
        "SN_CORS_ORIGINS": ALLOWED_ORIGIN,
    }
    proc = ServerProcess(env, workers=2, log_path=tmp_path_factory.mktemp("hardened") / "server.log")
    proc.start()
    yield Hardened(proc, monitoring_port)
    proc.stop()
    # Both workers finished their shutdown (with the monitoring listener too) instead of being killed.
    assert proc.log_path is not None
    assert proc.log_path.read_text(errors="replace").count("Worker complete") == 2, proc.log_tail()


@pytest.fixture(scope="session")
def hardened_client(hardened: Hardened) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hardened.base_url, timeout=10) as http:
        yield http


def address() -> str:
    """A client address of a test's own (the server trusts one proxy's X-Forwarded-For)."""
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2] or 1}"
