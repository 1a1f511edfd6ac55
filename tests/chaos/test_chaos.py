"""The short form of `make chaos`: two faults, few users, the same driver and the same targets."""

from __future__ import annotations

import os

import pytest

from tests.chaos.driver import run, table
from tests.support import port_open

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
async def test_redis_empty_restart_and_worker_sigkill_lose_nothing(postgres_admin_url: str) -> None:
    amqp = os.environ.get("SN_TEST_AMQP_URL")
    if amqp is None and port_open("127.0.0.1", 5672):
        amqp = "amqp://guest:guest@127.0.0.1:5672/"
    rows = await run(
        ["redis-restart-empty", "worker-sigkill"],
        postgres_admin_url=postgres_admin_url,
        amqp_url=amqp,
        users=5,
        tabs=2,
        follows=3,
        rate=4.0,
        report=lambda _: None,
    )
    assert [row.fault for row in rows] == ["redis-restart-empty", "worker-sigkill"]
    assert all(row.committed > 0 for row in rows), table(rows)
    assert all(row.met for row in rows), table(rows)
    # The Redis fault really lost the log: every tab was told to refetch.
    assert rows[0].resyncs >= 10, table(rows)
