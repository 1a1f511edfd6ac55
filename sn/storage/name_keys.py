"""Search keys for names: case-insensitive prefix search that does not depend on the database's locale.

PostgreSQL's ``lower()`` follows the database's LC_CTYPE: under the C locale (the embedded
cluster's default before, and common on servers and in containers) it lower-cases ASCII only, so
``lower('Анна')`` stays ``'Анна'`` while the query, lower-cased in Python, was ``'анна'``: no
match. The key is therefore computed here, the same way for stored names and for queries:
Unicode NFKC, case folding, NFKC again (folding can denormalise), so ``'ÉMI'``, ``'émi'`` and
a decomposed ``'E\u0301mi'`` are one key, as are Greek ``'ΣΟΦ'`` and ``'σοφ'``.

The key columns are ``COLLATE "C"``: compared byte by byte, and UTF-8 byte order is code point
order, so the strings starting with ``p`` are exactly the range ``[p, successor(p))``, which a
btree answers with an index range scan on any server and any locale. A range with parameters is
also indexable in a generic prepared plan, which ``LIKE $1`` is not.
"""

from __future__ import annotations

import unicodedata

import asyncpg

_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)  # not storable in PostgreSQL text: skipped by successor()


def search_key(name: str) -> str:
    """The form names are stored and searched in (see the module docstring)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (in code point
    order), or None when there is none (empty prefix, or only U+10FFFF characters)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code in _SURROGATES:
            code = _SURROGATES.stop
        if code <= _MAX_CODE_POINT:
            return "".join(chars) + chr(code)
    return None


def prefix_bounds(value: str) -> tuple[str, str | None]:
    """``(low, high)`` with ``low <= key < high`` meaning "key starts with value's key"; high None: no bound."""
    low = search_key(value)
    return low, successor(low)


_BACKFILL_PAGE = 5_000


async def migrate(conn: asyncpg.Connection) -> None:
    """Migration 0004's Python step, after its SQL added the key columns: fill them, then index
    them (after: cheaper than maintaining the index through the updates) and drop lower()'s index.
    One statement per call: see the migration file for why."""
    await backfill(conn)
    await conn.execute("CREATE INDEX IF NOT EXISTS users_name_key_idx ON users (first_name_key, second_name_key)")
    await conn.execute("DROP INDEX IF EXISTS users_name_prefix_idx")


async def backfill(conn: asyncpg.Connection) -> int:
    """Fill the key columns of rows written before they existed (migration 0004); returns the count.

    Keyset pages by id, and one single-row UPDATE per user by its distribution column, which
    Citus routes to the user's shard (an UPDATE ... FROM unnest(...) joining a distributed
    table is not something every Citus version plans)."""
    done = 0
    after = -(1 << 63)
    while True:
        rows = await conn.fetch(
            "SELECT id, first_name, second_name FROM users WHERE id > $1 ORDER BY id LIMIT $2", after, _BACKFILL_PAGE
        )
        if not rows:
            return done
        stale = [(row["id"], search_key(row["first_name"]), search_key(row["second_name"])) for row in rows]
        await conn.executemany(
            "UPDATE users SET first_name_key = $2, second_name_key = $3 WHERE id = $1"
            " AND (first_name_key IS DISTINCT FROM $2 OR second_name_key IS DISTINCT FROM $3)",
            stale,
        )
        done += len(rows)
        after = rows[-1]["id"]
