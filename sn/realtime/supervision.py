"""Long-running per-worker loops (router, consumers, heartbeats) under a restart policy.

These actors are driven by an external source (a Redis stream, a bus queue) rather than by a
mailbox, so they are plain coroutines; what they share with mailbox actors is supervision:
a crash restarts the loop after a short backoff.

Two kinds of crash, told apart by the exception:

- A dependency that does not answer (connection refused or reset, a timeout): the loop waits
  for it, retrying with a backoff capped at ``OUTAGE_BACKOFF_MAX`` so that it resumes within a
  couple of seconds of the dependency's return. These never make a loop give up: an outage
  longer than the restart window must not leave a worker that runs but delivers nothing.
- Anything else (a bug, a reply the code does not expect) counts against `RestartPolicy`; past
  it the loop gives up instead of spinning. A loop marked critical (the worker delivers nothing
  without it) that gives up ends the worker (``on_give_up``), so the process manager starts a
  fresh one: never a worker that answers /ready 200 while it delivers nothing.

/ready (503, naming the loop) and the ``sn_loop_failing`` metric report a loop that gave up and one
that crashed ``STRUGGLING_CRASHES`` times within ``STRUGGLING_WINDOW`` seconds and again within the
last ``RECENT_SECONDS``. One waiting for a dependency (in its backoff after an outage, or restarted
from it less than ``OUTAGE_RECENT_SECONDS`` ago) is listed by /ready without failing it: every worker
of every pod sees the same outage, and keeping them all out of the load balancer would extend it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable

import asyncpg
import redis.exceptions

from sn.metrics import metrics
from sn.realtime.restart_policy import RestartDecision, RestartPolicy, RestartTracker
from sn.tasks import cancel_and_wait

log = logging.getLogger("sn.realtime.supervision")

OUTAGE_BACKOFF_MAX = 2.0
STRUGGLING_CRASHES = 3
STRUGGLING_WINDOW = 30.0
RECENT_SECONDS = 10.0
OUTAGE_RECENT_SECONDS = 1.0
# A worker ending itself stops gracefully (sockets get 1001); past this it exits outright.
EXIT_GRACE_SECONDS = 15.0
# How status() begins for a loop that only waits out an outage (/ready reports it, still 200).
WAITING_FOR_A_DEPENDENCY = "waiting for a dependency"

# "The dependency is not answering": OSError covers ConnectionError and TimeoutError (asyncio's
# too); aio-pika's connection errors derive from ConnectionError.
_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
)


def is_outage(exc: BaseException) -> bool:
    # redis-py reports a server that is loading its data set, or a read-only replica after a
    # failover, as a ResponseError: the server answers but cannot serve yet.
    if isinstance(exc, redis.exceptions.BusyLoadingError | redis.exceptions.ReadOnlyError):
        return True
    return isinstance(exc, _OUTAGES)


class SupervisedLoop:
    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        policy: RestartPolicy | None = None,
        critical: bool = False,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._body = body
        self._tracker = RestartTracker(policy or RestartPolicy(max_restarts=10, window=60.0))
        self._task: asyncio.Task[None] | None = None
        self.critical = critical
        self._on_give_up = on_give_up
        self.failed = False
        self.last_error: str | None = None
        self.crashes = 0
        self._recent: deque[float] = deque(maxlen=STRUGGLING_CRASHES)  # crashes that were not outages
        self._waiting_until = -1e9  # waiting for a dependency until then (backoff, then a moment)
        self._outages_in_a_row = 0
        self._reported_failing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def restarts(self) -> int:
        return self._tracker.restarts

    @property
    def struggling(self) -> bool:
        """Gave up, or keeps crashing (what /ready reports)."""
        if self.failed:
            return True
        now, recent = time.monotonic(), self._recent
        if now < self._waiting_until:
            return True
        return (
            len(recent) == STRUGGLING_CRASHES
            and now - recent[0] <= STRUGGLING_WINDOW
            and now - recent[-1] <= RECENT_SECONDS
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            try:
                await self._body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.crashes += 1
                outage = is_outage(exc)
                backoff = min(0.1 * 2 ** min(self._outages_in_a_row + 1, 5), OUTAGE_BACKOFF_MAX)
                if outage:
                    self._waiting_until = time.monotonic() + backoff + OUTAGE_RECENT_SECONDS
                else:
                    self._recent.append(time.monotonic())
                metrics().loop_crashes.labels(self.name).inc()
                self._report()
                if outage:
                    # Waiting for a dependency: retried for as long as it takes, never given up.
                    self._outages_in_a_row += 1
                    log.warning("%s: dependency unavailable (%s); retrying", self.name, self.last_error)
                    await asyncio.sleep(backoff)
                    continue
                self._outages_in_a_row = 0
                if self._tracker.on_crash(time.monotonic()) is RestartDecision.GIVE_UP:
                    self.failed = True
                    self._report()
                    log.error("%s failed for good: %s", self.name, self.last_error, exc_info=exc)
                    if self.critical and self._on_give_up is not None:
                        self._on_give_up(self.name)
                    return
                log.warning("%s crashed (%s); restarting", self.name, self.last_error)
                await asyncio.sleep(min(0.1 * 2 ** min(self._tracker.restarts, 6), 5.0))

    def _report(self) -> None:
        """Keep the ``sn_loop_failing`` gauge in step (checked at each crash and by /ready)."""
        failing = self.struggling
        if failing != self._reported_failing:
            self._reported_failing = failing
            metrics().loop_failing.labels(self.name).set(1 if failing else 0)

    def status(self) -> str:
        """For /ready: "ok", or why not."""
        self._report()
        if self.failed:
            return f"failed: {self.last_error}"
        if time.monotonic() < self._waiting_until:
            return f"{WAITING_FOR_A_DEPENDENCY}: {self.last_error}"
        if self.struggling:
            return f"crashing: {self.last_error}"
        return "ok"

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)


def exit_worker(loop_name: str) -> None:
    """End this worker process because a critical loop gave up: a graceful stop (SIGTERM to
    itself, which Sanic's worker handles: sockets are told 1001 and reconnect elsewhere), then an
    exit outright if that has not finished in time. The process manager starts a fresh worker
    (see sn.sanic_internals.install_manager_patches)."""
    log.critical("critical loop %s gave up: stopping this worker so that a fresh one replaces it", loop_name)
    asyncio.get_running_loop().call_later(EXIT_GRACE_SECONDS, os._exit, 70)
    os.kill(os.getpid(), signal.SIGTERM)
