"""`sn seed`: realistic users, follows and posts, loaded with COPY so that 100k users seed in seconds.

What is generated:

- users: Russian (Cyrillic, with gendered surnames) and English names, cities weighted roughly
  by size, birthdates from 1955 to 2008, interests and a biography in the user's language, and
  a unique e-mail under the reserved example.* domains (also written to user_emails, so the
  API's uniqueness check sees them). Every user gets the same password hash: ``--password`` is
  hashed once, because argon2 at production cost is ~50 ms a hash, i.e. over an hour for 100k.
- follows: ``--follows-per-user`` distinct targets per user, never the user themself, drawn from
  a skewed popularity curve (a few users gain thousands of followers, the least popular about
  half the mean), written to friendships and mirrored into followers. ``--celebrities C
  --celebrity-followers F`` additionally makes C users each followed by F distinct users.
- posts: ``--posts-per-user`` is the mean; busy authors post more than quiet ones. Each post
  lands in posts and post_index, its created_at equal to the timestamp in its id.

Ids are Snowflake ids from ``IdGenerator``. The generator id is leased from Redis like a server
worker's when SN_REDIS_URL is set, so seeding a live deployment cannot mint an id a worker also
mints. Without Redis the seeder uses ``SEEDER_GENERATOR_ID`` (1023), reserved for it by
convention: no server runs without Redis, so only a server on *another* Redis could hold 1023.

Speed: rows are generated in a worker thread, chunk by chunk, while earlier chunks stream into
PostgreSQL over several connections with binary COPY, so Python and the database backends work
at the same time. Rows are produced in primary-key order (ids are time-ordered and generated in
order), so every index insert lands on the rightmost btree page instead of a random one.

Each chunk commits on its own: an interrupted seed leaves the chunks already copied. Seeding a
live database is safe: seeded users are new, so no Redis feed or profile cache refers to them
yet, and caches are built from the database on first read. Nothing is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from itertools import count, islice, repeat
from pathlib import Path
from typing import Any

import asyncpg
import redis.exceptions
from redis.asyncio import Redis

from sn.auth import PasswordService
from sn.ids import EPOCH_MS, GENERATOR_BITS, SEQUENCE_BITS, IdGenerator, timestamp_ms
from sn.settings import Settings, SettingsError
from sn.storage.idlease import GeneratorLease
from sn.storage.migrations import migrate
from sn.storage.name_keys import search_key

SEEDER_GENERATOR_ID = 1023

# Rows per COPY call: large enough that per-statement overhead vanishes, small enough that a few
# chunks in flight stay within tens of megabytes and generation overlaps copying.
_CHUNK_ROWS = 200_000
_USER_CHUNK = 10_000
# Distinct post texts per language; posts pick from these (see `_Generator._text_pool`).
_TEXT_POOL = 5_000
# Share of users with Russian names; the rest are English.
_RUSSIAN_SHARE = 0.7

Record = tuple[Any, ...]


# -- vocabulary ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Vocabulary:
    """The word lists the generator draws from (sn/dev/seed_words.json)."""

    # (Cyrillic, Latin transliteration): the Latin form builds the e-mail address.
    ru_male: list[tuple[str, str]]
    ru_female: list[tuple[str, str]]
    # Masculine forms; each ends in -ов/-ев/-ёв/-ин or -ский so that `_feminine` can derive the other.
    ru_surnames: list[tuple[str, str]]
    en_male: list[str]
    en_female: list[str]
    en_surnames: list[str]
    # (city, weight): weights roughly follow population, so Moscow and London dominate as they would.
    ru_cities: list[tuple[str, int]]
    en_cities: list[tuple[str, int]]
    ru_interests: list[str]
    en_interests: list[str]
    ru_jobs: list[str]
    en_jobs: list[str]
    # Biography templates ({job}, {city}, {interests}, {i1}, {i2}) and post sentences; a topic
    # ({i}: an interest) ends some posts.
    ru_bios: tuple[str, ...]
    en_bios: tuple[str, ...]
    ru_sentences: tuple[str, ...]
    ru_topics: tuple[str, ...]
    en_sentences: tuple[str, ...]
    en_topics: tuple[str, ...]


def _load_vocabulary() -> _Vocabulary:
    """Read seed_words.json, shipped next to this module as package data; called once, at import.

    Data rather than code: some 600 names, cities and sentences are content that a reader of the
    generator never needs to scroll past, and editing them touches no logic. The order of each list
    is part of the output (a generator seeded the same way picks the same indexes), which
    tests/dev/test_seed.py pins.
    """
    raw: dict[str, list[Any]] = json.loads(resources.files("sn.dev").joinpath("seed_words.json").read_text("utf-8"))

    def pairs(key: str) -> list[tuple[str, str]]:
        return [(str(first), str(second)) for first, second in raw[key]]

    def words(key: str) -> list[str]:
        return [str(item) for item in raw[key]]

    def weighted(key: str) -> list[tuple[str, int]]:
        return [(str(name), int(weight)) for name, weight in raw[key]]

    vocabulary = _Vocabulary(
        ru_male=pairs("ru_male"),
        ru_female=pairs("ru_female"),
        ru_surnames=pairs("ru_surnames"),
        en_male=words("en_male"),
        en_female=words("en_female"),
        en_surnames=words("en_surnames"),
        ru_cities=weighted("ru_cities"),
        en_cities=weighted("en_cities"),
        ru_interests=words("ru_interests"),
        en_interests=words("en_interests"),
        ru_jobs=words("ru_jobs"),
        en_jobs=words("en_jobs"),
        ru_bios=tuple(words("ru_bios")),
        en_bios=tuple(words("en_bios")),
        ru_sentences=tuple(words("ru_sentences")),
        ru_topics=tuple(words("ru_topics")),
        en_sentences=tuple(words("en_sentences")),
        en_topics=tuple(words("en_topics")),
    )
    # Checked here, where an edit to the file shows up, not as an error deep in a chunk: a user
    # samples up to 5 interests, a post up to 3 sentences, and every other list is drawn from.
    least = {"ru_interests": 5, "en_interests": 5, "ru_sentences": 3, "en_sentences": 3}
    short = [
        f"{item.name} has {len(getattr(vocabulary, item.name))}"
        for item in fields(vocabulary)
        if len(getattr(vocabulary, item.name)) < least.get(item.name, 1)
    ]
    if short:
        raise ValueError(f"sn/dev/seed_words.json: too few entries: {', '.join(short)}")
    return vocabulary


_WORDS = _load_vocabulary()

_BIRTH_FIRST = dt.date(1955, 1, 1).toordinal()
_BIRTH_SPAN = dt.date(2008, 12, 31).toordinal() - _BIRTH_FIRST
# RFC 2606 reserved domains: seeded addresses can never reach a real mailbox.
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")


def _feminine(surname: str) -> str:
    for masculine, feminine in (("ский", "ская"), ("цкий", "цкая"), ("sky", "skaya")):
        if surname.endswith(masculine):
            return surname[: -len(masculine)] + feminine
    return surname + ("а" if surname[-1] > "z" else "a")


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedPlan:
    users: int
    follows_per_user: int
    posts_per_user: int
    celebrities: int
    celebrity_followers: int
    password: str
    ids_out: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SeedPlan:
        plan = cls(
            users=args.users,
            follows_per_user=args.follows_per_user,
            posts_per_user=args.posts_per_user,
            celebrities=args.celebrities,
            celebrity_followers=args.celebrity_followers,
            password=args.password,
            ids_out=args.ids_out,
        )
        for name in ("users", "follows_per_user", "posts_per_user", "celebrities", "celebrity_followers"):
            if getattr(plan, name) < 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 0")
        if not plan.password:
            raise SettingsError("--password must not be empty")
        # Nobody can follow more users than exist besides themself; caps instead of errors keep
        # `--users 10 --follows-per-user 50` meaning "as dense as possible".
        most = max(plan.users - 1, 0)
        return cls(
            users=plan.users,
            follows_per_user=min(plan.follows_per_user, most),
            posts_per_user=plan.posts_per_user,
            celebrities=min(plan.celebrities, plan.users),
            celebrity_followers=min(plan.celebrity_followers, most),
            password=plan.password,
            ids_out=plan.ids_out,
        )


# -- binary COPY payloads -------------------------------------------------------------------------
# The pair tables (friendships, followers, post_index) and posts are 95% of the rows. Building a
# Python tuple per row and having asyncpg encode it costs over 1 us a row under one GIL; splicing
# precomputed big-endian fields into PostgreSQL's binary COPY format is a bytes join per user.
# Users and e-mails, with dates, arrays and nullable text, go through copy_records_to_table.

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
_INT8_LEN = b"\x00\x00\x00\x08"
_TWO_FIELDS = b"\x00\x02"
_FOUR_FIELDS = b"\x00\x04"
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, the zero of PostgreSQL timestamps


def _int8(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def _text(value: str) -> bytes:
    encoded = value.encode()
    return len(encoded).to_bytes(4, "big") + encoded


@dataclass(slots=True)
class _Payload:
    """One chunk as a complete binary COPY stream, and how many rows it holds."""

    data: bytes
    rows: int


def _payload(parts: list[bytes], rows: int) -> _Payload:
    return _Payload(_COPY_HEADER + b"".join(parts) + _COPY_TRAILER, rows)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    # copy_to_table's typed sources are files, paths and async iterables; one chunk is enough.
    yield data


# -- row generation (runs in a worker thread) ----------------------------------------------------


@dataclass
class _Generator:
    """Builds rows chunk by chunk. Only ever used by one thread at a time (see `_load`)."""

    plan: SeedPlan
    ids: IdGenerator
    password_hash: str
    rnd: random.Random = field(default_factory=random.Random)
    user_ids: list[int] = field(default_factory=list)
    id_bytes: list[bytes] = field(default_factory=list)
    russian: bytearray = field(default_factory=bytearray)
    # Encoded ids of each user's followers, appended in ascending order as follows are made.
    followers_of: list[list[bytes]] = field(default_factory=list)
    # Celebrity indexes each user follows on top of their regular follows.
    celebrity_follows: dict[int, list[int]] = field(default_factory=dict)
    # Popularity rank -> user index is `(rank * stride + offset) % n`: a permutation (stride is
    # coprime with n) that needs no lookup table, whose random reads cost a cache miss per draw.
    stride: int = 1
    offset: int = 0
    post_ids: list[int] = field(default_factory=list)
    post_authors: list[int] = field(default_factory=list)
    # Encoded post texts to pick from: composing each of 500k posts anew costs seconds.
    ru_texts: list[bytes] = field(default_factory=list)
    en_texts: list[bytes] = field(default_factory=list)
    # Names repeat (a few hundred of them): each one's search key is computed once.
    name_keys: dict[str, str] = field(default_factory=dict)
    celebrity_ids: list[int] = field(default_factory=list)

    def make_user_ids(self) -> None:
        n = self.plan.users
        self.user_ids = [self.ids.next_id() for _ in range(n)]
        self.id_bytes = [_int8(uid) for uid in self.user_ids]
        self.russian = bytearray(self.rnd.random() < _RUSSIAN_SHARE for _ in range(n))

    def users_chunk(self, start: int, stop: int) -> tuple[list[Record], list[Record]]:
        rnd = self.rnd
        ru_cities, ru_weights = zip(*_WORDS.ru_cities, strict=True)
        en_cities, en_weights = zip(*_WORDS.en_cities, strict=True)
        users: list[Record] = []
        emails: list[Record] = []
        for i in range(start, stop):
            uid = self.user_ids[i]
            male = rnd.random() < 0.5
            if self.russian[i]:
                first, first_latin = rnd.choice(_WORDS.ru_male if male else _WORDS.ru_female)
                last, last_latin = rnd.choice(_WORDS.ru_surnames)
                if not male:
                    last, last_latin = _feminine(last), _feminine(last_latin)
                city = rnd.choices(ru_cities, ru_weights)[0]
                interests = rnd.sample(_WORDS.ru_interests, rnd.randint(1, 5))
                jobs, bios = _WORDS.ru_jobs, _WORDS.ru_bios
            else:
                first = first_latin = rnd.choice(_WORDS.en_male if male else _WORDS.en_female)
                last = last_latin = rnd.choice(_WORDS.en_surnames)
                city = rnd.choices(en_cities, en_weights)[0]
                interests = rnd.sample(_WORDS.en_interests, rnd.randint(1, 5))
                jobs, bios = _WORDS.en_jobs, _WORDS.en_bios
            # One user in ten leaves the biography empty, as real profiles do.
            biography = (
                None
                if rnd.random() < 0.1
                else rnd.choice(bios).format(
                    job=rnd.choice(jobs),
                    city=city,
                    interests=", ".join(interests),
                    i1=interests[0],
                    i2=interests[-1],
                )
            )
            # The id makes the address unique across runs without a lookup.
            email = f"{first_latin}.{last_latin}.{uid}@{rnd.choice(_EMAIL_DOMAINS)}".lower()
            birthdate = dt.date.fromordinal(_BIRTH_FIRST + rnd.randrange(_BIRTH_SPAN))
            gender = "male" if male else "female"
            keys = self.name_keys
            first_key = keys.get(first) or keys.setdefault(first, search_key(first))
            last_key = keys.get(last) or keys.setdefault(last, search_key(last))
            hashed = self.password_hash
            users.append(
                (uid, first, last, birthdate, biography, city, gender, interests, email, hashed, first_key, last_key)
            )
            emails.append((email, uid))
        return users, emails

    def prepare_follows(self) -> None:
        n, rnd = self.plan.users, self.rnd
        self.followers_of = [[] for _ in range(n)]
        if n > 1:
            self.stride = next(s for s in count(rnd.randrange(n // 3, n)) if math.gcd(s, n) == 1)
            self.offset = rnd.randrange(n)
        for celebrity in rnd.sample(range(n), self.plan.celebrities):
            self.celebrity_ids.append(self.user_ids[celebrity])
            # F distinct users other than the celebrity: sample n-1 slots and skip over its index.
            for slot in rnd.sample(range(n - 1), self.plan.celebrity_followers):
                follower = slot if slot < celebrity else slot + 1
                self.celebrity_follows.setdefault(follower, []).append(celebrity)

    def _targets(self, u: int) -> list[int]:
        """Indexes user `u` follows, ascending: its celebrity follows plus `follows_per_user` others."""
        n, rnd, stride, offset = self.plan.users, self.rnd.random, self.stride, self.offset
        celebrities = self.celebrity_follows.get(u, ())
        need = min(self.plan.follows_per_user, n - 1 - len(celebrities))
        # A dict keeps draws in the (random) order they were made, so trimming the surplus of the
        # last round drops random picks; trimming a set would drop by hash slot, i.e. always the
        # same users.
        picks: dict[int, None] = {}
        rounds = 0
        while len(picks) < need:
            missing = need - len(picks)
            if rounds == 4:
                # Nearly everyone is followed already (tiny or dense graphs): the skewed draw would
                # keep hitting the same popular users, so fill the rest uniformly.
                rest = [i for i in range(n) if i != u and i not in picks and i not in celebrities]
                picks.update(dict.fromkeys(self.rnd.sample(rest, min(missing, len(rest)))))
                break
            # rank = n * r^2 puts the density of rank x at 1/(2*sqrt(x/n)) times the mean: a long
            # tail of popular users, the least popular still at half the mean. 1/8 extra draws
            # cover most repeats in one round.
            draws = [rnd() for _ in repeat(None, missing + missing // 8 + 1)]
            picks.update(dict.fromkeys([(int(n * r * r) * stride + offset) % n for r in draws]))
            picks.pop(u, None)
            for celebrity in celebrities:
                picks.pop(celebrity, None)
            rounds += 1
        return sorted([*islice(picks, need), *celebrities])

    def friendships_chunk(self, start: int, stop: int) -> _Payload:
        id_bytes, followers_of = self.id_bytes, self.followers_of
        parts: list[bytes] = []
        rows = 0
        for u in range(start, stop):
            targets = self._targets(u)
            if not targets:
                continue
            own = id_bytes[u]
            # Each row is prefix + friend id, so the rows are prefix + prefix.join(friend ids).
            prefix = _TWO_FIELDS + _INT8_LEN + own + _INT8_LEN
            parts.append(prefix + prefix.join([id_bytes[t] for t in targets]))
            rows += len(targets)
            for t in targets:
                followers_of[t].append(own)
        return _payload(parts, rows)

    def followers_chunks(self) -> list[tuple[int, int]]:
        """(start, stop) author index ranges of about `_CHUNK_ROWS` mirror rows each."""
        return _ranges([len(followers) for followers in self.followers_of], _CHUNK_ROWS)

    def followers_chunk(self, start: int, stop: int) -> _Payload:
        id_bytes, followers_of = self.id_bytes, self.followers_of
        parts: list[bytes] = []
        rows = 0
        for t in range(start, stop):
            followers = followers_of[t]
            if not followers:
                continue
            prefix = _TWO_FIELDS + _INT8_LEN + id_bytes[t] + _INT8_LEN
            parts.append(prefix + prefix.join(followers))
            rows += len(followers)
            followers_of[t] = []  # free as we go: the mirror is the last reader
        return _payload(parts, rows)

    def prepare_posts(self) -> None:
        n, rnd = self.plan.users, self.rnd.random
        total = n * self.plan.posts_per_user
        # Activity rank -> user index, independent of popularity; rank = n * r^1.5 makes busy
        # authors post several times the mean while the quietest post about a third of it.
        activity = list(range(n))
        self.rnd.shuffle(activity)
        self.post_ids = [self.ids.next_id() for _ in range(total)]
        self.post_authors = [activity[int(n * r**1.5)] for r in [rnd() for _ in range(total)]]
        self.ru_texts = self._text_pool(_WORDS.ru_sentences, _WORDS.ru_topics, _WORDS.ru_interests)
        self.en_texts = self._text_pool(_WORDS.en_sentences, _WORDS.en_topics, _WORDS.en_interests)

    def posts_by_author(self) -> list[list[int]]:
        by_author: list[list[int]] = [[] for _ in range(self.plan.users)]
        for post_id, author in zip(self.post_ids, self.post_authors, strict=True):
            by_author[author].append(post_id)  # ids ascend, so each list is in key order
        return by_author

    def _text_pool(self, sentences: Sequence[str], topics: Sequence[str], interests: Sequence[str]) -> list[bytes]:
        rnd = self.rnd
        pool = []
        for _ in range(_TEXT_POOL):
            parts = rnd.sample(sentences, rnd.randint(1, 3))
            if rnd.random() < 0.3:
                parts.append(rnd.choice(topics).format(i=rnd.choice(interests)))
            pool.append(_text(" ".join(parts)))
        return pool

    def posts_chunk(self, by_author: list[list[int]], start: int, stop: int) -> _Payload:
        id_bytes, choice, ru_texts, en_texts = self.id_bytes, self.rnd.choice, self.ru_texts, self.en_texts
        shift = GENERATOR_BITS + SEQUENCE_BITS
        parts: list[bytes] = []
        rows = 0
        for a in range(start, stop):
            posts = by_author[a]
            if not posts:
                continue
            texts = ru_texts if self.russian[a] else en_texts
            prefix = _FOUR_FIELDS + _INT8_LEN + id_bytes[a] + _INT8_LEN
            for post_id in posts:
                # created_at is the id's own timestamp (timestamp_ms, inlined), in microseconds
                # since PostgreSQL's epoch.
                created_us = ((post_id >> shift) + EPOCH_MS - _PG_EPOCH_MS) * 1000
                parts.append(prefix + _int8(post_id) + choice(texts) + _INT8_LEN + _int8(created_us))
            rows += len(posts)
        return _payload(parts, rows)

    def post_index_chunk(self, start: int, stop: int) -> _Payload:
        id_bytes = self.id_bytes
        parts = [
            _TWO_FIELDS + _INT8_LEN + _int8(post_id) + _INT8_LEN + id_bytes[author]
            for post_id, author in zip(self.post_ids[start:stop], self.post_authors[start:stop], strict=True)
        ]
        return _payload(parts, len(parts))


def _ranges(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Split indexes into consecutive (start, stop) ranges whose sizes add up to about `budget`."""
    bounds: list[tuple[int, int]] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        total += size
        if total >= budget:
            bounds.append((start, index + 1))
            start, total = index + 1, 0
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


