"""MuxRedis against a real Redis: pipelined replies in order, errors, scripts, cuts and hangs."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
import redis.exceptions
from redis.asyncio import Redis

from sn.storage.redis_mux import MuxRedis
from tests.proxy import TcpProxy
from tests.support import free_port, port_open


def key() -> str:
    return f"t:mux:{uuid.uuid4().hex}"


async def test_concurrent_commands_share_one_connection_and_get_their_own_replies(
    amux: MuxRedis, aredis: Redis
) -> None:
    keys = [key() for _ in range(500)]
    await aredis.mset({k: f"value-{i}" for i, k in enumerate(keys)})
    connection = await amux.execute("CLIENT", "ID")
    replies = await asyncio.gather(*(amux.get(k) for k in keys))
    assert replies == [f"value-{i}".encode() for i in range(500)]
    assert await amux.execute("CLIENT", "ID") == connection


async def test_reads_the_database_named_in_the_url(amux: MuxRedis, aredis: Redis) -> None:
    k = key()
    await aredis.set(k, b"in this database")
    assert await amux.get(k) == b"in this database"
    assert await amux.mget([k, key()]) == [b"in this database", None]


async def test_loading_reply_is_a_connection_error_like_redis_py_raises(amux: MuxRedis) -> None:
    # A restarted Redis answers -LOADING until its data is back: unavailable (503), not a bug (500).
    script = amux.script("return redis.error_reply('LOADING Redis is loading the dataset in memory')")
    with pytest.raises(redis.exceptions.BusyLoadingError):
        await script(keys=[], args=[])


async def test_error_reply_fails_only_its_command(amux: MuxRedis, aredis: Redis) -> None:
    k = key()
    await aredis.set(k, "not a number")
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        await amux.execute("INCR", k)
    assert await amux.get(k) == b"not a number"  # the connection is still in step


async def test_cancelled_caller_does_not_shift_later_replies(amux: MuxRedis, aredis: Redis) -> None:
    first, second = key(), key()
    await aredis.mset({first: "first", second: "second"})
    await amux.get(first)  # connected
    abandoned = asyncio.ensure_future(amux.get(first))
    await asyncio.sleep(0)  # written to the socket, reply not read yet
    abandoned.cancel()
    assert await amux.get(second) == b"second"


async def test_script_is_loaded_after_redis_forgot_it(amux: MuxRedis, aredis: Redis) -> None:
    script = amux.script("return {KEYS[1], ARGV[1]}")
    assert await script(keys=["k"], args=["a"]) == [b"k", b"a"]
    await aredis.script_flush()  # what a Redis restart or failover looks like to a script cache
    assert await script(keys=["k"], args=["b"]) == [b"k", b"b"]


async def test_batched_script_calls_run_in_order_and_survive_a_flushed_cache(amux: MuxRedis, aredis: Redis) -> None:
    key = f"test:batch:{uuid.uuid4().hex}"
    append = amux.script("redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])")
    length = amux.script("return redis.call('LLEN', KEYS[1])")
    calls = [append.call([key], [str(i)]) for i in range(50)] + [length.call([key], [])]
    assert await amux.run_scripts(calls) == [*range(1, 51), 50]
    await aredis.script_flush()  # both scripts forgotten: loaded again, the calls still run in order
    assert await amux.run_scripts(calls) == [*range(51, 101), 100]
    assert await aredis.lrange(key, 0, 3) == [b"0", b"1", b"2", b"3"]
    assert await aredis.lrange(key, 50, 52) == [b"0", b"1", b"2"]
    await aredis.delete(key)
    assert await amux.run_scripts([]) == []


async def test_script_error_is_raised(amux: MuxRedis) -> None:
    script = amux.script("return redis.error_reply('broken on purpose')")
    with pytest.raises(redis.exceptions.ResponseError, match="broken on purpose"):
        await script(keys=[], args=[])


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[tuple[TcpProxy, str]]:
    parts = urlsplit(redis_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy, f"redis://127.0.0.1:{proxy.port}{parts.path}"


async def test_cut_connection_fails_in_flight_then_reconnects(redis_proxy: tuple[TcpProxy, str], aredis: Redis) -> None:
    proxy, url = redis_proxy
    k = key()
    await aredis.set(k, "v")
    client = MuxRedis(url, timeout=2)
    try:
        assert await client.get(k) == b"v"
        await asyncio.to_thread(proxy.cut)
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get(k)  # the reset connection, or a refused reconnect
        with pytest.raises(redis.exceptions.ConnectionError, match="cannot connect"):
            await client.get(k)
        await asyncio.to_thread(proxy.restore)
        assert await client.get(k) == b"v"
    finally:
        await client.aclose()


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and reads commands but never answers: a hung Redis."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()


async def test_unanswered_commands_time_out_together(silent_server: str) -> None:
    client = MuxRedis(silent_server, timeout=0.3)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(client.get("a"), client.get("b"), return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in results), results
        assert loop.time() - started < 2.0
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def password_redis() -> Iterator[str]:
    """A second Redis that requires a password (started and stopped here)."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        pytest.skip("no redis-server binary to start a password-protected Redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", "s3cret"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://:s3cret@127.0.0.1:{port}/3"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_authenticates_and_selects_database(password_redis: str) -> None:
    writer = Redis.from_url(password_redis)
    client = MuxRedis(password_redis)
    try:
        await writer.set("k", "in db 3")
        assert await client.get("k") == b"in db 3"
    finally:
        await client.aclose()
        await writer.aclose()
    wrong = MuxRedis(password_redis.replace("s3cret", "wrong"))
    try:
        # A ConnectionError subclass, as redis-py raises it: the API answers 503, not 500.
        with pytest.raises(redis.exceptions.AuthenticationError):
            await wrong.get("k")
    finally:
        await wrong.aclose()
