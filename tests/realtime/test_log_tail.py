"""LogTail's coverage bookkeeping over an in-memory log (the logic), and through EventLog on a
real Redis (the reads it replaces)."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest
from redis.asyncio import Redis

from sn.protocol.messages import Event, event_to_json
from sn.realtime import eventlog as eventlog_module
from sn.realtime.eventlog import EventLog
from sn.realtime.log_tail import LogEntry, LogTail
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
    tail = LogTail(log.fetch, lookback=0)
    results = await asyncio.gather(*(tail.after(since, log.current, NOW) for since in (40, 45, 49, 50)))
    assert [ids(r) for r in results] == [list(range(41, 51)), list(range(46, 51)), [50], []]
    assert log.reads == [(41, None)]  # the first replay's read served the others


async def test_the_copy_grows_at_both_ends_and_reads_only_what_it_lacks() -> None:
    log = Log()
    log.append(30)
    tail = LogTail(log.fetch, lookback=0)
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
    tail = LogTail(log.fetch, lookback=0, max_entries=100)
    assert await tail.after(10, log.current, NOW) is None
    assert ids(await tail.after(30, log.current, NOW)) == list(range(31, 121))


async def test_entries_past_the_window_are_dropped_from_the_copy() -> None:
    log = Log()
    log.append(10, logged_ms=NOW - 700_000)  # older than the 600 s window
    log.append(10, logged_ms=NOW)
    tail = LogTail(log.fetch, lookback=0, max_age_ms=600_000)
    assert ids(await tail.after(0, log.current, NOW))[0] == 1  # returned once (the caller resyncs)...
    assert tail.size == 10  # ...but not kept


async def test_a_log_that_redis_lost_is_noticed_at_the_anchor() -> None:
    log = Log()
    log.append(40)
    tail = LogTail(log.fetch, lookback=0)
    assert ids(await tail.after(35, log.current, NOW)) == [36, 37, 38, 39, 40]
    assert tail.anchor == (40, NOW)
    tail.verify(40, NOW)  # the same entry there: the copy stays
    assert tail.size == 5
    log.entries.clear()  # Redis lost everything; ids start again from 1 and grow past the copy
    log.append(45, author=2, logged_ms=NOW + 1)
    tail.verify(40, log.entries[39].logged_ms)  # another entry under that id
    fresh = await tail.after(38, log.current, NOW)
    assert ids(fresh) == list(range(39, 46))
    assert fresh is not None
    assert {entry.author_id for entry in fresh} == {2}


async def test_entries_logged_after_the_counter_was_read_do_not_discard_the_copy() -> None:
    log = Log()
    log.append(110)
    tail = LogTail(log.fetch, lookback=0)
    assert ids(await tail.after(50, 100, NOW)) == list(range(51, 111))  # the log grew after GET counter
    assert ids(await tail.after(60, 105, NOW)) == list(range(61, 111))  # an earlier counter: still covered
    assert log.reads == [(51, None)]


async def test_a_cursor_in_the_part_dropped_for_age_is_answered_without_reading() -> None:
    log = Log()
    log.append(10, logged_ms=NOW - 700_000)
    log.append(10)
    tail = LogTail(log.fetch, lookback=0, max_age_ms=600_000)
    await tail.after(0, log.current, NOW)
    reads = len(log.reads)
    for _ in range(20):
        assert await tail.after(3, log.current, NOW) is None
    assert len(log.reads) == reads


async def test_a_copy_far_behind_the_log_starts_again_from_the_cursor() -> None:
    log = Log()
    log.append(5)
    tail = LogTail(log.fetch, lookback=0, max_entries=100)
    assert ids(await tail.after(0, log.current, NOW)) == [1, 2, 3, 4, 5]
    log.append(300)  # more than the copy may hold was logged since this worker last looked
    assert ids(await tail.after(300, log.current, NOW)) == [301, 302, 303, 304, 305]
    assert ids(await tail.after(205, log.current, NOW)) == list(range(206, 306))  # exactly the limit: served


_authors = itertools.count(8_800_000)


def _body(post: int, by: int) -> bytes:
    event = Event(event_id=0, type="post_created", post_id=str(post), author_user_id=str(by), post_text="t")
    return event_to_json(event)


async def test_replays_through_the_copy_match_the_log_in_redis(aredis: Redis, amux: MuxRedis) -> None:
    log = EventLog(amux)
    author, other = next(_authors), next(_authors)

    start, _ = await log.route_to_followers(_body(1, author), author, [])
    for post in range(2, 8):
        await log.route_to_followers(_body(post, other if post % 2 else author), other if post % 2 else author, [])
    replays = await asyncio.gather(*(log.replay(start - 1 + offset, {author}, limit=10) for offset in range(4)))
    posts = [[msgspec.json.decode(b)["post_id"] for _, b in replay.events] for replay in replays]
    assert posts == [["1", "2", "4", "6"], ["2", "4", "6"], ["4", "6"], ["4", "6"]]


async def test_replays_notice_that_redis_lost_the_log(
    aredis: Redis, amux: MuxRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log of this test's own: the session's server may log events into the shared one meanwhile.
    suffix = next(_authors)
    monkeypatch.setattr(eventlog_module, "LOG_KEY", f"t:rt:log:{suffix}")
    monkeypatch.setattr(eventlog_module, "COUNTER_KEY", f"t:rt:seq:{suffix}")
    log = EventLog(amux)
    before, after = next(_authors), next(_authors)
    for post in range(1, 4):
        await log.route_to_followers(_body(post, before), before, [])
    assert len((await log.replay(0, {before, after}, limit=10)).events) == 3
    await aredis.delete(f"t:rt:log:{suffix}", f"t:rt:seq:{suffix}")  # a Redis restart without persistence
    await asyncio.sleep(0.002)  # (a later millisecond: what the anchor compares)
    for post in range(10, 15):
        await log.route_to_followers(_body(post, after), after, [])
    replay = await log.replay(0, {before, after}, limit=10)
    assert [msgspec.json.decode(b)["post_id"] for _, b in replay.events] == ["10", "11", "12", "13", "14"]


async def test_a_read_also_takes_what_lies_just_before_the_cursor_and_indexes_celebrity_batches() -> None:
    log = Log()
    log.append(40)
    log.entries[35] = log.entries[35]._replace(body=b"celebrity", batch=(0, 2))  # id 36
    log.entries[38] = log.entries[38]._replace(body=b"celebrity", batch=(1, 2))  # id 39
    tail = LogTail(log.fetch, lookback=5)
    assert ids(await tail.after(38, log.current, NOW)) == [39, 40]
    assert log.reads == [(35, None)]  # 5 before the counter, not from the cursor
    assert tail.batches_of(b"celebrity") == [(36, 0, 2), (39, 1, 2)]
    assert tail.batches_of(b"1") == []
