"""Long-running per-worker loops (router, consumers, heartbeats) under a restart policy.

These actors are driven by an external source (a Redis stream, a bus queue) rather than by a
mailbox, so they are plain coroutines; what they share with mailbox actors is supervision:
a crash restarts the loop after a short backoff, and `RestartPolicy` stops a loop that keeps
crashing instead of spinning (it is then reported as failed in /stats).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from sn.actors.policy import RestartDecision, RestartPolicy, RestartTracker
from sn.tasks import cancel_and_wait

log = logging.getLogger("sn.actors")


class SupervisedLoop:
    def __init__(self, name: str, body: Callable[[], Awaitable[None]], *, policy: RestartPolicy | None = None) -> None:
        self.name = name
        self._body = body
        self._tracker = RestartTracker(policy or RestartPolicy(max_restarts=10, window=60.0))
        self._task: asyncio.Task[None] | None = None
        self.failed = False
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def restarts(self) -> int:
        return self._tracker.restarts

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
                if self._tracker.on_crash(time.monotonic()) is RestartDecision.GIVE_UP:
                    self.failed = True
                    log.error("%s failed for good: %s", self.name, self.last_error, exc_info=exc)
                    return
                log.warning("%s crashed (%s); restarting", self.name, self.last_error)
                await asyncio.sleep(min(0.1 * 2 ** min(self._tracker.restarts, 6), 5.0))

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
