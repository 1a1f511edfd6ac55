"""LogTail's coverage bookkeeping over an in-memory log (the logic), and through EventLog on a
real Redis (the reads it replaces)."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from redis.asyncio import Redis

from sn.actors.messages import Event, event_to_json
from sn.storage.eventlog import EventLog
from sn.storage.log_tail import LogEntry, LogTail
from sn.storage.redis_mux import MuxRedis

NOW = 1_000_000_000


class Log:
    """A log with contiguous ids, as the routing scripts write it; records each read."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.reads: list[tuple[int, int | None]] = []

    def append(self, count: int, *, author: int = 1, logged_ms: int = NOW) -> None:
        for _ in range(count):
            event_id = len(self.entries) + 1
            self.entries.append(LogEntry(event_id, author, logged_ms, b"%d" % event_id))

    @property
    def current(self) -> int:
        return len(self.entries)

    async def fetch(self, low: int, high: int | None, count: int) -> list[LogEntry]:
        self.reads.append((low, high))
        await asyncio.sleep(0)  # a real read yields: concurrent replays pile up behind it
        top = len(self.entries) if high is None else high
        return self.entries[low - 1 : top][:count]


def ids(entries: list[LogEntry] | None) -> list[int]:
    assert entries is not None
    return [entry.event_id for entry in entries]


async def test_concurrent_replays_share_one_read() -> None:
    log, tail = Log(), None
    log.append(50)
    tail = LogTail(log.fetch)
    results = await asyncio.gather(*(tail.after(since, log.current, NOW) for since in (40, 45, 49, 50)))
    assert [ids(r) for r in results] == [list(range(41, 51)), list(range(46, 51)), [50], []]
    assert log.reads == [(41, None)]  # the first replay's read served the others


async def test_the_copy_grows_at_both_ends_and_reads_only_what_it_lacks() -> None:
    log = Log()
    log.append(30)
    tail = LogTail(log.fetch)
    assert ids(await tail.after(20, log.current, NOW)) == list(range(21, 31))
    log.append(5)
    assert ids(await tail.after(28, log.current, NOW)) == list(range(29, 36))
    assert ids(await tail.after(10, log.current, NOW)) == list(range(11, 36))
    assert log.reads == [(21, None), (31, None), (11, 20)]
    assert ids(await tail.after(15, log.current, NOW)) == list(range(16, 36))
    assert len(log.reads) == 3  # covered: no read at all


async def test_too_much_since_the_cursor_is_a_gap_not_a_partial_replay() -> None:
    log = Log()
    log.append(120)
    tail = LogTail(log.fetch, max_entries=100)
    assert await tail.after(10, log.current, NOW) is None
    assert ids(await tail.after(30, log.current, NOW)) == list(range(31, 121))


async def test_entries_past_the_window_are_dropped_from_the_copy() -> None:
    log = Log()
    log.append(10, logged_ms=NOW - 700_000)  # older than the 600 s window
    log.append(10, logged_ms=NOW)
    tail = LogTail(log.fetch, max_age_ms=600_000)
    assert ids(await tail.after(0, log.current, NOW))[0] == 1  # returned once (the caller resyncs)...
    assert tail.size == 10  # ...but not kept


async def test_a_counter_that_went_back_means_another_log() -> None:
    log = Log()
    log.append(40)
    tail = LogTail(log.fetch)
    assert ids(await tail.after(35, log.current, NOW)) == [36, 37, 38, 39, 40]
    log.entries.clear()  # Redis lost everything; ids start again from 1
    log.append(3, author=2)
    fresh = await tail.after(0, log.current, NOW)
    assert ids(fresh) == [1, 2, 3]
    assert fresh is not None
    assert {entry.author_id for entry in fresh} == {2}


_authors = itertools.count(8_800_000)


async def test_replays_through_the_copy_match_the_log_in_redis(aredis: Redis, amux: MuxRedis) -> None:
    log = EventLog(aredis, mux=amux)
    author, other = next(_authors), next(_authors)

    def body(post: int, by: int) -> bytes:
        event = Event(event_id=0, type="post_created", post_id=str(post), author_user_id=str(by), post_text="t")
        return event_to_json(event)

    start, _ = await log.route_to_followers(body(1, author), author, [])
    for post in range(2, 8):
        await log.route_to_followers(body(post, other if post % 2 else author), other if post % 2 else author, [])
    replays = await asyncio.gather(*(log.replay(start - 1 + offset, {author}, limit=10) for offset in range(4)))
    posts = [[msgspec.json.decode(b)["post_id"] for _, b in replay.events] for replay in replays]
    assert posts == [["1", "2", "4", "6"], ["2", "4", "6"], ["4", "6"], ["4", "6"]]
