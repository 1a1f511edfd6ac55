"""A multiplexed Redis client for the request path's hot reads and the fan-out's scripts.

redis-py's asyncio client takes a connection from a pool for every command, wraps it in
timeouts and retries and awaits a stream reader: on a cached feed read that was a third of the
worker's CPU, more than Redis spent answering. Here every request of a worker shares one
connection: a command is packed (hiredis), written to the transport and answered in order
through a future, so concurrent requests pipeline on the wire for free and a command costs a
few microseconds of Python. This is what Zulip's and other high-fan-in servers do with Redis.

Only commands that answer at once go through it (GET, MGET, SSCAN, EVALSHA of the feed-cache,
routing and presence scripts, batched with `run_scripts`); blocking stream reads, transactions
and pub/sub stay on redis-py. Errors use redis-py's exception classes, so the API maps them to
503 exactly like the rest:

- a refused or dropped connection fails every command in flight with ``ConnectionError``; the
  next command reconnects;
- a connection that has not answered its oldest command within ``timeout`` seconds is dropped
  and its commands fail with ``TimeoutError`` (one timer per connection, not one per command).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis' stub types the argument as a 1-tuple; the function takes any number of arguments.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class _Protocol(asyncio.Protocol):
    """One connection: writes packed commands, resolves their futures in reply order."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._failure: Exception | None = None
        self._last_reply = 0.0
        self._outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self._transport = cast("asyncio.Transport", transport)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        return self.send_many([packed])[0]

    def send_many(self, commands: list[bytes]) -> list[asyncio.Future[Any]]:
        """Queue commands for this turn's write; Redis runs them in this order, nothing in between."""
        if self.closed or self._transport is None:
            raise RedisConnectionError("redis connection is closed")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures: list[asyncio.Future[Any]] = []
        for _ in commands:
            future: asyncio.Future[Any] = loop.create_future()
            self._pending.append((future, now))
            futures.append(future)
        # Coalesced: everything sent during this turn of the loop leaves in one write at its end.
        # A reconnect storm's thousands of handshakes (presence, replay, follow checks) then cost
        # a few syscalls a turn instead of one per command.
        if not self._outgoing:
            loop.call_soon(self._write_out)
        self._outgoing += commands
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_overdue)
        return futures

    def _write_out(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and not self.closed and self._transport is not None:
            self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("redis sent an unexpected reply"))
                return
            future, _ = pending.popleft()
            self._last_reply = time.monotonic()
            if future.done():  # its caller was cancelled; the reply is dropped in order
                continue
            if isinstance(reply, ResponseError):
                # redis-py's classes for the codes (LOADING is a ConnectionError: a 503, as from
                # redis-py; NOSCRIPT, WRONGPASS, ...), so callers cannot tell the clients apart.
                future.set_exception(_redis_error(str(reply)))
            else:
                future.set_result(reply)

    def _check_overdue(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        # From the later of "sent" and "the last reply": a batch's last command waits behind the
        # others, and a server that keeps answering is not hung however long the batch is.
        waited = time.monotonic() - max(self._pending[0][1], self._last_reply)
        if waited >= self._timeout:
            self._fail(RedisTimeoutError(f"redis did not answer within {self._timeout:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self._timeout - waited, self._check_overdue)

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        self.closed = True  # new commands reconnect instead of joining a connection being torn down
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and fails what is in flight
        else:
            self.connection_lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        failure = self._failure or RedisConnectionError(f"redis connection lost: {exc or 'closed by server'}")
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(failure)

    def close(self) -> None:
        self._write_out()
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class MuxRedis:
    """One pipelined connection per worker, opened on first use and re-opened after a failure."""

    def __init__(self, url: str, *, timeout: float = 5.0, connect_timeout: float = 2.0) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def execute(self, *args: Arg) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        return await protocol.send(_pack(args))

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Commands in one write, run by Redis in this order with nothing in between."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        futures = protocol.send_many([_pack(tuple(command)) for command in commands])
        results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run script calls in one write and one round trip, in order.

        A fan-out's chunks go out together instead of one awaited call each: Redis works
        through them back to back while this worker goes on delivering. Scripts Redis does not
        know (NOSCRIPT, after a restart) are loaded and those calls run again, still in order.
        """
        if not calls:
            return []
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        futures = protocol.send_many([_pack(("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args)) for c in calls])
        results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
        missing = [index for index, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            for script in {calls[index].script for index in missing}:
                await self.execute("SCRIPT", "LOAD", script.source)
            for index, result in zip(missing, await self.run_scripts([calls[i] for i in missing]), strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.execute("GET", key)
        return value

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        values: list[bytes | None] = await self.execute("MGET", *keys)
        return values

    async def _connected(self) -> _Protocol:
        # Concurrent callers share one connection attempt instead of opening one each.
        if self._connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            # Cleared when it finishes, even if every caller waiting on it was cancelled meanwhile.
            connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, connecting: asyncio.Future[_Protocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: a failure nobody awaited is not "never retrieved"

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        try:
            async with asyncio.timeout(self._connect_timeout):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self._timeout), options["path"])
                else:
                    tls = _tls_context(options) if options.get("connection_class") is SSLConnection else None
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self._timeout),
                        options.get("host", "localhost"),
                        options.get("port", 6379),
                        ssl=tls,
                    )
                await self._handshake(protocol)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc or type(exc).__name__}") from exc
        self._protocol = protocol
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        options = self._options
        try:
            await self._handshake_commands(protocol, options)
        except ResponseError as exc:  # a refused AUTH or SELECT: the server is not usable as configured
            protocol.close()
            raise AuthenticationError(f"redis refused the connection setup: {exc}") from exc
        except BaseException:
            protocol.close()
            raise

    async def _handshake_commands(self, protocol: _Protocol, options: dict[str, Any]) -> None:
        if options.get("password"):
            auth = (options["username"], options["password"]) if options.get("username") else (options["password"],)
            await protocol.send(_pack(("AUTH", *auth)))
        if options.get("db"):
            await protocol.send(_pack(("SELECT", options["db"])))

    def script(self, source: str) -> MuxScript:
        return MuxScript(self, source)

    async def aclose(self) -> None:
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


class MuxScript:
    """A Lua script run by EVALSHA, loaded on the first NOSCRIPT (a restarted or new Redis)."""

    def __init__(self, redis: MuxRedis, source: str) -> None:
        self._redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, keys: list[str], args: list[Arg]) -> ScriptCall:
        """This script's call as one item of a ``MuxRedis.run_scripts`` batch."""
        return ScriptCall(self, keys, args)

    async def __call__(self, keys: list[str], args: list[Arg]) -> Any:
        try:
            return await self._redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            pass
        await self._redis.execute("SCRIPT", "LOAD", self.source)
        return await self._redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)


class ScriptCall(NamedTuple):
    script: MuxScript
    keys: list[str]
    args: list[Arg]


def _redis_error(message: str) -> Exception:
    error: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS settings a ``rediss://`` URL carries, as redis-py reads them."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif requirement in ("optional", "cert_optional"):
        context.verify_mode = ssl.CERT_OPTIONAL
    if options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    return context
