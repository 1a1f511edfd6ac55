"""`sn ws-client` end to end: the CLI as a user runs it, against the session's real server."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sn.dev.wsclient import percentile, post_id_of, ws_url
from tests.support import ROOT, ServerProcess

pytestmark = pytest.mark.slow


def ws_client(server: ServerProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sn", "ws-client", "--base-url", server.base_url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def number(pattern: str, out: str) -> int:
    found = re.search(pattern, out)
    assert found is not None, f"{pattern!r} not in:\n{out}"
    return int(found.group(1))


def test_simple_mode_prints_the_post_frame(server: ServerProcess) -> None:
    result = ws_client(server, "--mode", "simple")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    post_id = re.search(r"POST /post/create -> (\d+)", out)
    assert post_id is not None, out
    assert "<- system" in out
    assert "<- post_created" in out
    assert f'"post_id": "{post_id.group(1)}"' in out
    assert "<- pong" in out
    assert re.search(r"OK: post \d+ arrived [\d.]+ ms after the POST started", out), out
    assert "token=…" in out  # the token itself is not printed


def test_simple_mode_on_the_otus_channel(server: ServerProcess) -> None:
    result = ws_client(server, "--mode", "simple", "--channel", "otus")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    post_id = re.search(r"POST /post/create -> (\d+)", out)
    assert post_id is not None, out
    assert "/post/feed/posted?token=…" in out
    assert "<- system" not in out  # only posts arrive unasked on that channel
    assert f'"postId": "{post_id.group(1)}"' in out
    assert '"data"' not in out.split("<- post_created", 1)[1].split("<- pong", 1)[0]
    assert re.search(r"OK: post \d+ arrived", out), out


def test_multi_mode_delivers_everything(server: ServerProcess) -> None:
    result = ws_client(server, "--mode", "multi", "--clients", "3", "--duration", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    posts = number(r"posts made:\s+(\d+)", out)
    expected = number(r"deliveries expected:\s+(\d+)", out)
    received = re.search(r"deliveries received:\s+(\d+) \(lost (\d+), duplicates (\d+)", out)
    assert received is not None, out
    assert posts > 0
    assert expected == posts * 2  # each post reaches the two other users
    assert (int(received.group(1)), int(received.group(2))) == (expected, 0)
    assert re.search(r"latency ms .*p50 [\d.]+ +p90 [\d.]+ +p99 [\d.]+ +max [\d.]+", out), out
    assert re.search(r"errors:\s+0", out), out
    assert "OK: every delivery arrived" in out


def test_unreachable_server_is_a_setup_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sn", "ws-client", "--base-url", "http://127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "POST /user/register" in result.stderr


def test_ws_url_and_percentile() -> None:
    assert ws_url("https://example.com/api/", "7", "a b", since=5) == "wss://example.com/api/ws/7?token=a%20b&since=5"
    assert ws_url("http://127.0.0.1:9000", "7", "t") == "ws://127.0.0.1:9000/ws/7?token=t"
    otus = ws_url("http://h:1/p", "7", "t", since=3, channel="otus")
    assert otus == "ws://h:1/p/post/feed/posted?token=t&since=3"
    assert post_id_of({"type": "post_created", "event_id": 1, "postId": "9", "postText": "x"}) == "9"
    assert post_id_of({"type": "post_created", "event_id": 1, "data": {"post_id": "8"}}) == "8"
    assert post_id_of({"type": "pong", "data": {"timestamp": 1.0}}) is None
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (50.0, 99.0, 0.0)
