"""Every use of Sanic's private API in one place, guarded by the Sanic versions it was tested with.

Each piece below works around something Sanic does not offer (or gets wrong) in the series listed
in ``TESTED_SANIC_SERIES``; its docstring names the upstream issue it works around, where there is
one. A Sanic upgrade must re-check each of them: ``tests/test_sanic_internals.py`` fails while the
installed series is not listed, and ``sn serve`` logs a warning (``check_sanic_version``).

- ``ConnectionProtocol``: the HTTP/1.1 protocol, with a bounded time to a complete request head,
  and the reference cycle of each connection taken apart at its end (below);
  ``connection_protocol_factory`` builds it for a server of our own (the monitoring listener).
- ``upgrade_transport`` / ``take_over_transport``: the WebSocket take-over, the transport handed
  from Sanic's HTTP protocol to ours (``sn.api.ws``).
- ``install_manager_patches``: the process manager's signal handling, start-up wait and dead
  worker restart (``sn serve``).

Request head timeout. Sanic's request timeout counts from the *last* byte received, so a client
that sends one header line every few seconds keeps its connection (and a file descriptor) for as
long as it likes: 1,500 such sockets were all still held after 20 s. Here the head of every
request must be complete within ``HEADER_TIMEOUT`` (app config, SN_HEADER_TIMEOUT_SECONDS) of its
first byte, however the bytes trickle in; else the client gets 408 and the connection is closed.
The same for the body: the whole request must have arrived within REQUEST_TIMEOUT
(SN_REQUEST_TIMEOUT_SECONDS) of its first byte, else 408. A connection that sends nothing at all,
or idles between requests, is closed after
KEEP_ALIVE_TIMEOUT (SN_KEEP_ALIVE_TIMEOUT_SECONDS) as before. Timeouts are checked by Sanic's
per-connection timer, whose period here is at most half the shortest timeout (the head timeout
included), and which fires at the head's deadline while a head is being received.

Reference cycle. Sanic's ``Http`` stores one of its own bound methods (``response_func =
self.http1_response_header``), so every finished connection leaves a cycle — the ``Http``, its
protocol, the last request with its headers, URL and context, two events, a timer handle — that
only the cyclic garbage collector can free. At 100 new connections a second (clients that do not
keep connections alive, and every WebSocket handshake) that was ~25,000 objects per young
collection and pauses of 25–110 ms on whatever the worker was doing. Breaking the cycle when the
connection's task ends lets reference counting free it all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from signal import Signals
from time import monotonic as current_time
from types import FrameType
from typing import Any

import sanic
from sanic import Request, Sanic
from sanic.exceptions import RequestTimeout, ServiceUnavailable
from sanic.http import Stage
from sanic.models.server_types import Signal
from sanic.server.protocols.http_protocol import HttpProtocol

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "RESPAWN_LIMIT",
    "RESPAWN_WINDOW_SECONDS",
    "TESTED_SANIC_SERIES",
    "ConnectionProtocol",
    "check_sanic_version",
    "connection_protocol_factory",
    "install_manager_patches",
    "installed_sanic_version",
    "sanic_series",
    "take_over_transport",
    "upgrade_transport",
]

log = logging.getLogger("sn.sanic_internals")
# The manager's messages keep the logger they always had: operators grep `sn serve`'s log for them.
manager_log = logging.getLogger("sn.cli")

# The Sanic series ("major.minor") every workaround here was written against and tested with.
TESTED_SANIC_SERIES = ("25.12",)


def installed_sanic_version() -> str:
    return str(sanic.__version__)


def sanic_series(version: str) -> str:
    """The "major.minor" of a Sanic version string."""
    return ".".join(version.split(".")[:2])


def check_sanic_version() -> bool:
    """Warn (not fail: the workarounds may well still hold) when the installed Sanic is of a series
    they were not tested with. True when it is a tested one."""
    version = installed_sanic_version()
    if sanic_series(version) in TESTED_SANIC_SERIES:
        return True
    log.warning(
        "Sanic %s is not of a tested series (%s): sn.sanic_internals uses Sanic's private API "
        "and must be re-checked against this version",
        version,
        ", ".join(TESTED_SANIC_SERIES),
    )
    return False


# --- The HTTP protocol ---------------------------------------------------------------------------

DEFAULT_HEADER_TIMEOUT = 10.0


class ConnectionProtocol(HttpProtocol):
    """Sanic's ``HttpProtocol`` with the head/body deadlines and the cycle break of the module
    docstring. Upstream: no upstream issue found for either (Sanic's request timeout restarting at
    every received byte, nor the ``Http.response_func`` self-reference)."""

    __slots__ = ("_head_started", "_header_timeout")

    def _setup(self) -> None:
        super()._setup()  # type: ignore[no-untyped-call]
        self._header_timeout = float(self.app.config.get("HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT))
        self._head_started = 0.0

    def _setup_connection(self, *args: Any, **kwargs: Any) -> None:
        # (Bytes that came before this, with no Http yet to see them, count from here.)
        self._head_started = current_time()
        super()._setup_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        http = self._http
        task = self._task
        if task is not None and http is not None:
            task.add_done_callback(lambda _: _release(http))

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)  # (bytes can arrive before the connection task ran)
        if http is not None and http.stage is Stage.IDLE:
            # The first bytes of a request: its head's clock starts (later bytes do not reset it).
            self._head_started = current_time()
        super().data_received(data)

    def check_timeouts(self) -> None:
        """Sanic's check (``HttpProtocol.check_timeouts``) with the head deadline added; the same
        stages and outcomes otherwise."""
        try:
            task = self._task
            http = getattr(self, "_http", None)
            if not task or http is None:
                return
            now = current_time()
            duration = now - self._time
            stage = http.stage
            if stage is Stage.IDLE and duration > self.keep_alive_timeout:
                log.debug("keep-alive timeout: closing the connection")
            elif stage is Stage.REQUEST and now - self._head_started > self._header_timeout:
                log.debug("request head timeout: closing the connection")
                http.exception = RequestTimeout(
                    f"request head not complete within {self._header_timeout:g} s of its first byte"
                )
            elif stage is Stage.REQUEST and duration > self.request_timeout:
                http.exception = RequestTimeout("Request Timeout")
            elif stage is Stage.HANDLER and http.request_body and now - self._head_started > self.request_timeout:
                # A body trickled in byte by byte renews Sanic's timeout as the head did: bounded too.
                http.exception = RequestTimeout(
                    f"request body not complete within {self.request_timeout:g} s of the request's first byte"
                )
                # Else Sanic would read the rest of the body after the 408, at the trickler's pace.
                http.request_body = None
            elif stage is Stage.HANDLER and http.upgrade_websocket:
                return  # (ours: sn.api.ws takes the transport over)
            elif stage in (Stage.HANDLER, Stage.RESPONSE, Stage.FAILED) and duration > self.response_timeout:
                http.exception = ServiceUnavailable("Response Timeout")
            else:
                timeouts = (self.keep_alive_timeout, self.request_timeout, self.response_timeout, self._header_timeout)
                interval = min(timeouts) / 2
                if stage is Stage.REQUEST:
                    # The next check at the head's deadline, not up to half a timeout after it.
                    interval = min(interval, self._head_started + self._header_timeout - now + 0.01)
                self._callback_check_timeouts = self.loop.call_later(max(0.1, interval), self.check_timeouts)
                return
            task.cancel("connection timeout")
        except Exception:
            log.exception("protocol.check_timeouts")


def _release(http: Any) -> None:
    # Only what Sanic no longer uses once the connection task has finished.
    http.response_func = None
    http.request = None
    http.response = None


def connection_protocol_factory(
    app: Sanic[Any, Any], loop: asyncio.AbstractEventLoop, connections: set[ConnectionProtocol]
) -> Callable[[], ConnectionProtocol]:
    """A protocol factory for ``loop.create_server``: ``ConnectionProtocol`` for ``app``, its
    connections kept in ``connections``, outside Sanic's own server set-up (the monitoring
    listener, ``sn.monitoring_listener``). Sanic has no public way to serve one app on a second
    socket without running its listeners again; the keyword arguments are ``HttpProtocol``'s own
    (25.12), with a ``Signal`` and a request-count state of its own. Upstream: no upstream issue found."""
    return partial(
        ConnectionProtocol,
        loop=loop,
        app=app,
        connections=connections,
        signal=Signal(),
        state={"requests_count": 0},
    )


# --- The WebSocket take-over ---------------------------------------------------------------------
#
# Sanic offers no public way to hand a connection over to another protocol after an upgrade (its
# own WebSocket support keeps its protocol object, a task and a queue per socket). These two read
# and change its ``HttpProtocol``, ``Http`` stream and request internals as of 25.12.
# Upstream: no upstream issue found.


def upgrade_transport(request: Request) -> asyncio.Transport | None:
    """The transport under Sanic's HTTP protocol for this request, or None when the client has
    already left (closed, or closing)."""
    http: Any = request.transport.get_protocol()  # Sanic's HttpProtocol (its attributes are untyped)
    transport: asyncio.Transport | None = http.transport
    if transport is None or transport.is_closing():
        return None
    return transport


def take_over_transport(request: Request, new_protocol: asyncio.Protocol) -> asyncio.Transport:
    """Hand this request's connection from Sanic's HTTP protocol to ``new_protocol``, which then
    owns it: Sanic neither reads from it, nor answers the request, nor closes the transport or
    waits for it at shutdown. Bytes the client sent right behind its request are passed on to
    ``new_protocol.data_received``. Returns the transport."""
    http: Any = request.transport.get_protocol()
    transport: asyncio.Transport = http.transport
    leftover = bytes(http.recv_buffer)  # frames the client sent right behind its request
    http.recv_buffer.clear()
    transport.set_protocol(new_protocol)
    # Sanic must neither close this transport when its connection task ends nor count it
    # among the connections its shutdown waits for; the hub does both for WebSockets.
    http.connections.discard(http)
    http.transport = None
    # Nothing of the request is left to read (handshake.accept refuses a body): Sanic must not
    # try to, on a transport that is no longer its own.
    request.stream.request_body = None  # type: ignore[union-attr]
    stream: Any = request.stream
    stream.upgrade_websocket = True  # tells Sanic's Http that no response is right for this request
    transport.resume_reading()
    if leftover:
        new_protocol.data_received(leftover)
    return transport


# --- The process manager -------------------------------------------------------------------------
#
# Sanic's ``WorkerManager.shutdown_signal`` runs the whole shutdown inside the signal handler,
# and that shutdown writes worker states through a ``multiprocessing.Manager`` dict proxy. The
# main loop uses the same proxy connection (``_sync_states`` every 100 ms), so a SIGTERM that
# arrives between a request and its reply makes the handler read the loop's reply and the loop
# read the handler's: ``TypeError: 'list' object is not a mapping``, the manager dies with exit
# code 1, and a retried signal escalates to ``killpg(SIGKILL)``. Seen here about one SIGTERM in
# three under load.
#
# The fix keeps the handler free of IPC: it only posts ``__TERMINATE__`` on the monitor pipe,
# which the manager's own loop already handles by running the same ``shutdown()`` outside signal
# context. A second signal still kills, as in Sanic, because an operator pressing Ctrl-C twice
# means it.
#
# Before every worker has acknowledged its start, the manager is in ``wait_for_ack``, which puts
# any message back on the pipe and keeps waiting: a posted ``__TERMINATE__`` would bounce there
# (busy-looping) until the workers came up, or forever if one hangs. So ``wait_for_ack`` is
# replaced too, with the same loop that hands ``__TERMINATE__`` on to the monitor loop at once.

_TERMINATE = "__TERMINATE__"


def _deferred_shutdown_signal(manager: Any, signum: int, frame: FrameType | None) -> None:
    """``WorkerManager.shutdown_signal`` without IPC in the signal handler (see above).
    Upstream: no upstream issue found for the crossed proxy replies."""
    from sanic.exceptions import ServerKilled

    if manager._shutting_down or getattr(manager, "_sn_shutdown_requested", False):
        manager_log.info("Shutdown interrupted by %s. Killing.", Signals(signum).name)
        with contextlib.suppress(ServerKilled):
            manager.kill()
        return
    manager._sn_shutdown_requested = True
    manager_log.info("Received signal %s. Shutting down.", Signals(signum).name)
    # A pipe write below PIPE_BUF is atomic, so this cannot interleave with a worker's message.
    manager.monitor_publisher.send(_TERMINATE)


def _wait_for_ack(manager: Any) -> None:
    """Sanic's ``WorkerManager.wait_for_ack`` (25.12), except that a requested shutdown ends the wait.
    Upstream: sanic-org/sanic#2997 (a signal during worker start-up is not handled: the manager
    loops in ``wait_for_ack``), with the fix proposed in sanic-org/sanic#3063 (open)."""
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
    FAILED/COMPLETED, leaving the server one worker short for good.
    Upstream: sanic-org/sanic#3062 (feature request: restart a worker process that exited or was
    killed; open)."""

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
                manager_log.error(
                    "worker %s died %d times in a minute; stopping the server", process.name, len(history)
                )
                manager._sn_shutdown_requested = True
                manager.monitor_publisher.send(_TERMINATE)
                return
            history.append(now)
            dead_pid, exitcode = process.pid, process.exitcode
            manager_log.warning("worker %s [%s] exited (%s); starting a new one", process.name, dead_pid, exitcode)
            from sn.metrics import worker_exited

            with contextlib.suppress(Exception):  # its metric files: live gauges must not count it
                worker_exited(dead_pid)
            manager.restart(process_names=[process.name])

    return sync_states


def install_manager_patches() -> None:
    """Patch the manager class before ``Sanic.serve`` builds one (the handler is bound there)."""
    from sanic.worker.manager import WorkerManager

    WorkerManager.shutdown_signal = _deferred_shutdown_signal  # type: ignore[method-assign]
    WorkerManager.wait_for_ack = _wait_for_ack  # type: ignore[method-assign]
    if not getattr(WorkerManager._sync_states, "_sn_respawns", False):
        sync_states = _respawning_sync_states(WorkerManager._sync_states)
        sync_states._sn_respawns = True  # type: ignore[attr-defined]
        WorkerManager._sync_states = sync_states  # type: ignore[method-assign]
