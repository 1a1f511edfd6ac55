"""Steps of bench/citus_router.sh that are easier in Python.

    python bench/citus_router.py recreate URL [NODE ...]   drop and create the database named in URL on the
                                                           server of URL and on every NODE (host:port), with
                                                           the citus extension when NODEs are given
    python bench/citus_router.py drop URL [NODE ...]
    python bench/citus_router.py sample URL TABLE OUT N    N random ids of TABLE (users, post_index) to OUT
    python bench/citus_router.py report DIR                medians per configuration and the Citus/plain ratios
    python bench/citus_router.py free-port
    python bench/citus_router.py wait-ready BASE_URL LOG WORKERS

Only databases whose name starts with ``sn_bench`` are dropped or created.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path
from statistics import median
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

_SAFE_PREFIX = "sn_bench"


class BenchError(Exception):
    pass


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


def _result(path: Path) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, errors) from a wrk output with bench/citus_router.lua's RESULT line."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise BenchError(f"no RESULT line in {path}")
    fields = lines[-1].split()[1:]
    return float(fields[0]), float(fields[1]), float(fields[3]), int(fields[5])


def _report(out_dir: Path) -> int:
    # Files: <cache size>-<backend>-<endpoint>-<round>.txt
    runs: dict[tuple[str, str, str], list[tuple[float, float, float, int]]] = {}
    for path in sorted(out_dir.glob("sc*-*-*-*.txt")):
        cache, backend, endpoint, _ = path.stem.split("-")
        runs.setdefault((cache, backend, endpoint), []).append(_result(path))
    if not runs:
        raise BenchError(f"no results in {out_dir}")
    caches = sorted({key[0] for key in runs}, key=lambda c: -int(c.removeprefix("sc")))
    endpoints = ["user_get", "post_get"]
    lines = [
        f"{'statement cache':<16} {'endpoint':<10} {'plain req/s':>11} {'citus req/s':>11} {'ratio':>6}"
        f" {'plain p50':>9} {'citus p50':>9} {'plain p99':>9} {'citus p99':>9} {'errors':>6}"
    ]
    worst = float("inf")
    errors = 0
    for cache in caches:
        for endpoint in endpoints:
            plain = runs.get((cache, "plain", endpoint), [])
            citus = runs.get((cache, "citus", endpoint), [])
            if not plain or not citus:
                continue
            # Ratio per round (the two backends ran back to back within a round), then the median.
            ratio = median(c[0] / p[0] for p, c in zip(plain, citus, strict=False))
            worst = min(worst, ratio)
            failed = sum(r[3] for r in plain + citus)
            errors += failed
            lines.append(
                f"{cache.removeprefix('sc'):<16} {endpoint:<10} {median(r[0] for r in plain):>11.0f}"
                f" {median(r[0] for r in citus):>11.0f} {ratio:>6.2f}"
                f" {median(r[1] for r in plain):>9.2f} {median(r[1] for r in citus):>9.2f}"
                f" {median(r[2] for r in plain):>9.2f} {median(r[2] for r in citus):>9.2f} {failed:>6}"
            )
    lines.append("")
    lines.append(f"lowest Citus/plain ratio: {worst:.2f} (target >= 0.60: {'met' if worst >= 0.6 else 'MISSED'})")
    if errors:
        lines.append(f"WARNING: {errors} failed requests")
    text = "\n".join(lines)
    print(text)
    (out_dir / "summary.txt").write_text(text + "\n")
    return 0 if worst >= 0.6 and not errors else 3


def _wait_ready(base_url: str, log: Path, workers: int, timeout: float = 60.0) -> None:
    # /ready answers once one worker is up; every worker logs "worker ready" when it is.
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
            _wait_ready(args.base_url, args.log, args.workers)
        else:
            return _report(args.out_dir)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
