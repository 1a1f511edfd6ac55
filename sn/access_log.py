"""The access log: one line per request, in the same text or JSON shape as every other log line.

Going through `logging` cost ~10% of a cached feed read's worker CPU (a LogRecord, the
formatter walking the record's attributes, a locked write and a flush per request), as much
as the Redis call. Here a line is formatted straight from the request's fields and lines are
written in batches: at most every `FLUSH_SECONDS`, or at once when `MAX_BUFFERED` bytes wait
(nginx's ``access_log ... buffer= flush=`` trade-off). The ``sn.access`` logger's level still
decides whether lines are written (SN_LOG_LEVEL=WARNING silences it) and `flush()` runs when the
worker stops, so nothing is lost on a clean shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TextIO

import orjson

FLUSH_SECONDS = 0.2
MAX_BUFFERED = 64 * 1024
_ATOMIC_WRITE = 4096  # PIPE_BUF on Linux

_logger = logging.getLogger("sn.access")


class AccessLog:
    def __init__(self, log_format: str, stream: TextIO | None = None) -> None:
        self._json = log_format == "json"
        self._stream = stream
        self._pid = os.getpid()
        self._buffer: list[str] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def record(self, method: str, path: str, status: int, duration_ms: float, request_id: str, remote: str) -> None:
        if not _logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        message = f"{method} {path} {status} {duration_ms:.1f}ms"
        if self._json:
            line = orjson.dumps(
                {
                    "ts": self._timestamp(now, iso=True),
                    "level": "INFO",
                    "logger": "sn.access",
                    "msg": message,
                    "request_id": request_id,
                    "status": status,
                    "remote": remote,
                }
            ).decode()
        else:
            line = (
                f"{self._timestamp(now, iso=False)} INFO [{self._pid}] sn.access: {message} "
                f"request_id={request_id} status={status} remote={remote}"
            )
        self._buffer.append(line + "\n")
        self._buffered += len(line) + 1
        if self._buffered >= MAX_BUFFERED:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write now
                self.flush()

    def _timestamp(self, now: float, *, iso: bool) -> str:
        # strftime once a second; the milliseconds are appended per line.
        second = int(now)
        if second != self._second:
            self._second = second
            # As the other lines: JSON in UTC, text in local time like logging's asctime.
            self._stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                if iso
                else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            )
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if iso else f"{self._stamp},{millis:03d}"

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        self._buffered = 0
        stream = self._stream or sys.stderr  # looked up late: tests and tools swap sys.stderr
        try:
            # Workers share stderr; when it is a pipe (Docker, systemd) only writes up to PIPE_BUF
            # (4 KiB) are atomic, so batches are written in whole lines of at most that size, and
            # a line from another worker never lands inside one of ours.
            chunk: list[str] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > _ATOMIC_WRITE:
                    stream.write("".join(chunk))
                    stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                stream.write("".join(chunk))
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail requests
            pass
