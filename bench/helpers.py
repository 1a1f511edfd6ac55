"""Small steps of bench/run.sh that are easier in Python than in bash.

    python bench/helpers.py recreate-db URL        drop and create the database named in URL
    python bench/helpers.py drop-db URL
    python bench/helpers.py dump-ids URL OUT       every user id, one per line (reusing a seeded db)
    python bench/helpers.py flush-redis URL
    python bench/helpers.py free-port
    python bench/helpers.py wait-ready BASE_URL LOG WORKERS [TIMEOUT]
    python bench/helpers.py warm-profiles BASE_URL IDS
    python bench/helpers.py tokens BASE_URL IDS PASSWORD COUNT OUT
    python bench/helpers.py report OUT_DIR

Only databases whose name starts with ``sn_bench`` are dropped: SN_BENCH_DATABASE_URL pointed
at a real database by mistake must not lose it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis

_SAFE_PREFIX = "sn_bench"


class BenchError(Exception):
    """A step failed: main prints the message and exits non-zero."""


def _split(url: str, safe_prefix: str) -> tuple[str, str]:
    """(maintenance-database URL on the same server, database name) for a database URL."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.startswith(safe_prefix):
        raise BenchError(f"refusing to drop/create {name!r}: the database name must start with {safe_prefix}")
    return urlunsplit(parts._replace(path="/postgres")), name


