"""Presence registry and event routing/replay against a real Redis."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis

from sn.protocol.messages import Event, event_from_json, event_to_json
from sn.realtime import eventlog as eventlog_module
from sn.realtime.eventlog import EventLog, Replay, celebrity_batch
from sn.realtime.presence import STREAMS_KEY, Presence, online_key, presence_key
from sn.storage.redis_mux import MuxRedis

_ids = itertools.count(50_000_000)


def body(post_id: int, author: int) -> bytes:
    return event_to_json(Event(event_id=0, type="post_created", post_id=str(post_id), author_user_id=str(author)))


async def test_presence_groups_online_users_by_worker_stream(amux: MuxRedis) -> None:
    presence = Presence(amux, ttl_seconds=30)
    a, b, c = next(_ids), next(_ids), next(_ids)
    await presence.refresh([a, b], "stream:w1")
    await presence.refresh([b], "stream:w2")  # b has tabs on two workers
    located = await presence.locate([a, b, c])
    assert located == {"stream:w1": [a, b], "stream:w2": [b]}
    await presence.leave([b], "stream:w1")
    assert await presence.locate([b]) == {"stream:w2": [b]}


async def test_presence_of_a_dead_worker_expires(aredis: Redis, amux: MuxRedis) -> None:
    presence = Presence(amux, ttl_seconds=30)
    user = next(_ids)
    await aredis.zadd(presence_key(user), {"stream:dead": 1.0})  # its last heartbeat expired long ago
    await presence.refresh([user], "stream:alive")
    assert await presence.locate([user]) == {"stream:alive": [user]}
    assert await aredis.zscore(presence_key(user), "stream:dead") is None  # swept on refresh


async def test_online_members_intersect_a_set_with_each_workers_online_users(aredis: Redis, amux: MuxRedis) -> None:
    presence = Presence(amux, ttl_seconds=30)
    a, b, c, stranger = next(_ids), next(_ids), next(_ids), next(_ids)
    w1, w2, w3 = (f"stream:{next(_ids)}:{n}" for n in (1, 2, 3))
    followers = f"test:followers:{next(_ids)}"
    assert await presence.online_members(followers, [w1, w2]) is None  # not cached: the caller loads it
    await aredis.sadd(followers, "0", a, b, c)  # (the cache's "0" marker matches no user)
    await presence.refresh([a, b, stranger], w1)
    await presence.refresh([b], w2)  # b has a tab on each worker
    await presence.refresh([stranger], w3)
    found = await presence.online_members(followers, [w1, w2, w3])
    assert found is not None
    assert {stream: sorted(users) for stream, users in found.items()} == {w1: sorted([a, b]), w2: [b]}
    await presence.leave([b], w1)
    assert await presence.online_members(followers, [w1, w2]) == {w1: [a], w2: [b]}
    assert await presence.online_members(followers, []) == {}
    # The online set lives as long as the worker's heartbeats keep it: a crashed worker's goes.
    assert 0 < await aredis.ttl(online_key(w1)) <= 30
    # A worker starting under a dead one's name (same node and worker name) starts empty.
    await presence.forget_worker(w1)
    assert await presence.online_members(followers, [w1, w2]) == {w2: [b]}


async def test_online_members_of_a_big_worker_are_read_a_page_at_a_time(aredis: Redis, amux: MuxRedis) -> None:
    presence = Presence(amux, ttl_seconds=30)
    online = [next(_ids) for _ in range(Presence.CHUNK * 3)]
    stream, followers = f"stream:{next(_ids)}", f"test:followers:{next(_ids)}"
    await presence.refresh(online, stream)
    await aredis.sadd(followers, "0", *online[::3], next(_ids))
    pages: list[object] = []
    script = presence._online_page

    async def counted(*, keys: list[str], args: list[object]) -> object:
        pages.append(args[0])
        return await script(keys=keys, args=args)

    presence._online_page = counted  # type: ignore[method-assign]
    assert await presence.online_members(followers, [stream]) == {stream: sorted(online[::3])}
    assert len(pages) >= 3  # SSCAN pages of about CHUNK members each, not one SINTER
    await aredis.delete(followers)  # the cache expired: the caller has to load it
    assert await presence.online_members(followers, [stream]) is None


async def test_a_workers_online_users_are_listed_a_page_at_a_time(amux: MuxRedis) -> None:
    presence = Presence(amux, ttl_seconds=30)
    stream = f"stream:{next(_ids)}"
    users = [next(_ids) for _ in range(Presence.CHUNK * 2 + 7)]
    await presence.refresh(users, stream)
    pages = [page async for page in presence.online_users(stream)]
    assert len(pages) >= 2
    assert sorted(u for page in pages for u in page) == sorted(users)
    assert [page async for page in presence.online_users(f"stream:{next(_ids)}")] == []


async def test_refresh_writes_in_small_calls(aredis: Redis, amux: MuxRedis) -> None:
    """A big refresh is split so that no single script holds Redis for long."""
    presence = Presence(amux, ttl_seconds=30)
    users = [next(_ids) for _ in range(Presence.REFRESH_CHUNK * 2 + 1)]
    stream = f"stream:{next(_ids)}"
    calls: list[int] = []
    script = presence._refresh

    async def counted(*, keys: list[str], args: list[object]) -> object:
        calls.append(len(keys) - 2)  # (the first keys: the online set and the registry)
        return await script(keys=keys, args=args)

    presence._refresh = counted  # type: ignore[method-assign]
    assert await presence.refresh(users, stream) == len(users)
    assert calls == [Presence.REFRESH_CHUNK, Presence.REFRESH_CHUNK, 1]
    assert await aredis.scard(online_key(stream)) == len(users)
    assert await presence.locate(users) == {stream: users}


# The two ways the routing script finds online followers: every worker's online set (few
# workers), or each follower's presence key (many). Whichever it takes, the answer is the same.
LOOKUPS = {"online sets": 1_000_000, "presence keys": 0}


@pytest.fixture(params=list(LOOKUPS))
def routing_log(request: pytest.FixtureRequest, amux: MuxRedis) -> EventLog:
    log = EventLog(amux)
    log.ONLINE_SET_MAX_WORKERS = LOOKUPS[request.param]
    return log


async def test_route_to_followers_is_logged_and_reaches_online_streams(
    aredis: Redis, amux: MuxRedis, routing_log: EventLog
) -> None:
    presence, log = Presence(amux), routing_log
    author, online, offline, elsewhere = next(_ids), next(_ids), next(_ids), next(_ids)
    stream, other = f"sn:rt:stream:test:{author}", f"sn:rt:stream:test:{author}:other"
    await presence.refresh([online], stream)
    await presence.refresh([elsewhere], other)  # online, but not a follower: not a recipient
    event_id, reached = await log.route_to_followers(body(1, author), author, [offline, online])
    assert reached == 1
    assert await aredis.xlen(other) == 0
    entries = await aredis.xrange(stream)
    assert len(entries) == 1
    fields = entries[0][1]
    assert int(fields[b"e"]) == event_id
    assert fields[b"r"] == str(online).encode()
    assert event_from_json(fields[b"b"]).post_id == "1"
    # Followers beyond one chunk: the chunks' calls go out together and count together.
    many = [next(_ids) for _ in range(EventLog.ROUTE_CHUNK * 2 + 5)]
    # One online follower in each chunk: the first of one, the last of another, one in the middle.
    picked = [many[0], many[2 * EventLog.ROUTE_CHUNK - 1], many[-3]]
    await presence.refresh(picked, stream)
    later_id, reached = await log.route_to_followers(body(2, author), author, many)
    assert reached == 3
    assert later_id > event_id
    routed = [(int(f[b"e"]), f[b"r"]) for _, f in (await aredis.xrange(stream))[1:]]
    assert routed == [(later_id - 2 + n, str(user).encode()) for n, user in enumerate(picked)]
    event_id = later_id
    # The event is in the log for whoever reconnects.
    replay = await log.replay(event_id - 1, {author}, limit=10)
    assert not replay.gap
    assert [eid for eid, _ in replay.events] == [event_id]


async def test_a_follower_with_tabs_on_two_workers_is_routed_to_both(
    aredis: Redis, amux: MuxRedis, routing_log: EventLog
) -> None:
    presence, log = Presence(amux), routing_log
    author, follower = next(_ids), next(_ids)
    first, second = (f"sn:rt:stream:test:{author}:{n}" for n in (1, 2))
    await presence.refresh([follower], first)
    await presence.refresh([follower], second)
    _, reached = await log.route_to_followers(body(3, author), author, [follower])
    assert reached == 2
    assert [(await aredis.xrange(s))[0][1][b"r"] for s in (first, second)] == [str(follower).encode()] * 2
    await presence.leave([follower], first)
    _, reached = await log.route_to_followers(body(4, author), author, [follower])
    assert reached == 1
    assert (await aredis.xlen(first), await aredis.xlen(second)) == (1, 2)


async def test_a_dead_workers_registration_is_swept_when_its_online_set_is_gone(aredis: Redis, amux: MuxRedis) -> None:
    presence, log = Presence(amux, ttl_seconds=30), EventLog(amux)
    log.ONLINE_SET_MAX_WORKERS = LOOKUPS["online sets"]
    author, follower = next(_ids), next(_ids)
    alive, dead = f"sn:rt:stream:test:{author}:alive", f"sn:rt:stream:test:{author}:dead"
    await presence.refresh([follower], alive)
    await presence.refresh([follower], dead)
    assert {alive, dead} <= set(await presence.streams())
    await aredis.delete(online_key(dead))  # what its TTL does once a crashed worker stops refreshing
    _, reached = await log.route_to_followers(body(5, author), author, [follower])
    assert reached == 1
    assert not await aredis.sismember(STREAMS_KEY, dead)  # swept by the routing script
    await aredis.sadd(STREAMS_KEY, dead)
    assert dead not in await presence.streams()  # ...and by the celebrity's listing
    assert not await aredis.sismember(STREAMS_KEY, dead)
    await presence.forget_worker(alive)  # a worker that stops (or starts) leaves the registry
    assert alive not in await presence.streams()


@pytest.fixture
def replay_log(amux: MuxRedis) -> EventLog:
    return EventLog(amux)


async def test_replay_filters_by_author_and_detects_gaps(replay_log: EventLog) -> None:
    log = replay_log
    followed, stranger = next(_ids), next(_ids)
    first, _ = await log.route_to_followers(body(10, followed), followed, [])
    await log.route_to_followers(body(11, stranger), stranger, [])
    last, _ = await log.route_to_followers(body(12, followed), followed, [])
    replay = await log.replay(first - 1, {followed}, limit=10)
    assert [event_from_json(b).post_id for _, b in replay.events] == ["10", "12"]
    assert (await log.replay(last, {followed}, limit=10)).events == []
    assert (await log.replay(last + 1000, {followed}, limit=10)).gap  # cursor never issued
    assert (await log.replay(first - 1, {followed}, limit=1)).gap  # more missed than the cap


async def test_replay_gives_a_post_logged_several_times_once(
    replay_log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog_module, "LOG_KEY", f"t:rt:log:{next(_ids)}")  # (see below)
    # A celebrity post: logged as its fan-out starts, then again with each batch it routes.
    author, other = next(_ids), next(_ids)
    first = await replay_log.route(body(40, author), author, {})
    second = await replay_log.route(body(41, other), other, {})
    await replay_log.route(body(40, author), author, {})
    await replay_log.route(body(40, author), author, {})
    replay = await replay_log.replay(first - 1, {author, other}, limit=2)
    assert not replay.gap  # the repeats do not count against the limit either
    assert [(event_id, event_from_json(b).post_id) for event_id, b in replay.events] == [(first, "40"), (second, "41")]


async def test_replay_older_than_the_log_is_a_gap(aredis: Redis, replay_log: EventLog) -> None:
    log = replay_log
    author = next(_ids)
    first, _ = await log.route_to_followers(body(20, author), author, [])
    await aredis.xtrim(eventlog_module.LOG_KEY, minid=f"{first + 1}-0")  # trimmed away
    await log.route_to_followers(body(21, author), author, [])
    assert (await log.replay(first - 1, {author}, limit=10)).gap


async def test_follow_list_is_looked_up_only_when_there_is_something_to_filter(
    replay_log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log of this test's own: the session's server may log events into the shared one meanwhile.
    monkeypatch.setattr(eventlog_module, "LOG_KEY", f"t:rt:log:{next(_ids)}")
    author = next(_ids)
    calls: list[int] = []

    async def authors(candidates: set[int]) -> set[int]:
        assert candidates == {author}  # asked only about the authors of what was missed
        calls.append(1)
        return {author}

    last, _ = await replay_log.route_to_followers(body(30, author), author, [])
    nothing = await replay_log.replay(last, authors, limit=10)  # the usual reconnect: missed nothing
    assert not nothing.gap
    assert nothing.events == []
    assert calls == []
    missed = await replay_log.replay(last - 1, authors, limit=10)
    assert [event_id for event_id, _ in missed.events] == [last]
    assert calls == [1]


async def test_count_online_counts_a_user_once_however_many_workers_hold_them(amux: MuxRedis) -> None:
    presence = Presence(amux, ttl_seconds=30)
    presence.CHUNK = 3  # several SSCAN pages per set
    w1, w2, w3 = (f"stream:{next(_ids)}:{n}" for n in (1, 2, 3))
    everywhere, two, alone = next(_ids), next(_ids), [next(_ids) for _ in range(10)]
    await presence.refresh([everywhere, two, *alone[:5]], w1)
    await presence.refresh([everywhere, two, *alone[5:8]], w2)
    await presence.refresh([everywhere, *alone[8:]], w3)
    assert await presence.count_online([w1, w2, w3]) == 12
    assert await presence.count_online([w2, w3]) == 7
    assert await presence.count_online([w3]) == 3
    assert await presence.count_online([]) == 0
    await presence.leave([everywhere], w1)
    assert await presence.count_online([w1, w2, w3]) == 12  # still on w2 and w3
    await presence.leave([everywhere], w2)
    await presence.leave([everywhere], w3)
    assert await presence.count_online([w1, w2, w3]) == 11


async def test_a_redelivered_event_is_routed_once(aredis: Redis, amux: MuxRedis, routing_log: EventLog) -> None:
    # The bus delivers at least once (a publisher confirm or an ack lost while the broker was away):
    # routed twice, the post would reach sockets twice under two event ids.
    presence, log = Presence(amux), routing_log
    author, follower = next(_ids), next(_ids)
    stream = f"sn:rt:stream:test:{author}:once"
    await presence.refresh([follower], stream)
    once = f"post_created:{author}"
    first_id, reached = await log.route_to_followers(body(5, author), author, [follower], once_key=once)
    assert (first_id > 0, reached) == (True, 1)
    assert await log.route_to_followers(body(5, author), author, [follower], once_key=once) == (0, 0)
    assert await aredis.xlen(stream) == 1
    # Another event (another key) is routed as usual.
    other_id, reached = await log.route_to_followers(body(6, author), author, [follower], once_key=once + ":x")
    assert other_id > first_id
    assert reached == 1


async def test_a_celebrity_post_is_not_replayed_to_a_client_that_saw_its_batch(replay_log: EventLog) -> None:
    """A celebrity post's batches are logged one by one over seconds. A client that got the post
    in its batch and reconnects before the last batch finds later batches after its cursor: it is
    not sent the post again. One whose batch comes after its cursor is, and so is one not in a
    batch yet seen (the replay cannot tell: it sends rather than lose)."""
    log = replay_log
    author, other = next(_ids), next(_ids)
    count = 4
    users = [next(_ids) for _ in range(40)]
    by_batch: dict[int, list[int]] = {k: [] for k in range(count)}
    for user in users:
        by_batch[celebrity_batch(user, count)].append(user)
    assert all(by_batch.values())  # (the ids spread over every batch)
    post = body(60, author)
    await log.route(post, author, {})  # logged as the fan-out starts
    logged = [(await log.route_to_followers(post, author, by_batch[k], batch=(k, count)))[0] for k in range(count)]
    unrelated = (await log.route_to_followers(body(61, other), other, []))[0]

    def posts(replay: Replay) -> list[str]:
        assert not replay.gap
        return [event_from_json(b).post_id for _, b in replay.events]

    early, late = by_batch[0][0], by_batch[count - 1][0]
    # Saw its batch (the first), then an unrelated event: the later batches' entries lie after its cursor.
    assert posts(await log.replay(logged[0], {author}, limit=10, user_id=early)) == []
    assert posts(await log.replay(logged[0], {author, other}, limit=10, user_id=early)) == ["61"]
    # Its batch is the last one, after the cursor: the post is replayed.
    assert posts(await log.replay(logged[0], {author}, limit=10, user_id=late)) == ["60"]
    # No user given: the old answer.
    assert posts(await log.replay(logged[0], {author}, limit=10)) == ["60"]
    # A cursor before every batch: replayed to anybody.
    assert posts(await log.replay(logged[0] - 1, {author}, limit=10, user_id=early)) == ["60"]
    assert unrelated > logged[-1]


def test_celebrity_batches_are_a_function_of_the_id_and_even() -> None:
    sizes = [0] * 10
    for user in range(387_094_325_848_200_414, 387_094_325_848_200_414 + 100_000 * 4096, 4096):
        sizes[celebrity_batch(user, 10)] += 1
    # Snowflake-like ids that differ only above their 12 low bits still spread evenly.
    assert min(sizes) > 9_000
    assert max(sizes) < 11_000
    assert {celebrity_batch(user, 1) for user in range(100)} == {0}
