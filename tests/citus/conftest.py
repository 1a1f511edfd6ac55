"""Fixtures: a fresh Citus database on all four nodes per test module, set up by `init_cluster`; an
empty plain-PostgreSQL database for the single-node tests.

Without a cluster (SN_TEST_CITUS_URL, SN_CITUS_WORKERS, SN_CITUS_HOT_WORKER unset) the tests that ask for
one are skipped here, at set-up, and the plain-PostgreSQL tests in the same modules still run: the
modules mirror sn/citus/ by what they test, not by what they need.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from sn.citus.provision import InitResult
from tests import citus_support
from tests.citus.helpers import TARGET
from tests.support import run_sql


@pytest.fixture(scope="module")
def citus_db() -> Iterator[tuple[str, InitResult]]:
    """A fresh database on all four nodes, set up by the first `init_cluster`."""
    if TARGET is None:
        pytest.skip(citus_support.skip_reason())
    name = f"sn_test_citus_{uuid.uuid4().hex[:10]}"
    first = asyncio.run(citus_support.create_database(TARGET, name))
    try:
        yield citus_support.with_database(TARGET.admin_url, name), first
    finally:
        asyncio.run(citus_support.drop_database(TARGET, name))


@pytest.fixture
async def conn(citus_db: tuple[str, InitResult]) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(citus_db[0])
    yield connection
    await connection.close()


@pytest.fixture
async def pool(citus_db: tuple[str, InitResult]) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(citus_db[0], min_size=1, max_size=8)
    assert created is not None
    yield created
    await created.close()


@pytest.fixture
def empty_database(postgres_admin_url: str) -> Iterator[str]:
    """A database with nothing in it: `sn cluster init` has to create the whole schema."""
    name = f"sn_test_cluster_{uuid.uuid4().hex[:10]}"

    run_sql(postgres_admin_url, f'CREATE DATABASE "{name}"')
    yield citus_support.with_database(postgres_admin_url, name)
    run_sql(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
