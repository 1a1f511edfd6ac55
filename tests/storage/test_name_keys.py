"""Name search keys: the folding itself, the range bounds, and search on a C-locale database
(where lower() is ASCII-only), a million users' EXPLAIN showing the range scan on the key index,
and the migration's backfill of rows written before the key columns existed."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sn.storage.migrations import apply_migrations
from sn.storage.name_keys import backfill, prefix_bounds, search_key, successor
from sn.storage.users import NewUser, UserRepository, search_query
from tests import citus_support
from tests.support import run_sql


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Анна", "аННА"),
        ("ЁЖИК", "ёжик"),
        ("ΣΟΦΊΑ", "σοφία"),
        ("Σοφίας", "ΣΟΦΊΑΣ"),  # final sigma folds like the capital
        ("ÉMILE", "émile"),
        ("E\u0301mile", "Émile"),  # decomposed and composed accents
        ("STRASSE", "straße"),
        ("ﬁona", "FIONA"),  # compatibility ligature
    ],
)
def test_search_key_folds_case_and_normalisation(a: str, b: str) -> None:
    assert search_key(a) == search_key(b)


@pytest.mark.parametrize(("a", "b"), [("Émile", "Emile"), ("Ёжик", "Ежик"), ("Zoë", "Zoe")])
def test_search_key_keeps_accents_apart(a: str, b: str) -> None:
    assert search_key(a) != search_key(b)


def test_successor_bounds_exactly_the_prefix() -> None:
    assert successor("") is None
    assert successor("abc") == "abd"
    assert successor("ан") == "ао"
    assert successor("a\U0010ffff") == "b"
    assert successor("\U0010ffff\U0010ffff") is None
    assert successor("\ud7ff") == "\ue000"  # surrogates cannot be stored: skipped
    low, high = prefix_bounds("АН")
    assert (low, high) == ("ан", "ао")
    assert high is not None
    for name in ("ан", "анна", "ан\U0010ffffz", "ан" + "я" * 50):
        assert low <= name < high
    for name in ("а", "ао", "ам", "ая", "b"):
        assert not low <= name < high


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@pytest.fixture(scope="module")
def c_locale_url(postgres_admin_url: str) -> Iterator[str]:
    """A database whose collation and ctype are C, whatever the server's default."""
    if citus_support.rest_on_citus():
        pytest.skip("a C-locale database of its own on a plain PostgreSQL server")
    name = f"sn_test_c_{uuid.uuid4().hex[:10]}"

    run_sql(
        postgres_admin_url, f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    try:
        yield _with_database(postgres_admin_url, name)
    finally:
        run_sql(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def c_conn(c_locale_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(c_locale_url)
    await apply_migrations(conn)
    yield conn
    await conn.close()


def _new_user(user_id: int, first: str, last: str) -> NewUser:
    return NewUser(
        id=user_id,
        first_name=first,
        second_name=last,
        birthdate=dt.date(1990, 1, 1),
        city="Kazan",
        biography=None,
        gender=None,
        interests=None,
        email=None,
        password_hash="x",
    )


async def test_search_on_a_c_locale_database(c_conn: asyncpg.Connection, c_locale_url: str) -> None:
    assert await c_conn.fetchval("SELECT lower('АННА')") == "АННА"  # what broke the old search
    pool = await asyncpg.create_pool(c_locale_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        users = UserRepository(pool)
        base = 9_100_000_000 + uuid.uuid4().int % 1_000_000 * 100
        names = [("Анна", "Петрова"), ("АНТОН", "петров"), ("Σοφία", "Νικολάου"), ("Émile", "Zoë"), ("Emile", "Zoe")]
        for offset, (first, last) in enumerate(names):
            await users.create(_new_user(base + offset, first, last))

        async def found(first: str, last: str) -> list[int]:
            return [int(u.id) for u in await users.search(first, last, 1000) if base <= int(u.id) < base + 100]

        assert await found("ан", "петров") == [base, base + 1]
        assert await found("АНН", "ПЕТР") == [base]
        assert await found("анто", "") == [base + 1]
        assert await found("σοφ", "ΝΙΚ") == [base + 2]
        assert await found("ÉMI", "zoë") == [base + 3]
        assert await found("emi", "zoe") == [base + 4]
        assert await found("E\u0301", "") == [base + 3]
        assert await found("%", "") == []
        assert [u.first_name for u in await users.search("анна", "петрова", 10) if int(u.id) == base] == ["Анна"]
    finally:
        await pool.close()


async def test_backfill_fills_rows_written_before_the_keys(c_conn: asyncpg.Connection) -> None:
    base = 9_200_000_000 + uuid.uuid4().int % 1_000_000 * 100
    await c_conn.executemany(
        "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash)"
        " VALUES ($1, $2, $3, $4, 'c', 'x')",
        [(base, "Ольга", "Смирнова", dt.date(1990, 1, 1)), (base + 1, "Γιώργος", "Ευαγγέλου", dt.date(1990, 1, 1))],
    )
    assert await c_conn.fetchval("SELECT count(*) FROM users WHERE id >= $1 AND first_name_key IS NULL", base) == 2
    assert await backfill(c_conn) >= 2
    rows = await c_conn.fetch(
        "SELECT first_name_key, second_name_key FROM users WHERE id >= $1 AND id < $2 ORDER BY id", base, base + 100
    )
    # casefold: the final sigma is sigma
    assert [tuple(r) for r in rows] == [("ольга", "смирнова"), ("γιώργοσ", "ευαγγέλου")]


async def test_migration_0004_backfills_an_existing_table(c_conn: asyncpg.Connection) -> None:
    # As an upgrade meets it: rows from before the key columns, then the migration.
    base = 9_300_000_000 + uuid.uuid4().int % 1_000_000 * 100
    await c_conn.execute("DROP INDEX users_name_key_idx")
    await c_conn.execute("ALTER TABLE users DROP COLUMN first_name_key, DROP COLUMN second_name_key")
    await c_conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    await c_conn.execute(
        "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash)"
        " VALUES ($1, 'Дарья', 'Кузнецова', '1990-01-01', 'c', 'x')",
        base,
    )
    applied = await apply_migrations(c_conn)
    assert [m.version for m in applied] == [4]
    assert await c_conn.fetchval("SELECT first_name_key FROM users WHERE id = $1", base) == "дарья"
    assert await c_conn.fetchval("SELECT count(*) FROM users WHERE first_name_key IS NULL") == 0


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _plan_nodes(child)


@pytest.mark.slow
async def test_search_is_an_index_range_scan_on_a_million_users(private_database_url: str) -> None:
    conn = await asyncpg.connect(private_database_url, command_timeout=300)
    try:
        # A million users, half with Cyrillic names, keys as search_key gives them (ASCII digits
        # and already-folded letters, so SQL can write them here without Python).
        await conn.execute(
            "INSERT INTO users (id, first_name, second_name, birthdate, city, password_hash,"
            " first_name_key, second_name_key)"
            " SELECT 10000000 + i, f, s, '1990-01-01', 'c', 'x', f_key, s_key FROM ("
            "   SELECT i,"
            "     CASE WHEN i % 2 = 0 THEN 'Анна' || (i % 5000) ELSE 'Anna' || (i % 5000) END AS f,"
            "     CASE WHEN i % 2 = 0 THEN 'анна' || (i % 5000) ELSE 'anna' || (i % 5000) END AS f_key,"
            "     'Петрова' || (i % 7919) AS s, 'петрова' || (i % 7919) AS s_key"
            "   FROM generate_series(1, 1000000) AS i) AS gen"
        )
        await conn.execute("ANALYZE users")
        for first, last in (("АННА1234", "петрова"), ("anna4242", ""), ("Анна123", "ПЕТРОВА7")):
            for mode in ("force_custom_plan", "force_generic_plan"):
                # Generic plans matter: asyncpg prepares statements, and after five runs
                # PostgreSQL may switch to a plan that does not know the parameters' values.
                await conn.execute(f"SET plan_cache_mode = {mode}")
                sql, args = search_query(first, last, 100, 0)
                raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
                nodes = list(_plan_nodes(json.loads(raw)[0]["Plan"]))
                scans = [n for n in nodes if n.get("Index Name") == "users_name_key_idx"]
                assert scans, (first, last, mode, raw)
                assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], raw
                assert any("first_name_key >=" in n.get("Index Cond", "") for n in scans), raw
        sql, args = search_query("АННА1234", "петрова", 1000, 0)
        rows = await conn.fetch(sql, *args)
        assert len(rows) == 200  # i = 1234 + 5000k (all even): 200 in a million
        assert {r["first_name"] for r in rows} == {"Анна1234"}
    finally:
        await conn.close()
