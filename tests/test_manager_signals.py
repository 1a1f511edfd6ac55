"""SIGTERM to the real `sn serve` manager: during start-up and after, it stops without being killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FAST_HASHING, ROOT, free_port, kill_session

pytestmark = pytest.mark.slow


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A "PostgreSQL" that completes TCP handshakes (the kernel does, from the listen backlog) and
    never answers: a worker's start-up hangs on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/sn"


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
