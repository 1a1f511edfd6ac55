"""Make Sanic's process manager safe against a signal that lands in the middle of its IPC.

Sanic's ``WorkerManager.shutdown_signal`` runs the whole shutdown inside the signal handler,
and that shutdown writes worker states through a ``multiprocessing.Manager`` dict proxy. The
main loop uses the same proxy connection (``_sync_states`` every 100 ms), so a SIGTERM that
arrives between a request and its reply makes the handler read the loop's reply and the loop
read the handler's: ``TypeError: 'list' object is not a mapping``, the manager dies with exit
code 1, and a retried signal escalates to ``killpg(SIGKILL)``. Seen here about one SIGTERM in
three under load.

The fix keeps the handler free of IPC: it only posts ``__TERMINATE__`` on the monitor pipe,
which the manager's own loop already handles by running the same ``shutdown()`` outside signal
context. A second signal still kills, as in Sanic, because an operator pressing Ctrl-C twice
means it.

Before every worker has acknowledged its start, the manager is in ``wait_for_ack``, which puts
any message back on the pipe and keeps waiting: a posted ``__TERMINATE__`` would bounce there
(busy-looping) until the workers came up, or forever if one hangs. So ``wait_for_ack`` is
replaced too, with the same loop that hands ``__TERMINATE__`` on to the monitor loop at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from signal import Signals
from types import FrameType
from typing import Any

log = logging.getLogger("sn.cli")

_TERMINATE = "__TERMINATE__"


def _deferred_shutdown_signal(manager: Any, signum: int, frame: FrameType | None) -> None:
    from sanic.exceptions import ServerKilled

    if manager._shutting_down or getattr(manager, "_sn_shutdown_requested", False):
        log.info("Shutdown interrupted by %s. Killing.", Signals(signum).name)
        with contextlib.suppress(ServerKilled):
            manager.kill()
        return
    manager._sn_shutdown_requested = True
    log.info("Received signal %s. Shutting down.", Signals(signum).name)
    # A pipe write below PIPE_BUF is atomic, so this cannot interleave with a worker's message.
    manager.monitor_publisher.send(_TERMINATE)


def _wait_for_ack(manager: Any) -> None:
    """Sanic's ``WorkerManager.wait_for_ack`` (25.12), except that a requested shutdown ends the wait."""
    from sanic.log import error_logger

    misses = 0
    while not manager._all_workers_ack():
        if manager.monitor_subscriber.poll(0.1):
            message = manager.monitor_subscriber.recv()
            if message == _TERMINATE:
                manager.monitor_publisher.send(_TERMINATE)  # for the monitor loop: it shuts down
                return
            if message != "__TERMINATE_EARLY__":
                manager.monitor_publisher.send(message)
                continue
            misses = manager.THRESHOLD
        misses += 1
        if misses > manager.THRESHOLD:
            error_logger.error("Not all workers acknowledged a successful startup. Shutting down.")
            manager.kill()


# A server worker that dies is started again, at most this many times per window per worker name;
# beyond that something is wrong with every start, and the whole server stops (the orchestrator
# restarts the pod) rather than respawning in a loop.
RESPAWN_LIMIT = 5
RESPAWN_WINDOW_SECONDS = 60.0


def _respawning_sync_states(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """Sanic's ``WorkerManager._sync_states``, then: a server worker that is no longer alive while
    the manager is not shutting down (killed, crashed, or ended itself because a critical loop gave
    up: see sn.realtime.supervision.exit_worker) is started again. Sanic 25.12 only records it as
    FAILED/COMPLETED, leaving the server one worker short for good."""

    def sync_states(manager: Any) -> None:
        original(manager)
        if manager._shutting_down or getattr(manager, "_sn_shutdown_requested", False):
            return
        from sanic.worker.constants import ProcessState

        for process in list(manager.transient_processes):
            state = manager.worker_state.get(process.name, {})
            if not state.get("server") or process.is_alive():
                continue
            if process.state not in (ProcessState.FAILED, ProcessState.COMPLETED):
                continue
            history: deque[float] = manager.__dict__.setdefault("_sn_respawns", {}).setdefault(process.name, deque())
            now = time.monotonic()
            while history and now - history[0] > RESPAWN_WINDOW_SECONDS:
                history.popleft()
            if len(history) >= RESPAWN_LIMIT:
                log.error("worker %s died %d times in a minute; stopping the server", process.name, len(history))
                manager._sn_shutdown_requested = True
                manager.monitor_publisher.send(_TERMINATE)
                return
            history.append(now)
            dead_pid, exitcode = process.pid, process.exitcode
            log.warning("worker %s [%s] exited (%s); starting a new one", process.name, dead_pid, exitcode)
            from sn.metrics import worker_exited

            with contextlib.suppress(Exception):  # its metric files: live gauges must not count it
                worker_exited(dead_pid)
            manager.restart(process_names=[process.name])

    return sync_states


def install() -> None:
    """Patch the manager class before ``Sanic.serve`` builds one (the handler is bound there)."""
    from sanic.worker.manager import WorkerManager

    WorkerManager.shutdown_signal = _deferred_shutdown_signal  # type: ignore[method-assign]
    WorkerManager.wait_for_ack = _wait_for_ack  # type: ignore[method-assign]
    if not getattr(WorkerManager._sync_states, "_sn_respawns", False):
        sync_states = _respawning_sync_states(WorkerManager._sync_states)
        sync_states._sn_respawns = True  # type: ignore[attr-defined]
        WorkerManager._sync_states = sync_states  # type: ignore[method-assign]
