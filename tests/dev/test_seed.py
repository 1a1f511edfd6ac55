"""`sn seed` end to end: the real CLI loads the session database, the real server serves the result.

The session database is shared with the rest of the suite, so every check is restricted to the
seeded ids (read back from --ids-out) rather than whole-table counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from sn.dev import seed
from sn.ids import GENERATOR_BITS, SEQUENCE_BITS, IdGenerator, timestamp_ms
from tests.conftest import JWT_SECRET
from tests.support import FAST_HASHING, ROOT

USERS = 2000
FOLLOWS = 10
POSTS = 2
CELEBRITIES = 2
CELEBRITY_FOLLOWERS = 500
PASSWORD = "seeded secret"


@dataclass(frozen=True)
class Seeded:
    user_ids: list[int]
    output: str
    reader: int  # a seeded user whose followees have posted: their feed cannot be empty


async def _reader(database_url: str, user_ids: list[int]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        # Two queries, not a join: on Citus friendships and posts are sharded by different
        # columns of the relation (follower vs author), and a non-colocated join is refused.
        authors = [row[0] for row in await conn.fetch("SELECT DISTINCT author_id FROM posts")]
        reader = await conn.fetchval(
            "SELECT user_id FROM friendships WHERE user_id = ANY($1) AND friend_id = ANY($2) LIMIT 1",
            user_ids,
            authors,
        )
    finally:
        await conn.close()
    assert isinstance(reader, int)
    return reader


@pytest.fixture(scope="module")
def seeded(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    ids_out = tmp_path_factory.mktemp("seed") / "ids.txt"
    env = {
        **os.environ,
        # The session server verifies with whatever cost the hash records; a cheap one keeps login fast.
        **FAST_HASHING,
        "SN_DATABASE_URL": database_url,
        # Lease the generator id from the suite's Redis, as seeding next to a live server would.
        "SN_REDIS_URL": redis_url,
        "SN_JWT_SECRET": JWT_SECRET,
    }
    command = [
        sys.executable,
        "-m",
        "sn",
        "seed",
        f"--users={USERS}",
        f"--follows-per-user={FOLLOWS}",
        f"--posts-per-user={POSTS}",
        f"--celebrities={CELEBRITIES}",
        f"--celebrity-followers={CELEBRITY_FOLLOWERS}",
        f"--password={PASSWORD}",
        f"--ids-out={ids_out}",
    ]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    user_ids = [int(line) for line in Path(ids_out).read_text().split()]
    # In a thread of its own: asyncio.run here, between async tests, would reset the main
    # thread's current event loop under pytest-asyncio's session loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        reader = pool.submit(asyncio.run, _reader(database_url, user_ids)).result()
    return Seeded(user_ids=user_ids, output=result.stdout, reader=reader)


def test_seed_reports_and_writes_ids(seeded: Seeded) -> None:
    assert len(seeded.user_ids) == USERS
    assert len(set(seeded.user_ids)) == USERS
    assert f"seeded {USERS} users" in seeded.output


async def test_seeded_rows_are_consistent(seeded: Seeded, database_url: str) -> None:
    ids = seeded.user_ids
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE id = ANY($1)", ids) == USERS
        assert await conn.fetchval("SELECT count(*) FROM user_emails WHERE user_id = ANY($1)", ids) == USERS
        blank = await conn.fetchval(
            "SELECT count(*) FROM users WHERE id = ANY($1) AND (first_name = '' OR second_name = '' OR city = '')", ids
        )
        assert blank == 0

        # Everyone follows exactly FOLLOWS users besides the celebrities they were assigned, and
        # only seeded users: the seed never reaches into rows it did not create.
        per_user = await conn.fetch(
            "SELECT user_id, count(*) AS n, bool_and(friend_id = ANY($1)) AS seeded_only"
            " FROM friendships WHERE user_id = ANY($1) GROUP BY user_id",
            ids,
        )
        assert len(per_user) == USERS
        assert all(row["seeded_only"] for row in per_user)
        assert min(row["n"] for row in per_user) == FOLLOWS
        assert max(row["n"] for row in per_user) <= FOLLOWS + CELEBRITIES

        self_follows = await conn.fetchval(
            "SELECT count(*) FROM friendships WHERE user_id = ANY($1) AND user_id = friend_id", ids
        )
        assert self_follows == 0

        # followers is the exact mirror of friendships: same pairs, reversed, nothing extra.
        follows = await conn.fetchval("SELECT count(*) FROM friendships WHERE user_id = ANY($1)", ids)
        mirrored = await conn.fetchval("SELECT count(*) FROM followers WHERE follower_id = ANY($1)", ids)
        assert follows == mirrored
        unmatched = await conn.fetchval(
            "SELECT count(*) FROM (SELECT user_id, friend_id FROM friendships WHERE user_id = ANY($1)"
            " EXCEPT SELECT follower_id, author_id FROM followers WHERE follower_id = ANY($1)) AS missing",
            ids,
        )
        assert unmatched == 0

        top = await conn.fetch(
            "SELECT author_id, count(*) AS n FROM followers WHERE author_id = ANY($1)"
            " GROUP BY author_id ORDER BY n DESC LIMIT $2",
            ids,
            CELEBRITIES,
        )
        assert [row["n"] >= CELEBRITY_FOLLOWERS for row in top] == [True] * CELEBRITIES

        posts = await conn.fetch("SELECT id, author_id, created_at FROM posts WHERE author_id = ANY($1)", ids)
        assert len(posts) == USERS * POSTS
        # Compared here, not joined: post_index is sharded by post id, posts by author.
        indexed = await conn.fetch("SELECT id, author_id FROM post_index WHERE author_id = ANY($1)", ids)
        assert {(row["id"], row["author_id"]) for row in indexed} == {(row["id"], row["author_id"]) for row in posts}
        for row in posts[:200]:
            created: dt.datetime = row["created_at"]
            assert round(created.timestamp() * 1000) == timestamp_ms(row["id"])
    finally:
        await conn.close()


def test_seeded_user_logs_in_and_reads_feed(seeded: Seeded, client: httpx.Client) -> None:
    reader = seeded.reader
    wrong = client.post("/login", json={"id": str(reader), "password": PASSWORD + "x"})
    assert wrong.status_code == 400
    login = client.post("/login", json={"id": str(reader), "password": PASSWORD})
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['token']}"}

    feed = client.get("/post/feed", headers=headers)
    assert feed.status_code == 200, feed.text
    posts = feed.json()
    assert posts
    assert {post["author_user_id"] for post in posts} <= {str(uid) for uid in seeded.user_ids}
    # Newest first, by id: the order the feed cache and the rebuild query both use.
    assert [int(p["id"]) for p in posts] == sorted((int(p["id"]) for p in posts), reverse=True)

    profile = client.get(f"/user/get/{reader}")
    assert profile.status_code == 200
    assert profile.json()["id"] == str(reader)


# -- the generator's output for a given random seed ----------------------------------------------------------------


class _CountingIds(IdGenerator):
    """Ids from a counter instead of the clock, so that two runs mint the same ones."""

    def __init__(self) -> None:
        super().__init__(7)
        self._n = 0

    def next_id(self) -> int:
        self._n += 1
        return ((86_400_000 * 365 + self._n) << (GENERATOR_BITS + SEQUENCE_BITS)) | (7 << SEQUENCE_BITS)


def test_the_same_random_seed_seeds_the_same_rows() -> None:
    """Pinned when the word lists moved from code to sn/dev/seed_words.json (values computed with the
    lists still in seed.py): reordering, adding or dropping a word changes these, and so does any change
    to how the generator draws."""
    plan = seed.SeedPlan(
        users=300,
        follows_per_user=5,
        posts_per_user=3,
        celebrities=2,
        celebrity_followers=50,
        password="x",
        ids_out=None,
    )
    gen = seed._Generator(plan, _CountingIds(), "hash", rnd=random.Random(20261202))
    gen.make_user_ids()
    users, emails = gen.users_chunk(0, plan.users)
    gen.prepare_follows()
    payloads = [gen.friendships_chunk(0, plan.users)]
    payloads += [gen.followers_chunk(start, stop) for start, stop in gen.followers_chunks()]
    gen.prepare_posts()
    payloads.append(gen.posts_chunk(gen.posts_by_author(), 0, plan.users))
    payloads.append(gen.post_index_chunk(0, len(gen.post_ids)))

    assert [user[1:9] for user in users[:3]] == [
        (
            "Арсений",
            "Плотников",
            dt.date(1993, 8, 17),
            "Врач, г. Хабаровск. Хобби: шахматы.",
            "Хабаровск",
            "male",
            ["шахматы", "музыка", "настольные игры", "футбол", "горы"],
            "arseny.plotnikov.132271570948222976@example.net",
        ),
        (
            "Татьяна",
            "Громова",
            dt.date(1990, 5, 11),
            "Интересы: футбол, рисование, книги, гитара, танцы. Пишите!",
            "Москва",
            "female",
            ["футбол", "рисование", "книги", "гитара", "танцы"],
            "tatyana.gromova.132271570952417280@example.net",
        ),
        (
            "Chloe",
            "Nelson",
            dt.date(1995, 9, 15),
            "Analyst. I love astronomy, history.",
            "Toronto",
            "female",
            ["astronomy", "history"],
            "chloe.nelson.132271570956611584@example.net",
        ),
    ]
    assert emails[0] == ("arseny.plotnikov.132271570948222976@example.net", users[0][0])
    assert gen.ru_texts[0][4:].decode() == "Сегодня день рождения у лучшего друга, поздравляю!"
    assert gen.en_texts[0][4:].decode() == "Happy birthday to my best friend!"
    # Every row of every table: the users' tuples as repr, the COPY payloads as bytes.
    digest = hashlib.sha256()
    for user in users:
        digest.update(repr(user).encode())
    for payload in payloads:
        digest.update(payload.data)
    assert digest.hexdigest() == "f717bf4fba2e6c7a0e467c188c132b49e4b46e2c4f9228167b0afcb5b5e380e0"
