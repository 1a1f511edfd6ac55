"""sn.dev.embedded: embedded PostgreSQL and Valkey keep their data across restarts and crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from sn.dev.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError, free_port

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent


async def _pg_write(url: str, value: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v text NOT NULL)")
        await conn.execute("INSERT INTO kv VALUES ('k', $1) ON CONFLICT (k) DO UPDATE SET v = excluded.v", value)
    finally:
        await conn.close()


async def _pg_read(url: str) -> str | None:
    conn = await asyncpg.connect(url)
    try:
        value: str | None = await conn.fetchval("SELECT v FROM kv WHERE k = 'k'")
        return value
    finally:
        await conn.close()


async def _redis_write(url: str, value: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.set("k", value)
    finally:
        await client.aclose()


async def _redis_read(url: str) -> bytes | str | None:
    client = aioredis.Redis.from_url(url)
    try:
        value: bytes | str | None = await client.get("k")
        return value
    finally:
        await client.aclose()


def test_free_port() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


def test_url_before_start_raises(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServerError, match="not running"):
        _ = EmbeddedPostgres(tmp_path / "pg").url
    with pytest.raises(EmbeddedServerError, match="not running"):
        _ = EmbeddedRedis(tmp_path / "redis").url
    EmbeddedPostgres(tmp_path / "pg").stop()  # stop() before start() is harmless too
    EmbeddedRedis(tmp_path / "redis").stop()


async def test_data_survives_restart(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", database="sn_test")
    rd = EmbeddedRedis(tmp_path / "redis")

    pg_url = pg.start()
    rd_url = rd.start()
    assert pg_url == pg.url
    assert pg_url.startswith("postgresql://postgres@127.0.0.1:")
    assert pg_url.endswith("/sn_test")
    assert rd_url == rd.url == f"redis://127.0.0.1:{rd.port}/0"
    assert pg.start() == pg_url  # start() on a running server is a no-op

    await _pg_write(pg_url, "hello")
    await _redis_write(rd_url, "world")

    pg.stop()
    rd.stop()
    pg.stop()  # twice is harmless
    rd.stop()
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    assert not (tmp_path / "redis" / "valkey.pid").exists()

    # New objects on the same directories: the data is still there.
    with EmbeddedPostgres(tmp_path / "pg", database="sn_test") as pg2, EmbeddedRedis(tmp_path / "redis") as rd2:
        assert await _pg_read(pg2.url) == "hello"
        assert await _redis_read(rd2.url) == b"world"
        assert pg2.log_path.is_file()
        assert rd2.log_path.is_file()
    assert not pg2.running
    assert not rd2.running


def _start_servers_and_crash(tmp_path: Path) -> int:
    """In a child Python: start both servers, write data, SIGKILL itself. Returns the orphan's pid."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from pathlib import Path
        import asyncpg, redis.asyncio as aioredis
        from sn.dev.embedded import EmbeddedPostgres, EmbeddedRedis

        async def write(pg_url, rd_url):
            conn = await asyncpg.connect(pg_url)
            await conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
            await conn.execute("INSERT INTO kv VALUES ('k', 'before crash')")
            await conn.close()
            client = aioredis.Redis.from_url(rd_url)
            await client.set("k", "before crash")
            await client.aclose()

        pg_url = EmbeddedPostgres(Path({str(tmp_path / "pg")!r})).start()
        rd_url = EmbeddedRedis(Path({str(tmp_path / "redis")!r})).start()
        asyncio.run(write(pg_url, rd_url))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    assert (tmp_path / "redis" / "valkey.pid").exists()
    return _pid_in(tmp_path / "pg" / "postmaster.pid")


def _pid_in(pid_file: Path) -> int:
    return int(pid_file.read_text().split()[0])


def _is_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


async def test_parent_crash_leaves_nothing_stale(tmp_path: Path) -> None:
    """A parent killed with SIGKILL leaves both servers running; the next start() recovers."""
    orphan_pid = _start_servers_and_crash(tmp_path)
    assert _is_postgres(orphan_pid)

    with EmbeddedPostgres(tmp_path / "pg") as pg, EmbeddedRedis(tmp_path / "redis") as rd:
        assert _pid_in(tmp_path / "pg" / "postmaster.pid") != orphan_pid
        assert not _is_postgres(orphan_pid)
        assert await _pg_read(pg.url) == "before crash"
        # Appendonly (fsync every second) plus the orphan's SHUTDOWN on SIGTERM kept the key.
        assert await _redis_read(rd.url) == b"before crash"


def test_stale_pid_file_is_removed(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg"):
        pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = tmp_path / "pg" / "postmaster.pid"
    pid_file.write_text(f"{dead.pid}\n{tmp_path / 'pg'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        assert pg.running
        assert int(pid_file.read_text().split()[0]) != dead.pid


def test_second_server_on_same_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as pg, EmbeddedRedis(tmp_path / "redis") as rd:
        with pytest.raises(EmbeddedServerError, match="already running"):
            EmbeddedPostgres(tmp_path / "pg").start()
        with pytest.raises(EmbeddedServerError, match="already running"):
            EmbeddedRedis(tmp_path / "redis").start()
        assert pg.running
        assert rd.running


def test_taken_port_fails_with_log_tail(tmp_path: Path) -> None:
    with (
        EmbeddedRedis(tmp_path / "redis") as rd,
        pytest.raises(EmbeddedServerError, match="Address already in use"),
    ):
        EmbeddedPostgres(tmp_path / "pg", port=rd.port).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs an unprivileged user for PostgreSQL")
async def test_root_falls_back_to_unprivileged_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where user namespaces are unavailable (e.g. Docker), PostgreSQL runs as another user."""
    monkeypatch.setenv("SN_EMBEDDED_PG_ROOT_MODE", "user")
    monkeypatch.setenv("SN_EMBEDDED_PG_USER", "nobody")  # exists everywhere; creates no user
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        assert pg._proc is not None
        assert _uid_of(pg._proc.pid) != 0
        await _pg_write(pg.url, "as nobody")
    # Back to the default mode on the same directory: ownership is fixed up, data kept.
    monkeypatch.delenv("SN_EMBEDDED_PG_ROOT_MODE")
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        assert await _pg_read(pg.url) == "as nobody"


async def test_cluster_has_a_utf8_character_locale(tmp_path: Path) -> None:
    from sn.dev.embedded import _locale_options, _pg_bindir

    if _locale_options(_pg_bindir()) == ["--no-locale"]:
        pytest.skip("no UTF-8 locale on this system for PostgreSQL < 17 (search does not need one)")
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        conn = await asyncpg.connect(pg.url)
        try:
            assert await conn.fetchval("SELECT lower('АННА Σοφία ÉMILE')") == "анна σοφία émile"
            assert await conn.fetchval("SELECT 'Ж' ~* 'ж'")
        finally:
            await conn.close()
