"""Citus test databases: one fresh database on every node, registered and distributed by `sn cluster init`.

Set SN_TEST_CITUS_URL (a coordinator, any database) plus SN_CITUS_WORKERS and SN_CITUS_HOT_WORKER,
as `scripts/citus-local.sh up` prints them (`eval "$(scripts/citus-local.sh env)"`). With
SN_TEST_REST_ON_CITUS=1 as well, the session's `database_url` (and so the whole REST suite) runs on
such a database instead of plain PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from sn.citus.nodes import NodeAddress, address_of_url, parse_node, parse_nodes
from sn.citus.provision import InitResult, init_cluster

SETUP_HINT = (
    'start a local cluster with `scripts/citus-local.sh up`, then `eval "$(scripts/citus-local.sh env)"`'
    " (sets SN_TEST_CITUS_URL, SN_CITUS_WORKERS, SN_CITUS_HOT_WORKER)"
)


@dataclass(frozen=True)
class CitusTarget:
    admin_url: str
    workers: list[NodeAddress]
    hot: NodeAddress

    @property
    def nodes(self) -> list[NodeAddress]:
        return [address_of_url(self.admin_url), *self.workers, self.hot]


def citus_target() -> CitusTarget | None:
    url = os.environ.get("SN_TEST_CITUS_URL")
    workers = os.environ.get("SN_CITUS_WORKERS")
    hot = os.environ.get("SN_CITUS_HOT_WORKER")
    if not url or not workers or not hot:
        return None
    return CitusTarget(url, parse_nodes(workers), parse_node(hot))


def skip_reason() -> str:
    if not os.environ.get("SN_TEST_CITUS_URL"):
        return f"SN_TEST_CITUS_URL is not set: {SETUP_HINT}"
    return f"SN_CITUS_WORKERS / SN_CITUS_HOT_WORKER are not set: {SETUP_HINT}"


def rest_on_citus() -> bool:
    return os.environ.get("SN_TEST_REST_ON_CITUS", "") not in ("", "0") and citus_target() is not None


def with_database(url: str, database: str, node: NodeAddress | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if node is not None:
        user = netloc.rpartition("@")[0]
        netloc = f"{user}@{node}" if user else str(node)
    return urlunsplit(parts._replace(netloc=netloc, path="/" + database))


async def create_database(target: CitusTarget, name: str) -> InitResult:
    # Citus does not propagate CREATE DATABASE: each node gets the database and the extension.
    for node in target.nodes:
        conn = await asyncpg.connect(with_database(target.admin_url, "postgres", node))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_database(target.admin_url, name, node))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        finally:
            await conn.close()
    url = with_database(target.admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        return await init_cluster(conn, coordinator=address_of_url(url), workers=target.workers, hot=target.hot)
    finally:
        await conn.close()


async def drop_database(target: CitusTarget, name: str) -> None:
    for node in target.nodes:
        conn = await asyncpg.connect(with_database(target.admin_url, "postgres", node))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def fresh_database(name: str) -> Iterator[str]:
    target = citus_target()
    assert target is not None, skip_reason()
    asyncio.run(create_database(target, name))
    try:
        yield with_database(target.admin_url, name)
    finally:
        asyncio.run(drop_database(target, name))
