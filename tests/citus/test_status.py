"""The cluster status report (sn/citus/status.py) on a real Citus cluster (marked `citus`). The single-node
report is checked through GET /admin/cluster/status in tests/api/test_admin.py."""

from __future__ import annotations

import asyncpg
import pytest

from sn.citus import hot_users, plan
from sn.citus.status import cluster_status
from tests.citus import helpers


@pytest.mark.citus
async def test_cluster_status_on_citus(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    star = await helpers.make_user(pool, posts=1)
    await hot_users.promote(conn, star)
    status = await cluster_status(conn)
    assert status["mode"] == "citus"
    assert status["problems"] == []
    roles = sorted(node["role"] for node in status["nodes"])
    assert roles == ["coordinator", "hot", "worker", "worker"]
    assert all(node["reachable"] and node["active"] for node in status["nodes"])
    hot_node = next(node for node in status["nodes"] if node["role"] == "hot")
    assert (hot_node["host"], hot_node["port"]) == helpers.hot()
    assert hot_node["should_have_shards"] is True
    assert hot_node["shard_bytes"] > 0
    item = next(item for item in status["hot_users"] if item["user_id"] == str(star))
    assert item["on_hot_worker"]
    assert item["isolated"]
    assert item["node"] == "{}:{}".format(*helpers.hot())
    tables = {table["name"]: table for table in status["tables"]}
    assert tables["posts"]["colocated_with"] == ["followers", "friendships", "users"]
    assert tables["outbox"]["type"] == "local"
    assert status["rebalance_strategy"]["name"] == plan.STRATEGY
