"""Numbered plain-SQL migrations, applied in order under an advisory lock.

Several workers or pods may start at once; the advisory lock makes exactly one of them apply
pending files while the others wait and then find nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

from sn.storage import name_keys

log = logging.getLogger("sn.migrations")

# Arbitrary constant: the lock id only has to be the same for every process of this app.
_ADVISORY_LOCK_ID = 7_357_001


# Steps a migration needs beyond SQL, run after its file in the same transaction (data that only
# Python computes: the locale-independent name search keys).
_PYTHON_STEPS: dict[int, Callable[[asyncpg.Connection], Awaitable[object]]] = {4: name_keys.migrate}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("sn.storage").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        version, _, rest = entry.name.partition("_")
        found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def apply_migrations(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration; return the ones applied by this call."""
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                step = _PYTHON_STEPS.get(migration.version)
                if step is not None:
                    await step(conn)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_ID)
    return applied


async def migrate(database_url: str) -> list[Migration]:
    conn = await asyncpg.connect(database_url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()
