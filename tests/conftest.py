"""Session-wide real services: PostgreSQL, Redis and one running `sn serve` shared by the suite.

Where they come from, in order: SN_TEST_DATABASE_URL / SN_TEST_REDIS_URL; the local services on
their default ports; embedded servers started for this session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from sn.storage.migrations import migrate
from sn.storage.redis_mux import MuxRedis
from tests import citus_support
from tests.support import ServerProcess, User, forget_test_streams, port_open, register

JWT_SECRET = "test-secret-" + uuid.uuid4().hex


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SN_TEST_DATABASE_URL")
    if citus_support.rest_on_citus():
        yield os.environ["SN_TEST_CITUS_URL"]  # SN_TEST_REST_ON_CITUS=1: see tests/citus_support.py
    elif url:
        yield url
    elif port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        from sn.dev.embedded import EmbeddedPostgres

        with EmbeddedPostgres(tmp_path_factory.mktemp("pg")) as pg:
            yield pg.url


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database for this session (and xdist worker), migrated, dropped at the end."""
    yield from _fresh_database(postgres_admin_url)


@pytest.fixture(scope="module")
def private_database_url(postgres_admin_url: str) -> Iterator[str]:
    """A database no running server touches (for tests that own tables such as the outbox)."""
    yield from _fresh_database(postgres_admin_url)


def _fresh_database(postgres_admin_url: str) -> Iterator[str]:
    name = f"sn_test_{uuid.uuid4().hex[:12]}"
    if citus_support.rest_on_citus():
        yield from citus_support.fresh_database(name)  # on every node, then `sn cluster init`
        return

    async def create() -> None:
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await migrate(_with_database(postgres_admin_url, name))

    async def drop() -> None:
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield _with_database(postgres_admin_url, name)
    asyncio.run(drop())


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[str]:
    """A Redis database of its own per xdist worker (db 1..15), flushed before use."""
    index = 1 + (int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") else 0) % 15
    url = os.environ.get("SN_TEST_REDIS_URL")
    if url:
        base = url.rsplit("/", 1)[0] if urlsplit(url).path not in ("", "/") else url.rstrip("/")
        resolved = f"{base}/{index}"
    elif port_open("127.0.0.1", 6379):
        resolved = f"redis://127.0.0.1:6379/{index}"
    else:
        from sn.dev.embedded import EmbeddedRedis

        with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
            resolved = f"{server.url.rsplit('/', 1)[0]}/{index}"
            redis.Redis.from_url(resolved).flushdb()
            yield resolved
        return
    redis.Redis.from_url(resolved).flushdb()
    yield resolved


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    # Provided by pytest-xdist when it runs; "master" otherwise.
    workerinput: dict[str, Any] | None = getattr(request.config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "master"


@pytest.fixture(scope="session")
def server_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "SN_DATABASE_URL": database_url,
        "SN_REDIS_URL": redis_url,
        "SN_JWT_SECRET": JWT_SECRET,
        "SN_RATE_LIMIT_AUTH": "0",
        "SN_RATE_LIMIT_WRITE": "0",
        # The suite opens many sockets from one address; tests/security runs servers with limits.
        "SN_WS_CONNECT_RATE": "0",
        "SN_WS_MAX_PER_ADDRESS": "0",
        "SN_WS_MAX_PER_USER": "0",
        "SN_LOG_LEVEL": "INFO",
        # Every post counts as late: the slow-delivery log's lines are checked against the real
        # pipeline (tests/api/test_ws.py), at one line per drain and per fan-out.
        "SN_SLOW_DELIVERY_MS": "0.001",
        # Servers of the suite share this Redis, where each worker's stats are what rebalancing
        # compares with (sn.realtime.rebalance): one server's sockets must not make another's
        # worker hand its sockets back. tests/test_topology.py runs it on a Redis of its own.
        "SN_WS_REBALANCE_RATE": "0",
        # Servers sharing a Redis database would otherwise compete for one pipeline (and steal
        # each other's events) when two test sessions overlap on one machine.
        "SN_BUS_PREFIX": f"sntest{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture(scope="session")
def server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(server_env, workers=2, log_path=tmp_path_factory.mktemp("server") / "server.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        yield http


@pytest.fixture
def make_user(client: httpx.Client) -> Callable[..., User]:
    def factory(**overrides: Any) -> User:
        return register(client, **overrides)

    return factory


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    with contextlib.suppress(Exception):
        r.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[AsyncRedis]:
    """An asyncio Redis client on the session's test database."""
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def amux(redis_url: str) -> AsyncIterator[MuxRedis]:
    """The multiplexed hot-read client on the session's test database."""
    client = MuxRedis(redis_url)
    try:
        yield client
    finally:
        await forget_test_streams(client)
        await client.aclose()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
