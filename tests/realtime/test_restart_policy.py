from __future__ import annotations

import pytest

from sn.realtime.restart_policy import RestartDecision, RestartPolicy, RestartTracker

RESTART = RestartDecision.RESTART
GIVE_UP = RestartDecision.GIVE_UP


def test_restarts_while_under_the_limit() -> None:
    policy = RestartPolicy(max_restarts=3, window=10.0)
    assert policy.decide([], now=100.0) is RESTART
    assert policy.decide([95.0, 99.0], now=100.0) is RESTART


def test_gives_up_at_the_limit_within_the_window() -> None:
    policy = RestartPolicy(max_restarts=3, window=10.0)
    assert policy.decide([91.0, 95.0, 99.0], now=100.0) is GIVE_UP


def test_restarts_outside_the_window_are_forgotten() -> None:
    policy = RestartPolicy(max_restarts=2, window=10.0)
    # 90.0 is exactly one window ago: it no longer counts.
    assert policy.recent([50.0, 90.0, 95.0], now=100.0) == 1
    assert policy.decide([50.0, 90.0, 95.0], now=100.0) is RESTART


def test_zero_restarts_means_never_restart() -> None:
    assert RestartPolicy(max_restarts=0).decide([], now=0.0) is GIVE_UP


@pytest.mark.parametrize(("max_restarts", "window"), [(-1, 1.0), (1, 0.0), (1, -5.0)])
def test_rejects_invalid_configuration(max_restarts: int, window: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        RestartPolicy(max_restarts=max_restarts, window=window)


def test_tracker_gives_up_on_a_crash_loop() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=2, window=5.0))
    assert [tracker.on_crash(t) for t in (0.0, 1.0, 2.0)] == [RESTART, RESTART, GIVE_UP]
    assert (tracker.crashes, tracker.restarts) == (3, 2)
    # The refused restart is not recorded as one.
    assert tracker.restart_times == (0.0, 1.0)


def test_tracker_recovers_once_the_window_slides_and_prunes_history() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=2, window=5.0))
    tracker.on_crash(0.0)
    tracker.on_crash(1.0)
    assert tracker.on_crash(5.5) is RESTART  # the crash at 0.0 left the window
    assert tracker.restart_times == (1.0, 5.5)
    assert tracker.on_crash(100.0) is RESTART
    assert list(tracker.restart_times) == [100.0]
