"""Steps of bench/citus_router.sh that are easier in Python.

    python bench/citus_router.py recreate URL [NODE ...]   drop and create the database named in URL on the
                                                           server of URL and on every NODE (host:port), with
                                                           the citus extension when NODEs are given
    python bench/citus_router.py drop URL [NODE ...]
    python bench/citus_router.py sample URL TABLE OUT N    N random ids of TABLE (users, post_index) to OUT
    python bench/citus_router.py report DIR                medians per configuration and the Citus/plain ratios
    python bench/citus_router.py free-port
    python bench/citus_router.py wait-ready BASE_URL LOG WORKERS
    python bench/citus_router.py listener-pid PORT         the process listening on a local TCP port
    python bench/citus_router.py ticks PID ...             CPU ticks (user+system) of the PIDs and all their
                                                           descendants: a server, or a postmaster and its backends

Only databases whose name starts with ``sn_bench`` are dropped or created.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from helpers import BenchError, wait_ready

_SAFE_PREFIX = "sn_bench"


def _node_url(url: str, node: str | None, database: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if node is not None:
        user = netloc.rpartition("@")[0]
        netloc = f"{user}@{node}" if user else node
    return urlunsplit(parts._replace(netloc=netloc, path="/" + database))


async def _recreate(url: str, nodes: list[str], create: bool) -> None:
    name = urlsplit(url).path.lstrip("/")
    if not name.startswith(_SAFE_PREFIX):
        raise BenchError(f"refusing to drop/create {name!r}: the name must start with {_SAFE_PREFIX}")
    for node in [None, *nodes]:
        admin = await asyncpg.connect(_node_url(url, node, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if create:
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        if create and nodes:
            # Citus does not propagate CREATE DATABASE: every node needs the database and extension.
            conn = await asyncpg.connect(_node_url(url, node, name))
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            finally:
                await conn.close()


async def _sample(url: str, table: str, count: int) -> list[int]:
    if table not in ("users", "post_index"):
        raise BenchError("sample: table must be users or post_index")
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT id FROM {table} ORDER BY random() LIMIT $1", count)
    finally:
        await conn.close()
    if not rows:
        raise BenchError(f"no rows in {table}")
    return [int(row["id"]) for row in rows]


def _listener_pid(port: int) -> int:
    """The pid owning the listening socket on `port` (IPv4 or IPv6), found through /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                    inodes.add(fields[9])
    if not inodes:
        raise BenchError(f"nothing listens on port {port}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
    raise BenchError(f"no process found for the listener on port {port} (not root?)")


def _ticks(roots: list[int], match: str | None = None) -> int:
    """User+system CPU ticks of the roots and every descendant alive now.

    With `match`, only descendants whose command line contains it: PostgreSQL backends show their
    database there, so a shared server's other databases (other people's tests) do not count.
    """
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name may contain spaces and parentheses: split after the last ')'.
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(proc.name)] = int(fields[1])
            ticks[int(proc.name)] = int(fields[11]) + int(fields[12])
    wanted = set(roots)
    grew = True
    while grew:
        before = len(wanted)
        wanted |= {pid for pid, ppid in parent.items() if ppid in wanted}
        grew = len(wanted) != before
    if match is not None:
        wanted = {pid for pid in wanted if match in _cmdline(pid)}
    return sum(ticks.get(pid, 0) for pid in wanted)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class _Run:
    rps: float
    p50: float
    p99: float
    errors: int
    app_us: float  # server (Sanic workers) CPU per request, microseconds
    db_us: float  # database CPU per request: the backends of the benchmark database on every node

    @property
    def cpu_us(self) -> float:
        return self.app_us + self.db_us


