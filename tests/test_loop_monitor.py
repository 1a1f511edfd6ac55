"""The event-loop stall and GC-pause monitor: the meter as plain code, the monitor in a real loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time

import pytest

from sn.loop_monitor import LoopMonitor, StallMeter


def test_meter_times_each_collection_between_its_start_and_stop() -> None:
    now = [10.0]
    meter = StallMeter(clock=lambda: now[0])
    meter.gc_event("start", {"generation": 2})
    now[0] += 0.04
    meter.gc_event("stop", {"generation": 2, "collected": 0})
    meter.gc_event("stop", {"generation": 0})  # a stop without its start (installed mid-collection)
    assert meter.drain_pauses() == [(2, pytest.approx(0.04))]
    assert meter.drain_pauses() == []


async def test_monitor_reports_a_blocked_loop_and_the_collections_in_it(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LoopMonitor(interval=0.01, warn_after=0.08)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        monitor._quiet_until = 0.0  # (whatever the machine did so far, this stall gets its line)
        with caplog.at_level(logging.WARNING, logger="sn.loop"):
            gc.collect()
            time.sleep(0.15)  # the loop is stuck: no timer can run
            await asyncio.sleep(0.05)
        assert monitor.worst_lag >= 0.1
        warnings = [r.getMessage() for r in caplog.records if r.name == "sn.loop"]
        assert len(warnings) == 1  # one line a second at most, however many samples were late
        assert warnings[0].startswith("event loop stalled for ")
        # The forced full collection is named (a young one may have run too).
        assert re.search(r"garbage collection: \d+ ms in \d+ run\(s\), generations \[(\d, )*2\]\)", warnings[0])
    finally:
        await monitor.stop()
    assert monitor.meter.gc_event not in gc.callbacks
