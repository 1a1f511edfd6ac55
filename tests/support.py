"""Test support: locate real PostgreSQL/Redis, run the real server as a subprocess, a typed client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

if TYPE_CHECKING:
    from sn.storage.redis_mux import MuxRedis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_sql(url: str, sql: str) -> None:
    """One statement on its own connection, from synchronous fixture code (CREATE/DROP DATABASE)."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# Argon2 at its production cost makes a suite that registers hundreds of users slow; the cost
# parameters are settings, and what the tests check (hash, verify, reject) does not depend on them.
FAST_HASHING = {"SN_ARGON2_MEMORY_KIB": "8192", "SN_ARGON2_TIME_COST": "1"}


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started with ``start_new_session`` together with every child it spawned."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class ServerProcess:
    """`sn serve` in a subprocess on a free port: the real multi-worker server."""

    env: dict[str, str]
    workers: int = 2
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {**os.environ, **FAST_HASHING, **self.env}
        env.update({"SN_PORT": str(self.port), "SN_HOST": "127.0.0.1", "SN_WORKERS": str(self.workers)})
        self.log_path = self.log_path or Path(f"/tmp/sn-test-server-{self.port}.log")
        log = self.log_path.open("wb")
        # A session of its own: Sanic's manager escalates a second shutdown signal or a worker that
        # misses its startup ack with killpg(SIGKILL) on the workers' process group, which without
        # this is pytest's own group (and make's, and CI's shell).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sn", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/ready", timeout=1).status_code == 200 and self._all_workers_up():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log_tail()}")

    def _all_workers_up(self) -> bool:
        # Sanic starts workers one by one; count distinct worker PIDs answering /health... not
        # observable over HTTP, so wait for each worker's "worker ready" line in the log instead.
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace").count("worker ready") >= self.workers

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                kill_session(self.proc)


@dataclass
class User:
    id: str
    token: str
    first_name: str
    second_name: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def user_payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "first_name": "Test",
        "second_name": "User" + uuid.uuid4().hex[:8],
        "birthdate": "1990-05-17",
        "password": "correct horse",
        "city": "Moscow",
        "biography": "Reading, hiking",
    }
    body.update(overrides)
    return body


def register(client: httpx.Client, **overrides: Any) -> User:
    body = user_payload(**overrides)
    response = client.post("/user/register", json=body)
    assert response.status_code == 200, response.text
    user_id = response.json()["user_id"]
    login = client.post("/login", json={"id": user_id, "password": body["password"]})
    assert login.status_code == 200, login.text
    return User(user_id, login.json()["token"], body["first_name"], body["second_name"])


def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `check()` until it returns a truthy value (the pipeline is asynchronous by design)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {result!r})")
        time.sleep(interval)


def admin_token(secret: str, user_id: str, *, ttl: int = 3600) -> str:
    """An admin token for an existing user (the server refuses tokens of users that do not exist)."""
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl, "admin": True}, secret, algorithm="HS256")


async def forget_test_streams(mux: MuxRedis) -> None:
    """Drop the made-up workers a test registered in the presence registry (streams not named as a
    server names them, sn:rt:stream:<node>:<worker>, or named sn:rt:stream:test:…).

    Their online sets live for the presence ttl: meanwhile /stats of the suite's server, sharing the
    database, counts their users among the online ones (tests/api/test_ws.py compares that count with
    its workers' own)."""
    from sn.realtime.presence import STREAMS_KEY, Presence

    presence = Presence(mux)
    for raw in await mux.execute("SMEMBERS", STREAMS_KEY):
        stream = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not stream.startswith("sn:rt:stream:") or stream.startswith("sn:rt:stream:test:"):
            await presence.forget_worker(stream)