async def recreate_db(url: str, create: bool, safe_prefix: str = _SAFE_PREFIX) -> None:
    """Drop (and with `create`, re-create) a benchmark database; only names under `safe_prefix`."""
    admin, name = _split(url, safe_prefix)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _user_ids(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id FROM users ORDER BY id")
    finally:
        await conn.close()
    if not rows:
        raise BenchError("no users in the database; seed it first")
    return [int(row["id"]) for row in rows]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(base_url: str, log: Path, workers: int, timeout: float = 60.0) -> None:
    # /ready answers as soon as one worker is up; Sanic starts them one by one, and measuring
    # while one is still starting would load a single worker. Each logs "worker ready".
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(base_url + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and log.read_text(errors="replace").count("worker ready") >= workers:
            return
        time.sleep(0.2)
    raise BenchError(f"server at {base_url} not ready after {timeout:.0f} s (see {log})")


class _Connection:
    """A minimal keep-alive HTTP/1.1 client connection for the warm-up steps.

    httpx's async client managed ~300 requests/s on the benchmark machine, so warming 10k
    profiles took longer than the measurements. The server always sends Content-Length, which
    keeps the parsing short.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, base_url: str) -> _Connection:
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
        if body:
            # Only with a body: Sanic logs "body not consumed" for a GET announcing even 0 bytes.
            head += f"Content-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._writer.write(head.encode() + b"\r\n" + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise BenchError(f"{method} {path}: chunked responses are not supported by the warm-up client")
        payload = await self._reader.readexactly(length) if length else b""
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _warm_profiles(base_url: str, ids: list[str]) -> None:
    """GET every profile once, so that the measured /user/get requests are all cache hits."""
    queue = iter(ids)
    failed = 0

    async def worker() -> None:
        nonlocal failed
        conn = await _Connection.open(base_url)
        try:
            # Workers share one iterator: each id is fetched exactly once.
            for user_id in queue:
                status, _ = await conn.request("GET", f"/user/get/{user_id}")
                failed += status != 200
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(32)))
    elapsed = time.perf_counter() - started
    if failed:
        raise BenchError(f"{failed} of {len(ids)} profile reads failed while warming")
    print(f"bench: warmed {len(ids)} profiles in {elapsed:.1f} s")


async def _tokens(base_url: str, ids: list[str], password: str) -> list[str]:
    """Log the users in through the API and read each one's feed once (building its cache)."""
    queue = iter(ids)
    tokens: list[str] = []
    posts = 0
    empty = 0

    async def worker() -> None:
        nonlocal posts, empty
        conn = await _Connection.open(base_url)
        try:
            for user_id in queue:
                body = json.dumps({"id": user_id, "password": password}).encode()
                status, payload = await conn.request("POST", "/login", body, {"Content-Type": "application/json"})
                if status != 200:
                    raise BenchError(f"login of {user_id} failed: {status} {payload[:200]!r}")
                token = json.loads(payload)["token"]
                status, payload = await conn.request("GET", "/post/feed", headers={"Authorization": f"Bearer {token}"})
                if status != 200:
                    raise BenchError(f"feed of {user_id} failed: {status} {payload[:200]!r}")
                page = json.loads(payload)
                posts += len(page)
                empty += not page
                tokens.append(token)
        finally:
            await conn.close()

    started = time.perf_counter()
    # Logins are argon2 verifications, bounded by the workers' hashing pools: a few in flight
    # keep them busy without queueing.
    await asyncio.gather(*(worker() for _ in range(8)))
    elapsed = time.perf_counter() - started
    print(
        f"bench: {len(tokens)} logins + feed warm-ups in {elapsed:.1f} s;"
        f" {posts / max(len(tokens), 1):.1f} posts per first page, {empty} empty feeds"
    )
    return tokens


_LABELS = {"health": "GET /health", "user_get": "GET /user/get/{id}", "feed": "GET /post/feed"}


@dataclass(frozen=True)
class _Run:
    rps: float
    p50: float
    p90: float
    p99: float
    requests: int
    errors: int
    server_us: float  # server CPU (all its processes) per request, microseconds
    other_pct: float  # machine CPU used by neither the server nor wrk, % of all cores

    def row(self, label: str) -> str:
        return (
            f"{label:<22} {self.rps:>8.0f} {self.p50:>7.2f} {self.p90:>7.2f} {self.p99:>7.2f}"
            f" {self.requests:>9} {self.errors:>6} {self.server_us:>9.0f} {self.other_pct:>7.0f}"
        )


_HEADER = (
    f"{'endpoint':<22} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'requests':>9} {'errors':>6}"
    f" {'srv us/req':>9} {'other %':>7}"
)


def _read_run(stem: Path) -> _Run:
    """A run from `<stem>.txt` (wrk output with a RESULT line) and `<stem>.cpu` (run.sh's counters)."""
    found = [line for line in stem.with_suffix(".txt").read_text().splitlines() if line.startswith("RESULT ")]
    if not found:
        raise BenchError(f"no RESULT line in {stem}.txt")
    fields = found[-1].split()[1:]
    rps, p50, p90, p99 = (float(value) for value in fields[:4])
    requests = int(fields[4])
    server_us, other_pct = float("nan"), float("nan")
    cpu = stem.with_suffix(".cpu")
    if cpu.exists():
        server, busy, total, hz, wrk_user, wrk_sys = (float(value) for value in cpu.read_text().split())
        server_us = server / hz / max(requests, 1) * 1e6
        other_pct = max(0.0, busy - server - (wrk_user + wrk_sys) * hz) / max(total, 1) * 100
    return _Run(rps, p50, p90, p99, requests, int(fields[5]), server_us, other_pct)


def _report(out_dir: Path) -> int:
    """Print every round and the medians; exit status 0 only when both targets are met.

    Rounds run the three endpoints back to back, so a ratio is taken within one round (both
    halves saw the same background load); targets are judged on the median round.
    """
    rounds = sorted({int(path.stem.rpartition("-")[2]) for path in out_dir.glob("health-*.txt")})
    if not rounds:
        raise BenchError(f"no wrk results in {out_dir}")
    runs = {name: [_read_run(out_dir / f"{name}-{r}") for r in rounds] for name in _LABELS}
    lines: list[str] = []
    for index, r in enumerate(rounds):
        lines += [f"round {r}", _HEADER]
        lines += [runs[name][index].row(label) for name, label in _LABELS.items()]
        lines.append("")
    lines += [f"median of {len(rounds)} round(s) (requests and errors: totals)", _HEADER]
    for name, label in _LABELS.items():
        series = runs[name]
        middle = _Run(
            median(x.rps for x in series),
            median(x.p50 for x in series),
            median(x.p90 for x in series),
            median(x.p99 for x in series),
            sum(x.requests for x in series),
            sum(x.errors for x in series),
            median(x.server_us for x in series),
            median(x.other_pct for x in series),
        )
        lines.append(middle.row(label))
    light = out_dir / "feed-light"
    if light.with_suffix(".txt").exists():
        lines.append(_read_run(light).row("GET /post/feed, light"))
        lines.append("  (light: fewer connections, so latency is service time rather than queueing)")
    ratios = [u.rps / h.rps for u, h in zip(runs["user_get"], runs["health"], strict=True)]
    ratio = median(ratios)
    cpu_ratio = median(h.server_us / u.server_us for u, h in zip(runs["user_get"], runs["health"], strict=True))
    feed_p99 = median(x.p99 for x in runs["feed"])
    failed = sum(x.errors for series in runs.values() for x in series)  # the light run is informative only
    ratio_ok, feed_ok = ratio >= 0.6, feed_p99 <= 20.0
    lines += [
        "",
        f"user_get / health req/s ratio: {ratio:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)};"
        f" target >= 0.60: {'met' if ratio_ok else 'MISSED'})",
        f"  the same ratio from server CPU per request (load-independent): {cpu_ratio:.2f}",
        f"feed p99: {feed_p99:.2f} ms (target <= 20 ms: {'met' if feed_ok else 'MISSED'})",
    ]
    if failed:
        lines.append(f"WARNING: {failed} failed requests (connection errors or non-2xx responses)")
    text = "\n".join(lines)
    print(text)
    (out_dir / "summary.txt").write_text(text + "\n")
    return 0 if ratio_ok and feed_ok and not failed else 3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/helpers.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recreate-db").add_argument("url")
    sub.add_parser("drop-db").add_argument("url")
    dump = sub.add_parser("dump-ids")
    dump.add_argument("url")
    dump.add_argument("out", type=Path)
    sub.add_parser("flush-redis").add_argument("url")
    sub.add_parser("free-port")
    wait = sub.add_parser("wait-ready")
    wait.add_argument("base_url")
    wait.add_argument("log", type=Path)
    wait.add_argument("workers", type=int)
    wait.add_argument("timeout", type=float, nargs="?", default=60.0)
    warm = sub.add_parser("warm-profiles")
    warm.add_argument("base_url")
    warm.add_argument("ids", type=Path)
    tokens = sub.add_parser("tokens")
    tokens.add_argument("base_url")
    tokens.add_argument("ids", type=Path)
    tokens.add_argument("password")
    tokens.add_argument("count", type=int)
    tokens.add_argument("out", type=Path)
    sub.add_parser("report").add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command in ("recreate-db", "drop-db"):
        asyncio.run(recreate_db(args.url, create=args.command == "recreate-db"))
    elif args.command == "dump-ids":
        args.out.write_text("".join(f"{uid}\n" for uid in asyncio.run(_user_ids(args.url))))
    elif args.command == "flush-redis":
        client = redis.Redis.from_url(args.url)
        client.flushdb()
        client.close()
    elif args.command == "free-port":
        print(_free_port())
    elif args.command == "wait-ready":
        wait_ready(args.base_url, args.log, args.workers, args.timeout)
    elif args.command == "warm-profiles":
        asyncio.run(_warm_profiles(args.base_url, [line for line in args.ids.read_text().split() if line]))
    elif args.command == "tokens":
        ids = [line for line in args.ids.read_text().split() if line][: args.count]
        tokens = asyncio.run(_tokens(args.base_url, ids, args.password))
        args.out.write_text("".join(f"{token}\n" for token in tokens))
    elif args.command == "report":
        return _report(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
