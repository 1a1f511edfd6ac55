"""What the Citus tests share besides fixtures: the target cluster, users with posts, where a user's rows are."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import asyncpg
import pytest

from sn.ids import IdGenerator
from sn.pipeline.outbox import Outbox
from sn.storage.posts import PostRepository
from sn.storage.users import NewUser, UserRepository
from tests import citus_support
from tests.support import ROOT

TARGET = citus_support.citus_target()

ids = IdGenerator(1022)


async def make_user(pool: asyncpg.Pool, *, posts: int = 0) -> int:
    user_id = ids.next_id()
    await UserRepository(pool).create(
        NewUser(
            id=user_id,
            first_name="Lady",
            second_name="Gaga",
            birthdate=dt.date(1986, 3, 28),
            city="New York",
            biography=None,
            gender=None,
            interests=None,
            email=f"{user_id}@example.com",
            password_hash="x",
        )
    )
    repo = PostRepository(pool, Outbox(ids.next_id))
    for i in range(posts):
        await repo.create(ids.next_id(), user_id, f"post {i}")
    return user_id


async def placements(conn: asyncpg.Connection, user_id: int) -> dict[str, tuple[str, int, bool]]:
    """table -> (host, port, isolated) of the shard holding the user's rows, for each colocated table."""
    rows = await conn.fetch(
        "SELECT t.name, n.nodename, n.nodeport, s.shardminvalue = s.shardmaxvalue AS isolated"
        " FROM unnest($2::text[]) AS t(name)"
        " JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column(t.name::regclass, $1::bigint)"
        " JOIN pg_dist_placement p ON p.shardid = s.shardid"
        " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'",
        user_id,
        ["users", "friendships", "followers", "posts"],
    )
    return {row["name"]: (row["nodename"], row["nodeport"], row["isolated"]) for row in rows}


def hot() -> tuple[str, int]:
    assert TARGET is not None
    return TARGET.hot.host, TARGET.hot.port


plain_only = pytest.mark.skipif(
    citus_support.rest_on_citus(),
    reason="plain-PostgreSQL behaviour; with SN_TEST_REST_ON_CITUS=1 the admin database is a Citus coordinator",
)


def sn(database_url: str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """The real `sn` command against the database, without the SN_CITUS_* of the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SN_CITUS")}
    env.update(settings)
    env["SN_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "sn", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