# -- COPY ----------------------------------------------------------------------------------------


class _Copier:
    """Runs COPYs on a fixed set of connections; `submit` waits for a free one (backpressure)."""

    def __init__(self, connections: list[asyncpg.Connection]) -> None:
        self._connections = connections
        self._free: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        for conn in connections:
            self._free.put_nowait(conn)
        self._tasks: list[asyncio.Task[None]] = []
        self.rows: dict[str, int] = {}

    @classmethod
    async def open(cls, database_url: str, count: int) -> _Copier:
        return cls(list(await asyncio.gather(*(asyncpg.connect(database_url) for _ in range(count)))))

    async def submit(self, table: str, columns: Sequence[str], rows: list[Record] | _Payload) -> None:
        if not (rows.rows if isinstance(rows, _Payload) else rows):
            return
        conn = await self._free.get()
        self._raise_failures()
        self._tasks.append(asyncio.create_task(self._copy(conn, table, columns, rows)))

    async def _copy(
        self, conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: list[Record] | _Payload
    ) -> None:
        try:
            if isinstance(rows, _Payload):
                await conn.copy_to_table(table, source=_once(rows.data), columns=list(columns), format="binary")
                count = rows.rows
            else:
                await conn.copy_records_to_table(table, records=rows, columns=list(columns))
                count = len(rows)
            self.rows[table] = self.rows.get(table, 0) + count
        finally:
            self._free.put_nowait(conn)

    def _raise_failures(self) -> None:
        pending = []
        for task in self._tasks:
            if not task.done():
                pending.append(task)
            elif (exc := task.exception()) is not None:
                raise exc
        self._tasks = pending

    async def run(self, sql: str) -> None:
        conn = await self._free.get()
        try:
            await conn.execute(sql)
        finally:
            self._free.put_nowait(conn)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self._connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
            if not conn.is_closed():
                conn.terminate()


