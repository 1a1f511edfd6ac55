"""`sn cluster init` (sn/citus/provision.py): on plain PostgreSQL, single-node and idempotent (what CI runs); on
a real Citus cluster (marked `citus`, see tests/citus_support.py), the nodes, the distribution plan, and a
migration meeting distributed tables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from sn.citus import plan
from sn.citus.provision import InitResult
from sn.storage.migrations import apply_migrations
from sn.storage.users import UserRepository
from tests.citus import helpers
from tests.support import ROOT


@helpers.plain_only
def test_cluster_init_on_plain_postgres_says_single_node_and_is_idempotent(empty_database: str) -> None:
    first = helpers.sn(empty_database, "cluster", "init")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("mode: single-node\n"), first.stdout
    assert "single-node PostgreSQL: " in first.stdout  # with the reason: not installed / not preloaded
    assert "migrations: " in first.stdout
    assert "migrations: 0 applied" not in first.stdout

    second = helpers.sn(empty_database, "cluster", "init")
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


@helpers.plain_only
def test_citus_settings_without_citus_are_reported_not_fatal(empty_database: str) -> None:
    done = helpers.sn(
        empty_database, "cluster", "init", SN_CITUS_WORKERS="127.0.0.1:1,127.0.0.1:2", SN_CITUS_HOT_WORKER="h:3"
    )
    assert done.returncode == 0, done.stderr
    assert "ignored without Citus" in done.stdout


@helpers.plain_only
def test_malformed_worker_list_is_a_configuration_error(empty_database: str) -> None:
    done = helpers.sn(empty_database, "cluster", "init", SN_CITUS_WORKERS="host:notaport")
    assert done.returncode == 2
    assert "SN_CITUS_WORKERS" in done.stderr


# -- on Citus -----------------------------------------------------------------------------------------------


@pytest.mark.citus
def test_cluster_init_twice(citus_db: tuple[str, InitResult]) -> None:
    url, first = citus_db
    assert helpers.TARGET is not None
    assert first.mode == "citus"
    assert "distributed users by id (own colocation group)" in first.lines
    assert "distributed posts by author_id (colocated with users)" in first.lines
    assert "made hot_users a reference table" in first.lines
    assert any(line.startswith("added hot worker") for line in first.lines)
    # The second run is the real command, as an operator would run it again.
    env = {
        **os.environ,
        "SN_DATABASE_URL": url,
        "SN_CITUS_WORKERS": ",".join(map(str, helpers.TARGET.workers)),
        "SN_CITUS_HOT_WORKER": str(helpers.TARGET.hot),
    }
    second = subprocess.run(
        [sys.executable, "-m", "sn", "cluster", "init"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    out = second.stdout
    assert out.startswith("mode: citus\n")
    assert "migrations: 0 applied" in out
    assert "users already distributed by id" in out
    assert "hot_users already a reference table" in out
    assert "rebalance strategy sn_hot_pinned already the default" in out
    assert "added" not in out
    assert "distributed users by" not in out
    assert "WARNING" not in out


@pytest.mark.citus
async def test_tables_are_distributed_and_colocated_as_planned(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT logicalrelid::regclass::text AS name, partmethod::text AS method, repmodel::text AS model,"
        " colocationid, column_to_column_name(logicalrelid, partkey) AS col FROM pg_dist_partition"
    )
    tables = {row["name"]: row for row in rows}
    for spec in plan.DISTRIBUTED:
        assert tables[spec.name]["method"] == "h", spec.name
        assert tables[spec.name]["col"] == spec.column, spec.name
    group = tables["users"]["colocationid"]
    assert {tables[name]["colocationid"] for name in ("friendships", "followers", "posts")} == {group}
    own = [tables[name]["colocationid"] for name in ("post_index", "user_emails", "dialog_messages")]
    assert len(set(own)) == 3
    assert group not in own
    assert tables["hot_users"]["method"] == "n"
    assert tables["hot_users"]["model"] == "t"
    assert "outbox" not in tables
    assert "schema_migrations" not in tables
    strategy = await conn.fetchrow("SELECT name FROM pg_dist_rebalance_strategy WHERE default_strategy")
    assert strategy is not None
    assert strategy["name"] == plan.STRATEGY


@pytest.mark.citus
async def test_name_keys_migration_on_distributed_users_and_search(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Migration 0004 as an existing cluster meets it: users already distributed, rows without
    keys; the columns are added on every shard, the rows backfilled, colocation unchanged."""
    before = await conn.fetchval("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass")
    await conn.execute("DROP INDEX users_name_key_idx")
    await conn.execute("ALTER TABLE users DROP COLUMN first_name_key, DROP COLUMN second_name_key")
    await conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    ids = [helpers.ids.next_id() for _ in range(3)]
    names = [("Анна", "Петрова"), ("Σοφία", "Νικολάου"), ("Émile", "Zoë")]
    for user_id, (first, last) in zip(ids, names, strict=True):
        await conn.execute(
            "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash)"
            " VALUES ($1, $2, $3, '1990-01-01', 'c', 'x')",
            user_id,
            first,
            last,
        )
    applied = await apply_migrations(conn)
    assert [m.version for m in applied] == [4]
    assert await conn.fetchval("SELECT count(*) FROM users WHERE first_name_key IS NULL") == 0
    after = await conn.fetchval("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass")
    assert after == before
    # Every shard has the index (Citus propagated it).
    shards = await conn.fetchval("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'users'::regclass")
    indexed = await conn.fetchval(
        "SELECT sum(result::int) FROM run_command_on_shards('users',"
        " $$SELECT count(*) FROM pg_indexes WHERE tablename = '%s' AND indexname LIKE 'users_name_key_idx%%'$$)"
    )
    assert indexed == shards
    users = UserRepository(pool)
    for (first, last), user_id in zip((("АН", "пЕТ"), ("σοφ", "ΝΙΚΟ"), ("ÉMI", "zoë")), ids, strict=True):
        assert str(user_id) in [u.id for u in await users.search(first, last, 1000)], first
    # A user registered after the migration gets keys on insert.
    new_id = await helpers.make_user(pool)
    assert await conn.fetchval("SELECT first_name_key FROM users WHERE id = $1", new_id) == "lady"
