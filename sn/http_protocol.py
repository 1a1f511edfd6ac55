"""Sanic's HTTP/1.1 protocol, with the reference cycle of each connection taken apart at its end.

Sanic's ``Http`` stores one of its own bound methods (``response_func = self.http1_response_header``),
so every finished connection leaves a cycle — the ``Http``, its protocol, the last request with
its headers, URL and context, two events, a timer handle — that only the cyclic garbage collector
can free. At 100 new connections a second (clients that do not keep connections alive, and every
WebSocket handshake) that was ~25,000 objects per young collection and pauses of 25–110 ms on
whatever the worker was doing. Breaking the cycle when the connection's task ends lets reference
counting free it all at once.
"""

from __future__ import annotations

from typing import Any

from sanic.server.protocols.http_protocol import HttpProtocol

__all__ = ["ConnectionProtocol"]


class ConnectionProtocol(HttpProtocol):
    __slots__ = ()

    def _setup_connection(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        http = self._http
        task = self._task
        if task is not None and http is not None:
            task.add_done_callback(lambda _: _release(http))


def _release(http: Any) -> None:
    # Only what Sanic no longer uses once the connection task has finished.
    http.response_func = None
    http.request = None
    http.response = None
