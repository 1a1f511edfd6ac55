"""The access log: line shapes, batching, level gating, and the real server's lines."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import httpx
import orjson
import pytest

from sn.access_log import FLUSH_SECONDS, MAX_BUFFERED, AccessLog
from tests.support import ServerProcess, eventually

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[\d+\] sn\.access: GET /post/feed 200 1\.5ms "
    r"request_id=abc status=200 remote=10\.0\.0\.1$"
)


@pytest.fixture
def access_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger("sn.access")
    previous = logger.level
    logger.setLevel(logging.INFO)  # what `sn serve` configures at SN_LOG_LEVEL=info
    yield logger
    logger.setLevel(previous)


def test_text_line_has_the_shape_of_every_other_log_line(access_level: logging.Logger) -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream)
    log.record("GET", "/post/feed", 200, 1.54, "abc", "10.0.0.1")  # no event loop: written at once
    assert TEXT_LINE.match(stream.getvalue().rstrip("\n")), stream.getvalue()


def test_json_line(access_level: logging.Logger) -> None:
    stream = io.StringIO()
    AccessLog("json", stream).record("PUT", "/post/update", 404, 12.0, "r-1", "127.0.0.1")
    entry = orjson.loads(stream.getvalue())
    assert entry["msg"] == "PUT /post/update 404 12.0ms"
    assert entry["logger"] == "sn.access"
    assert entry["level"] == "INFO"
    assert (entry["request_id"], entry["status"], entry["remote"]) == ("r-1", 404, "127.0.0.1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


async def test_lines_are_batched_then_written_together(access_level: logging.Logger) -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream)
    for status in (200, 201, 204):
        log.record("GET", "/x", status, 1.0, "id", "ip")
    assert stream.getvalue() == ""  # waiting for the flush timer
    await asyncio.sleep(FLUSH_SECONDS + 0.1)
    assert [line.split()[7] for line in stream.getvalue().splitlines()] == ["200", "201", "204"]


async def test_a_full_buffer_is_written_without_waiting(access_level: logging.Logger) -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream)
    path = "/" + "p" * 200
    while not stream.getvalue():
        log.record("GET", path, 200, 1.0, "id", "ip")
        assert len(stream.getvalue()) <= MAX_BUFFERED + 1024
    assert len(stream.getvalue()) >= MAX_BUFFERED  # one write of the whole buffer
    log.flush()


def test_silenced_by_the_logger_level(access_level: logging.Logger) -> None:
    access_level.setLevel(logging.WARNING)
    stream = io.StringIO()
    log = AccessLog("text", stream)
    log.record("GET", "/health", 200, 0.1, "id", "ip")
    log.flush()
    assert stream.getvalue() == ""


def test_server_logs_each_request_with_its_request_id(server: ServerProcess, client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Request-ID": "access-log-test-1"})
    request_id = response.headers["X-Request-ID"]
    assert server.log_path is not None
    line = eventually(
        lambda: next(
            (
                line
                for line in server.log_path.read_text().splitlines()  # type: ignore[union-attr]
                if f"request_id={request_id}" in line
            ),
            None,
        ),
        timeout=5,
    )
    assert " sn.access: GET /health 200 " in line
    assert "status=200 remote=127.0.0.1" in line


class _RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_batches_are_written_in_whole_lines_of_at_most_pipe_buf(access_level: logging.Logger) -> None:
    # Workers share stderr; on a pipe only writes up to 4 KiB are atomic against each other.
    stream = _RecordingStream()
    log = AccessLog("text", stream)
    for i in range(100):
        log._buffer.append(f"line {i} " + "x" * 300 + "\n")  # what record() queues, without a loop
    log.flush()
    assert len(stream.writes) > 1
    assert all(len(chunk) <= 4096 and chunk.endswith("\n") for chunk in stream.writes)
    assert stream.getvalue().splitlines() == [f"line {i} " + "x" * 300 for i in range(100)]