def _result(path: Path) -> _Run:
    """A run from wrk's output (bench/citus_router.lua's RESULT line) and its `.cpu` file."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise BenchError(f"no RESULT line in {path}")
    fields = lines[-1].split()[1:]
    requests = max(int(fields[4]), 1)
    app_us = db_us = float("nan")
    cpu = path.with_suffix(".cpu")
    if cpu.exists():
        app, db, hz = (float(value) for value in cpu.read_text().split())
        app_us, db_us = app / hz / requests * 1e6, db / hz / requests * 1e6
    return _Run(float(fields[0]), float(fields[1]), float(fields[3]), int(fields[5]), app_us, db_us)


def _report(out_dir: Path) -> int:
    # Files: sc<cache size>-<backend>-<endpoint>-<round>.txt (+ .cpu)
    runs: dict[tuple[str, str, str], list[_Run]] = {}
    for path in sorted(out_dir.glob("sc*-*-*-*.txt")):
        cache, backend, endpoint, _ = path.stem.split("-")
        runs.setdefault((cache, backend, endpoint), []).append(_result(path))
    if not runs:
        raise BenchError(f"no results in {out_dir}")
    caches = sorted({key[0] for key in runs}, key=lambda c: -int(c.removeprefix("sc")))
    lines = [
        f"{'stmt cache':<10} {'endpoint':<9} {'backend':<7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'app us/req':>10} {'db us/req':>9} {'errors':>6}"
    ]
    ratios: list[str] = []
    worst = float("inf")
    errors = 0
    for cache in caches:
        for endpoint in ("user_get", "post_get"):
            plain = runs.get((cache, "plain", endpoint), [])
            variants = [b for b in ("citus", "coord") if runs.get((cache, b, endpoint))]
            if not plain or not variants:
                continue
            for backend in ("plain", *variants):
                series = runs[(cache, backend, endpoint)]
                failed = sum(r.errors for r in series)
                errors += failed
                lines.append(
                    f"{cache.removeprefix('sc'):<10} {endpoint:<9} {backend:<7} {median(r.rps for r in series):>7.0f}"
                    f" {median(r.p50 for r in series):>7.2f} {median(r.p99 for r in series):>7.2f}"
                    f" {median(r.app_us for r in series):>10.0f} {median(r.db_us for r in series):>9.0f} {failed:>6}"
                )
            for backend in variants:
                other = runs[(cache, backend, endpoint)]
                # Throughput ratio per round (the backends ran back to back within a round), then
                # the median; and the same from CPU per request, which background load does not move.
                rps_ratio = median(c.rps / p.rps for p, c in zip(plain, other, strict=False))
                cpu_ratio = median(p.cpu_us / c.cpu_us for p, c in zip(plain, other, strict=False))
                if backend == "citus":  # the target is about what the app does by default
                    worst = min(worst, rps_ratio)
                ratios.append(
                    f"stmt cache {cache.removeprefix('sc'):<4} {endpoint:<9} {backend}/plain req/s {rps_ratio:.2f}"
                    f"   from CPU per request (app + all database processes) {cpu_ratio:.2f}"
                )
    lines += ["", *ratios, ""]
    lines.append(f"lowest citus/plain req/s ratio: {worst:.2f} (target >= 0.60: {'met' if worst >= 0.6 else 'MISSED'})")
    if errors:
        lines.append(f"WARNING: {errors} failed requests")
    text = "\n".join(lines)
    print(text)
    (out_dir / "summary.txt").write_text(text + "\n")
    return 0 if worst >= 0.6 and not errors else 3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/citus_router.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("recreate", "drop"):
        step = sub.add_parser(name)
        step.add_argument("url")
        step.add_argument("nodes", nargs="*")
    sample = sub.add_parser("sample")
    sample.add_argument("url")
    sample.add_argument("table")
    sample.add_argument("out", type=Path)
    sample.add_argument("count", type=int)
    sub.add_parser("report").add_argument("out_dir", type=Path)
    sub.add_parser("free-port")
    wait = sub.add_parser("wait-ready")
    wait.add_argument("base_url")
    wait.add_argument("log", type=Path)
    wait.add_argument("workers", type=int)
    sub.add_parser("listener-pid").add_argument("port", type=int)
    ticks = sub.add_parser("ticks")
    ticks.add_argument("--match")
    ticks.add_argument("pids", type=int, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command in ("recreate", "drop"):
            asyncio.run(_recreate(args.url, args.nodes, create=args.command == "recreate"))
        elif args.command == "sample":
            ids = asyncio.run(_sample(args.url, args.table, args.count))
            args.out.write_text("".join(f"{value}\n" for value in ids))
        elif args.command == "free-port":
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                print(sock.getsockname()[1])
        elif args.command == "wait-ready":
            wait_ready(args.base_url, args.log, args.workers)
        elif args.command == "listener-pid":
            print(_listener_pid(args.port))
        elif args.command == "ticks":
            print(_ticks(args.pids, args.match))
        else:
            return _report(args.out_dir)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
