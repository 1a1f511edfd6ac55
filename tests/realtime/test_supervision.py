"""Supervised loops: outages are waited out, crashes make the worker unready, and a critical loop
that gives up ends the worker, which the manager replaces (real server, a Redis of the test's own)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from sn.realtime.restart_policy import RestartPolicy
from sn.realtime.stats import WORKERS_KEY
from sn.realtime.supervision import SupervisedLoop, is_outage
from tests.private_services import PrivateRedis
from tests.support import ServerProcess, eventually


async def test_an_outage_is_waited_out_however_long_it_lasts() -> None:
    attempts = 0

    async def body() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 4:  # more outages than the policy allows crashes
            raise ConnectionRefusedError("dependency down")

    loop = SupervisedLoop("waits", body, policy=RestartPolicy(max_restarts=1, window=60))
    loop.start()
    await asyncio.wait_for(loop._task, 30)  # type: ignore[arg-type]
    assert attempts == 5
    assert not loop.failed
    # Unready while it waited; ready again a few seconds after (the window is not held against it).
    assert loop.status() == "waiting for a dependency: ConnectionRefusedError: dependency down"
    loop._waiting_until -= 3
    assert loop.status() == "ok"


async def test_a_loop_that_keeps_crashing_reports_itself_then_gives_up() -> None:
    gave_up: list[str] = []

    async def body() -> None:
        raise ValueError("a bug")

    loop = SupervisedLoop(
        "buggy", body, policy=RestartPolicy(max_restarts=3, window=60), critical=True, on_give_up=gave_up.append
    )
    assert loop.status() == "ok"
    loop.start()
    await asyncio.wait_for(loop._task, 30)  # type: ignore[arg-type]
    assert loop.failed
    assert loop.status() == "failed: ValueError: a bug"
    assert gave_up == ["buggy"]


def test_outages_are_told_from_bugs() -> None:
    assert is_outage(redis.exceptions.ConnectionError("reset"))
    assert is_outage(redis.exceptions.BusyLoadingError("loading"))
    assert is_outage(TimeoutError())
    assert not is_outage(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not is_outage(ValueError("bug"))


@pytest.fixture
def one_worker(server_env: dict[str, str]) -> Iterator[tuple[ServerProcess, PrivateRedis]]:
    with PrivateRedis() as own:
        env = {
            **server_env,
            "SN_REDIS_URL": own.url(0),
            "SN_BUS_PREFIX": f"sup{uuid.uuid4().hex[:8]}",
            # Crashes at about 0, 0.2, 0.6, 1.4, 3 and 6 s: /ready is seen 503 before it gives up.
            "SN_LOOP_MAX_RESTARTS": "5",
        }
        server = ServerProcess(env, workers=1).start()
        try:
            yield server, own
        finally:
            server.stop()


@pytest.mark.slow
def test_a_critical_loop_that_gives_up_ends_the_worker_and_a_fresh_one_serves(
    one_worker: tuple[ServerProcess, PrivateRedis],
) -> None:
    server, own = one_worker
    store = own.client()
    stream = eventually(lambda: next(iter(store.hkeys(WORKERS_KEY)), None)).decode()
    # A key of the wrong type where the router's stream is: every read and every attempt to
    # recreate the group fails with WRONGTYPE, which no retry fixes (a bug-like failure).
    store.delete(stream)
    store.set(stream, "not a stream")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        def unready_naming_the_router() -> bool:
            response = client.get("/ready")
            return response.status_code == 503 and "loop:router" in response.json()["checks"]

        eventually(unready_naming_the_router, timeout=10, interval=0.1)
        metrics = client.get("/metrics").text
        assert re.search(r'sn_loop_failing\{loop="router"\} 1\.0', metrics), metrics

        log_path = server.log_path
        assert log_path is not None
        eventually(lambda: "critical loop router gave up" in log_path.read_text(), timeout=20)
        store.delete(stream)  # the fault is gone: the replacement worker's router can start
        # The manager started a fresh worker, and it serves (ready, its loops all ok).
        eventually(lambda: log_path.read_text().count("worker ready") >= 2, timeout=30)
        eventually(lambda: client.get("/ready").status_code == 200, timeout=20, interval=0.2)
        assert server.proc is not None
        assert server.proc.poll() is None
        pids = set(re.findall(r"Starting worker \[(\d+)\]", log_path.read_text()))
        assert len(pids) == 2
    store.close()