def _connections_for_cpus() -> int:
    # One COPY backend per core keeps PostgreSQL busy while Python generates; more only contend.
    return max(2, min(4, os.cpu_count() or 2))


# -- orchestration -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _id_generator(settings: Settings) -> AsyncIterator[IdGenerator]:
    if not settings.redis_url:
        yield IdGenerator(SEEDER_GENERATOR_ID)
        return
    client = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    lease = GeneratorLease(client)
    try:
        try:
            generator_id = await lease.acquire()
        except redis.exceptions.ConnectionError as exc:
            raise SettingsError(
                f"cannot reach SN_REDIS_URL to lease an id generator ({exc}); unset SN_REDIS_URL to seed"
                f" with the seeder's reserved generator id {SEEDER_GENERATOR_ID}"
            ) from exc
        ids = IdGenerator(generator_id)
        yield ids
        # IdGenerator borrows future milliseconds when it mints >4096 ids/ms; hold the lease until
        # the clock has passed the last one, so the next holder of this generator id cannot
        # mint an id we already used.
        last = ids.next_id()
        await asyncio.sleep(max(0.0, timestamp_ms(last) / 1000 - time.time()) + 0.002)
    finally:
        await lease.release()
        await client.aclose()


async def run_seed(settings: Settings, args: argparse.Namespace) -> None:
    plan = SeedPlan.from_args(args)
    if not settings.database_url:
        raise SettingsError("SN_DATABASE_URL is not set")
    started = time.perf_counter()
    await migrate(settings.database_url)
    hasher = PasswordService(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        concurrency=1,
    )
    try:
        password_hash = await asyncio.to_thread(hasher.hash_sync, plan.password)
    finally:
        hasher.close()

    async with _id_generator(settings) as ids:
        gen = _Generator(plan, ids, password_hash)
        copier = await _Copier.open(settings.database_url, _connections_for_cpus())
        try:
            await _load(gen, copier)
            await copier.drain()
            loaded = time.perf_counter()
            # Fresh bulk loads have no planner statistics until autovacuum gets to them; the first
            # feed queries after a seed should not be planned blind.
            await copier.run("ANALYZE users, user_emails, friendships, followers, posts, post_index")
            analyze_seconds = time.perf_counter() - loaded
        finally:
            await copier.close()
        generator_id = ids.generator_id

    if plan.ids_out is not None:
        plan.ids_out.parent.mkdir(parents=True, exist_ok=True)
        plan.ids_out.write_text("".join(f"{uid}\n" for uid in gen.user_ids))
    elapsed = time.perf_counter() - started
    rows = copier.rows
    total = sum(rows.values())
    print(
        f"seeded {plan.users} users ({rows.get('user_emails', 0)} emails), "
        f"{rows.get('friendships', 0)} follows (+{rows.get('followers', 0)} mirrored), "
        f"{rows.get('posts', 0)} posts (+{rows.get('post_index', 0)} indexed) "
        f"in {elapsed:.1f} s: {total} rows, {total / max(elapsed, 1e-9):,.0f} rows/s "
        f"(analyze {analyze_seconds:.1f} s, id generator {generator_id})"
    )
    if plan.ids_out is not None:
        print(f"user ids written to {plan.ids_out}")
    if gen.celebrity_ids:
        # Otherwise the only way to find them is a query over followers.
        print(
            f"celebrities ({plan.celebrity_followers} followers each): "
            + " ".join(str(uid) for uid in sorted(gen.celebrity_ids))
        )


