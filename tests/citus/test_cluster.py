"""`sn cluster init` and `sn hot` on plain PostgreSQL (what CI runs): single-node, idempotent, no Citus
needed. The Citus side is in test_citus.py (marked `citus`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from sn.citus import cluster
from tests import citus_support
from tests.support import ROOT, run_sql

plain_only = pytest.mark.skipif(
    citus_support.rest_on_citus(),
    reason="plain-PostgreSQL behaviour; with SN_TEST_REST_ON_CITUS=1 the admin database is a Citus coordinator",
)


def _with_database(url: str, name: str) -> str:
    return citus_support.with_database(url, name)


@pytest.fixture
def empty_database(postgres_admin_url: str) -> Iterator[str]:
    """A database with nothing in it: `sn cluster init` has to create the whole schema."""
    name = f"sn_test_cluster_{uuid.uuid4().hex[:10]}"

    run_sql(postgres_admin_url, f'CREATE DATABASE "{name}"')
    yield _with_database(postgres_admin_url, name)
    run_sql(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sn(database_url: str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SN_CITUS")}
    env.update(settings)
    env["SN_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "sn", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@plain_only
def test_cluster_init_on_plain_postgres_says_single_node_and_is_idempotent(empty_database: str) -> None:
    first = _sn(empty_database, "cluster", "init")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("mode: single-node\n"), first.stdout
    assert "single-node PostgreSQL: " in first.stdout  # with the reason: not installed / not preloaded
    assert "migrations: " in first.stdout
    assert "migrations: 0 applied" not in first.stdout

    second = _sn(empty_database, "cluster", "init")
    assert second.returncode == 0, second.stderr
    assert "mode: single-node" in second.stdout
    assert "migrations: 0 applied" in second.stdout

    async def check() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            tables = {r["relname"] for r in await conn.fetch("SELECT relname FROM pg_class WHERE relkind = 'r'")}
            assert {"users", "posts", "hot_users", "outbox"} <= tables
            assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
        finally:
            await conn.close()

    asyncio.run(check())


@plain_only
def test_citus_settings_without_citus_are_reported_not_fatal(empty_database: str) -> None:
    done = _sn(empty_database, "cluster", "init", SN_CITUS_WORKERS="127.0.0.1:1,127.0.0.1:2", SN_CITUS_HOT_WORKER="h:3")
    assert done.returncode == 0, done.stderr
    assert "ignored without Citus" in done.stdout


@plain_only
def test_malformed_worker_list_is_a_configuration_error(empty_database: str) -> None:
    done = _sn(empty_database, "cluster", "init", SN_CITUS_WORKERS="host:notaport")
    assert done.returncode == 2
    assert "SN_CITUS_WORKERS" in done.stderr


@plain_only
def test_hot_promote_and_demote_on_single_node_record_the_hot_set(empty_database: str) -> None:
    assert _sn(empty_database, "cluster", "init").returncode == 0

    async def add_user() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await conn.execute(
                "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash)"
                " VALUES (42, 'Lady', 'Gaga', '1986-03-28', 'New York', 'x')"
            )
        finally:
            await conn.close()

    asyncio.run(add_user())
    promoted = _sn(empty_database, "hot", "promote", "42")
    assert promoted.returncode == 0, promoted.stderr
    assert "user 42: recorded (single-node)" in promoted.stdout
    missing = _sn(empty_database, "hot", "promote", "43")
    assert missing.returncode == 1
    assert "user 43 not found" in missing.stderr

    async def hot_set() -> list[int]:
        conn = await asyncpg.connect(empty_database)
        try:
            return await cluster.hot_user_ids(conn)
        finally:
            await conn.close()

    assert asyncio.run(hot_set()) == [42]
    demoted = _sn(empty_database, "hot", "demote", "42")
    assert demoted.returncode == 0, demoted.stderr
    assert "user 42: demoted (single-node)" in demoted.stdout
    assert asyncio.run(hot_set()) == []
    again = _sn(empty_database, "hot", "demote", "42")
    assert "user 42: not hot" in again.stdout


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("db1:5432", cluster.NodeAddress("db1", 5432)),
        ("10.0.0.7", cluster.NodeAddress("10.0.0.7", 5432)),
        ("[::1]:6000", cluster.NodeAddress("::1", 6000)),
        (" citus-worker-hot:5433 ", cluster.NodeAddress("citus-worker-hot", 5433)),
    ],
)
def test_parse_node(raw: str, expected: cluster.NodeAddress) -> None:
    assert cluster.parse_node(raw) == expected


@pytest.mark.parametrize("raw", ["", "host:", "host:0", "host:99999", "a'b:5432", "host:12a"])
def test_parse_node_rejects(raw: str) -> None:
    with pytest.raises(cluster.ClusterError):
        cluster.parse_node(raw)


def test_parse_nodes_list() -> None:
    assert cluster.parse_nodes("a:1, b:2,,") == [cluster.NodeAddress("a", 1), cluster.NodeAddress("b", 2)]
    assert cluster.parse_nodes(None) == []
