from __future__ import annotations

import pytest

from sn.actors.history import EventHistory, Resync, plan_replay
from sn.actors.messages import Event


def ev(event_id: int) -> Event:
    return Event(event_id, "post_created", f"p{event_id}", "author", post_text=f"text {event_id}")


def ids(result: list[Event] | Resync) -> list[int]:
    assert isinstance(result, list), result
    return [e.event_id for e in result]


def filled(count: int, max_events: int = 100, max_age: float | None = None) -> EventHistory:
    history = EventHistory(max_events, max_age)
    for i in range(1, count + 1):
        history.append(ev(i), now=float(i))
    return history


def test_replays_missed_events_in_order() -> None:
    history = filled(5)
    assert ids(history.since(2, now=5.0)) == [3, 4, 5]
    assert ids(history.since(0, now=5.0)) == [1, 2, 3, 4, 5]


def test_up_to_date_client_gets_nothing() -> None:
    assert filled(5).since(5, now=5.0) == []
    assert EventHistory(10).since(0, now=0.0) == []


def test_append_ignores_duplicates_and_stale_ids() -> None:
    history = filled(3)
    assert history.append(ev(3), now=4.0) is False
    assert history.append(ev(1), now=4.0) is False
    assert history.append(ev(4), now=4.0) is True
    assert len(history) == 4
    assert history.last_event_id == 4


def test_count_limit_evicts_oldest_and_resyncs_clients_behind_it() -> None:
    history = filled(10, max_events=4)
    assert len(history) == 4
    assert (history.oldest_event_id, history.evicted_through) == (7, 6)
    # A client at 6 lost nothing: it has 6 and we still hold 7..10.
    assert ids(history.since(6, now=10.0)) == [7, 8, 9, 10]
    result = history.since(3, now=10.0)
    assert isinstance(result, Resync)
    assert (result.since, result.oldest_available) == (3, 7)
    assert "refetch" in result.message


def test_age_limit_evicts_and_resyncs() -> None:
    history = filled(5, max_age=2.5)  # appended at t=1..5, so 1 and 2 are already too old
    assert history.oldest_event_id == 3
    assert ids(history.since(2, now=5.0)) == [3, 4, 5]
    result = history.since(2, now=7.0)  # now 3 and 4 expire too
    assert result == Resync(since=2, oldest_available=5)
    assert history.prune(now=100.0) == 1
    assert len(history) == 0


def test_everything_expired_still_detects_the_gap() -> None:
    history = filled(3, max_age=1.0)
    history.prune(now=50.0)
    assert history.since(3, now=50.0) == []  # client had everything
    assert history.since(1, now=50.0) == Resync(since=1, oldest_available=None)


def test_cursor_ahead_of_history_forces_resync() -> None:
    # E.g. the server restarted and its per-user counter began again at 1.
    result = filled(3).since(40, now=3.0)
    assert isinstance(result, Resync)
    assert "ahead" in result.message


@pytest.mark.parametrize(("max_events", "max_age"), [(0, None), (5, 0.0)])
def test_rejects_invalid_limits(max_events: int, max_age: float | None) -> None:
    with pytest.raises(ValueError, match="must be"):
        EventHistory(max_events, max_age)


def test_plan_replay_assumes_contiguous_ids_without_eviction_info() -> None:
    held = [(5, ev(5)), (6, ev(6)), (7, ev(7))]
    assert ids(plan_replay(4, held)) == [5, 6, 7]
    assert ids(plan_replay(6, held)) == [7]
    assert plan_replay(3, held) == Resync(since=3, oldest_available=5)


def test_plan_replay_sorts_unordered_store_output() -> None:
    held = [(7, ev(7)), (5, ev(5)), (6, ev(6))]
    assert ids(plan_replay(5, held)) == [6, 7]


def test_plan_replay_prefers_explicit_eviction_watermark() -> None:
    # Ids 5 and 7 held, 6 was deleted individually; eviction stopped at 4.
    held = [(5, ev(5)), (7, ev(7))]
    assert ids(plan_replay(4, held, evicted_through=4)) == [5, 7]
    assert plan_replay(3, held, evicted_through=4) == Resync(since=3, oldest_available=5)


def test_plan_replay_uses_counter_when_store_is_empty() -> None:
    assert plan_replay(9, [], latest_event_id=9) == []
    assert plan_replay(4, [], latest_event_id=9) == Resync(since=4, oldest_available=None)
    assert plan_replay(0, []) == []