async def _load(gen: _Generator, copier: _Copier) -> None:
    """Generate every table chunk by chunk; each chunk is copied while the next is generated.

    Generation runs in a worker thread so the event loop stays free to stream earlier chunks
    (and to renew the id generator lease); one chunk at a time, so `gen` needs no locking.
    """
    plan = gen.plan
    await asyncio.to_thread(gen.make_user_ids)
    for start in range(0, plan.users, _USER_CHUNK):
        users, emails = await asyncio.to_thread(gen.users_chunk, start, min(start + _USER_CHUNK, plan.users))
        await copier.submit("users", _USER_COLUMNS, users)
        await copier.submit("user_emails", ("email", "user_id"), emails)

    await asyncio.to_thread(gen.prepare_follows)
    per_chunk = max(1, _CHUNK_ROWS // max(1, plan.follows_per_user))
    for start in range(0, plan.users, per_chunk):
        payload = await asyncio.to_thread(gen.friendships_chunk, start, min(start + per_chunk, plan.users))
        await copier.submit("friendships", ("user_id", "friend_id"), payload)
    for start, stop in gen.followers_chunks():
        payload = await asyncio.to_thread(gen.followers_chunk, start, stop)
        await copier.submit("followers", ("author_id", "follower_id"), payload)

    await asyncio.to_thread(gen.prepare_posts)
    by_author = await asyncio.to_thread(gen.posts_by_author)
    # Post rows carry ~100 bytes of text: half the pair chunk keeps chunks of similar size.
    for start, stop in _ranges([len(posts) for posts in by_author], _CHUNK_ROWS // 2):
        payload = await asyncio.to_thread(gen.posts_chunk, by_author, start, stop)
        await copier.submit("posts", ("author_id", "id", "text", "created_at"), payload)
    for start in range(0, len(gen.post_ids), _CHUNK_ROWS):
        payload = await asyncio.to_thread(gen.post_index_chunk, start, start + _CHUNK_ROWS)
        await copier.submit("post_index", ("id", "author_id"), payload)


_USER_COLUMNS = (
    "id",
    "first_name",
    "second_name",
    "birthdate",
    "biography",
    "city",
    "gender",
    "interests",
    "email",
    "password_hash",
    "first_name_key",
    "second_name_key",
)
