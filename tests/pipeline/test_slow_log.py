"""The slow-delivery log's pieces, as plain code: phase timing and the age test."""

from __future__ import annotations

import logging
import time

import pytest

from sn.ids import IdGenerator, timestamp_ms
from sn.pipeline.slow_log import PhaseClock, oldest_age_ms, report


def test_phases_are_consecutive_and_start_where_the_clock_was_started() -> None:
    started = time.perf_counter() - 0.5  # e.g. the nudge a drain answers came half a second ago
    clock = PhaseClock(started)
    clock.mark("waited")
    time.sleep(0.02)
    clock.mark("select")
    (waited_name, waited), (select_name, selected) = clock.phases
    assert (waited_name, select_name) == ("waited", "select")
    assert 0.5 <= waited < 0.6
    assert 0.02 <= selected < 0.1
    assert clock.describe().startswith("waited=5")
    assert " select=" in clock.describe()


def test_the_oldest_post_is_found_by_its_ids_timestamp() -> None:
    ids = IdGenerator(7)
    older, newer = ids.next_id(), ids.next_id()
    now = timestamp_ms(older) / 1000 + 0.1
    found = oldest_age_ms([newer, older], now=now)
    assert found is not None
    assert found[0] == older
    assert found[1] == pytest.approx(100, abs=1)
    assert oldest_age_ms([]) is None


def test_only_a_step_carrying_a_post_over_the_threshold_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    old_post = IdGenerator(8).next_id()
    time.sleep(0.03)
    clock = PhaseClock()
    clock.mark("route")
    with caplog.at_level(logging.INFO, logger="sn.delivery.slow"):
        assert not report("its fan-out", [old_post], 10_000, clock)
        assert not report("its fan-out", [old_post], 0, clock)  # 0: off
        assert not report("its fan-out", [], 1, clock)
        assert report("its fan-out", [old_post], 20, clock, "; 3 followers")
    (record,) = caplog.records
    assert record.getMessage().startswith(f"slow delivery: post {old_post} ")
    assert record.getMessage().endswith(f"after its fan-out ({clock.describe()}); 3 followers")
