"""Event-loop stalls and garbage-collector pauses, measured inside each worker.

Everything a worker does shares one event loop, so a stall of any kind (a long computation, a
big reply decoded in one go, a cyclic collection over thousands of sockets' objects) delays every
request and delivery of that worker by its length. Operators see the distributions in /metrics
(`sn_event_loop_lag_seconds`, `sn_gc_pause_seconds`) and, above a threshold, a log line saying
how long the loop was stuck and what the collector did meanwhile.

The measuring is plain code (`StallMeter`); the task and the `gc.callbacks` hook are thin.
A GC callback must not take locks (a collection can start while the same thread holds the lock
that a Prometheus observation takes), so it only appends to a list the sampling task drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sn.metrics import metrics
from sn.tasks import cancel_and_wait

log = logging.getLogger("sn.loop")


class StallMeter:
    """Records GC pauses as they end and turns sampler overshoot into stalls (no I/O)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._gc_started: float | None = None
        # (generation, seconds) per finished collection since the last drain; bounded, in case
        # nothing drains it for a while.
        self.pauses: deque[tuple[int, float]] = deque(maxlen=1000)

    def gc_event(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = self._clock()
        elif phase == "stop" and self._gc_started is not None:
            self.pauses.append((int(info.get("generation", 0)), self._clock() - self._gc_started))
            self._gc_started = None

    def drain_pauses(self) -> list[tuple[int, float]]:
        pauses = list(self.pauses)
        self.pauses.clear()
        return pauses


class LoopMonitor:
    def __init__(self, *, interval: float = 0.02, warn_after: float = 0.1) -> None:
        self._interval = interval
        self._warn_after = warn_after
        self.meter = StallMeter()
        self._task: asyncio.Task[None] | None = None
        self.worst_lag = 0.0
        self._quiet_until = 0.0

    def start(self) -> None:
        gc.callbacks.append(self.meter.gc_event)
        self._task = asyncio.create_task(self._run(), name="loop-monitor")
        self._task.add_done_callback(self._finished)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        # However the sampler ends, the collector stops calling into it.
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.meter.gc_event)
        if not task.cancelled() and task.exception() is not None:
            log.error("loop monitor stopped: %r", task.exception())

    async def _run(self) -> None:
        lag_histogram = metrics().loop_lag
        gc_histogram = metrics().gc_pause
        for generation in range(3):  # every series exists from the start, at zero
            gc_histogram.labels(generation=str(generation))
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self._interval)
            lag = time.perf_counter() - asked - self._interval
            lag_histogram.observe(max(lag, 0.0))
            pauses = self.meter.drain_pauses()
            for generation, seconds in pauses:
                gc_histogram.labels(generation=str(generation)).observe(seconds)
            self.worst_lag = max(self.worst_lag, lag)
            if lag >= self._warn_after and time.monotonic() >= self._quiet_until:
                # At most one line a second: an overloaded worker would otherwise log every sample.
                self._quiet_until = time.monotonic() + 1.0
                in_gc = sum(seconds for _, seconds in pauses)
                log.warning(
                    "event loop stalled for %.0f ms (garbage collection: %.0f ms in %d run(s), generations %s)",
                    lag * 1000,
                    in_gc * 1000,
                    len(pauses),
                    sorted({generation for generation, _ in pauses}),
                )
