"""Dependencies a test owns outright, to break them: a Redis server of its own on a free port.

Never the machine's shared services: a test that kills, flushes or restarts Redis does it to one
of these (see helper rules and tests/proxy.py for cutting the network instead).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support import free_port


class PrivateRedis:
    """``redis-server`` without persistence on a port of its own: ``kill`` + ``start`` is a Redis
    that restarted empty, at the same address."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix=f"sn-test-redis-{self.port}-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        log = (self._dir / "redis.log").open("ab")
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(
            [binary, *options, "--dir", str(self._dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as probe:
                    probe.ping()
                return self
            except redis.RedisError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the data set is gone with the process (no persistence)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
