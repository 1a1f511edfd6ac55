"""Sanic's HTTP/1.1 protocol, with a bounded time to a complete request head, and the reference
cycle of each connection taken apart at its end.

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

import logging
from time import monotonic as current_time
from typing import Any

from sanic.exceptions import RequestTimeout, ServiceUnavailable
from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

__all__ = ["DEFAULT_HEADER_TIMEOUT", "ConnectionProtocol"]

log = logging.getLogger("sn.sanic_internals")

DEFAULT_HEADER_TIMEOUT = 10.0


class ConnectionProtocol(HttpProtocol):
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
