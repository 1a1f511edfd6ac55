"""The whole topology under load (bench/topology_run.sh, `make topology-bench`): the steps after seeding.

    python bench/topology_bench.py run --citus-env F --plain-env F --topology-script S --out DIR [knobs]

`--citus-env` / `--plain-env` are `scripts/topology.sh env` of two running topologies (Citus, plain PostgreSQL), both
seeded by `sn seed` with the same parameters. What it does, in order:

1. prep: the graph from the Citus database (the celebrity: most followers; the rising user: most followers below the
   live celebrity threshold; the online users: the celebrity's first N followers); users already over the threshold
   are promoted by hand first (`sn hot promote`, timed), so that the only move during the scenario is the rising
   user's; tokens are minted with the deployment's secret (real JWTs, as /login issues them).
2. ratio: the same requests on plain PostgreSQL and on Citus, side by side (plain, Citus, plain, Citus), each class
   by wrk (bench/topology_wrk.lua) through each topology's balancer: cached reads (/post/feed, /user/get of warmed
   users), cache-miss reads (/user/get of users never read), writes (/post/create). The plain topology is stopped
   afterwards.
3. scenario, on Citus, all at once through the balancer: N WebSocket clients (bench/ws_load.py's lean client, in
   shard processes, reconnecting with ?since= when a socket drops); an open-loop read-heavy mix (~50 reads per write,
   writes by online users); probe followers whose posts are made on the *other* app node (POST → receipt latency);
   the celebrity posting every few seconds; the rising user crossing the threshold (real follows) and promoted live
   by the app's HotPromoter while they post and their followers read; app node A SIGKILLed, its clients back through
   the balancer, node A started again.
4. checks: every post committed is in the probe followers' and a sample of the celebrity's followers' feeds; every
   celebrity / probe post reached every socket that should have it (live, replay or resync); the hot worker holds
   only hot users' shards; a final post by the celebrity on the normal fan-out path (threshold raised) to time the
   fan-out to the N online followers on both nodes.

Results: DIR/topology.json, and the tables for docs/benchmarks.md on stdout (`report DIR` prints them again).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import topology_trace
from helpers import BenchError
from ws_load import (
    PERCENTILES,
    Shard,
    percentile,
    token,
    ws_path,
)

from sn.ids import timestamp_ms

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_EVENT_ID = re.compile(rb'"event_id":(\d+)')
MIX_CONNECTIONS = 128  # the open-loop mix's requests in flight at most (see Scenario.mix)


def say(message: str) -> None:
    print(f"topology-bench: {message}", flush=True)


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip("'\"")
    return values


def ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {name: round(percentile(ordered, q) * 1000, 1) for name, q in PERCENTILES} | {"n": len(ordered)}


# ================================================================== the socket fleet, reconnecting


class TopoShard(Shard):
    """bench/ws_load.py's shard, plus what a real client does when its socket drops: reconnect with ?since=."""

    def __init__(self, number: int, port: int) -> None:
        super().__init__(number, port)
        self.paths: dict[int, str] = {}
        self.reconnecting = False
        self.reconnects = 0
        self.reconnect_errors: dict[str, int] = {}
        # Each socket's last event id from receipts already handed to the bench (take_receipts clears them): without
        # it, a socket dropped after a drain reconnected with an old `since` (0 after the scenario) and was replayed
        # everything again.
        self.last_seen: dict[int, int] = {}
        self.reopened: dict[int, float] = {}  # socket index -> when its last reconnect opened
        # Every reconnect that opened: (socket index, when it opened, the `since` it asked for), so each duplicate
        # frame can be traced to the path that sent it (see duplicate_paths).
        self.reconnect_log: list[tuple[int, float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def _last_ids(self, wanted: set[int]) -> dict[int, int]:
        last = {idx: self.last_seen[idx] for idx in wanted if idx in self.last_seen}
        for idx, _, payload in self.receipts:
            if idx in wanted:
                match = _EVENT_ID.search(payload)
                if match:
                    last[idx] = max(last.get(idx, 0), int(match.group(1)))
        return last

    def take_receipts(self) -> list[tuple[int, float, str, str, int]]:
        taken = super().take_receipts()
        for idx, _, _, _, event_id in taken:
            if event_id > self.last_seen.get(idx, 0):
                self.last_seen[idx] = event_id
        return taken

    async def _reconnect_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            dropped = [idx for idx in self.paths if idx not in self.conns]
            if not dropped:
                continue
            self.reconnecting = True
            last = self._last_ids(set(dropped))
            specs = [(idx, f"{self.paths[idx]}&since={last.get(idx, 0)}") for idx in dropped]
            # Jittered within 1 s, as real clients back off; retried until it works (30 s at most a round).
            result = await Shard.connect(self, specs, 64, 30.0, spread=1.0)
            self.reconnects += result["opened"]
            for idx in dropped:
                if idx in self.conns and self.conns[idx].opened.done():
                    self.reopened[idx] = self.conns[idx].opened.result()
                    self.reconnect_log.append((idx, self.reopened[idx], last.get(idx, 0)))
            for name, count in result["errors"].items():
                self.reconnect_errors[name] = self.reconnect_errors.get(name, 0) + count
            self.reconnecting = False

    async def handle(self, command: str, kwargs: dict[str, Any]) -> Any:
        if command == "connect":
            result = await super().handle(command, kwargs)
            # Watched for drops from now on (not before: a socket still in its handshake is not a drop).
            self.paths.update(dict(kwargs["specs"]))
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._reconnect_loop())
            return result
        if command == "stats":
            return {
                "open": len(self.conns),
                "frames": self.frames,
                "unexpected_closes": self.unexpected_closes,
                "reconnects": self.reconnects,
                "reconnecting": int(self.reconnecting),
                "reconnect_errors": sum(self.reconnect_errors.values()),
            }
        if command == "reopened":
            return dict(self.reopened)
        if command == "reconnect_log":
            return list(self.reconnect_log)
        return await super().handle(command, kwargs)


def _topo_shard_main(number: int, port: int, pipe: Any) -> None:
    import ws_load

    # Reuse ws_load's shard loop with our shard class.
    ws_load.Shard = TopoShard  # type: ignore[misc]
    ws_load._shard_main(number, port, pipe)


class TopoFleet:
    """ws_load.Fleet's shape, with TopoShard processes."""

    def __init__(self, shards: int, port: int) -> None:
        import multiprocessing

        import ws_load

        context = multiprocessing.get_context("spawn")
        self._inner = ws_load.Fleet.__new__(ws_load.Fleet)
        self._inner.pipes, self._inner.procs = [], []
        for number in range(shards):
            parent, child = context.Pipe()
            proc = context.Process(target=_topo_shard_main, args=(number, port, child), daemon=True)
            proc.start()
            self._inner.pipes.append(parent)
            self._inner.procs.append(proc)

    async def connect(self, specs: Sequence[tuple[int, str]], concurrency: int, timeout: float) -> dict[str, Any]:
        return await self._inner.connect(specs, concurrency=concurrency, timeout=timeout)

    async def record(self, on: bool) -> None:
        await self._inner.record(on)

    async def receipts(self) -> list[tuple[int, float, str, str, int]]:
        return await self._inner.receipts()

    async def stats(self) -> dict[str, int]:
        replies = await self._inner.call("stats")
        return {key: sum(r[key] for r in replies) for key in replies[0]}

    async def reopened(self) -> dict[int, float]:
        """Socket index -> when its last reconnect opened (time.monotonic(), shared by the processes)."""
        return {idx: at for reply in await self._inner.call("reopened") for idx, at in reply.items()}

    async def reconnect_log(self) -> list[tuple[int, float, int]]:
        """Every reconnect that opened, from every process: (socket index, when it opened, its `since`)."""
        return sorted(entry for reply in await self._inner.call("reconnect_log") for entry in reply)

    def stop(self) -> None:
        self._inner.stop()


def duplicate_paths(
    copies: Sequence[tuple[int, float, int, float, int]], reconnects: Sequence[tuple[int, float, int]]
) -> dict[str, int]:
    """Sort second copies of a post on one socket index by the path that most likely sent them.

    `copies` holds (socket index, first copy's receipt, first copy's event id, this copy's receipt, its event id).
    A copy with no reconnect of that index in between came over the same socket. Otherwise the last reconnect
    before it decides: its `since` was past the first copy's event id (the replay should not have had it) or
    before it (the replay legitimately re-sent it); and the copy came within 0.2 s of the open (replayed) or
    later (live).
    """
    by_index: dict[int, list[tuple[float, int]]] = {}
    for idx, opened_at, since in reconnects:
        by_index.setdefault(idx, []).append((opened_at, since))
    paths: dict[str, int] = {}
    for idx, first_at, first_event, at, _ in copies:
        between = [(o, s) for o, s in by_index.get(idx, ()) if first_at <= o <= at]
        if not between:
            name = "same_socket"
        else:
            opened_at, since = between[-1]
            cursor = "since_past_first" if since >= first_event else "since_before_first"
            name = f"{cursor}_{'replayed' if at - opened_at <= 0.2 else 'live'}"
            if len(between) > 1:
                name += "_after_several_reconnects"
        paths[name] = paths.get(name, 0) + 1
    return dict(sorted(paths.items()))


async def settle(fleet: TopoFleet, *, at_least: float, at_most: float, quiet: float = 3.0) -> float:
    """Wait until the fleet has had no frame for `quiet` seconds (at least `at_least`, at most `at_most`)."""
    started = time.monotonic()
    await asyncio.sleep(at_least)
    frames, last_change = (await fleet.stats())["frames"], time.monotonic()
    while time.monotonic() - started < at_most and time.monotonic() - last_change < quiet:
        await asyncio.sleep(0.5)
        now_frames = (await fleet.stats())["frames"]
        if now_frames != frames:
            frames, last_change = now_frames, time.monotonic()
    return round(time.monotonic() - started, 1)


# ================================================================== HTTP helpers


@dataclass
class Reply:
    status_code: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class LeanHttp:
    """The scenario's HTTP client: aiohttp behind the few httpx calls the scenario makes (get, post, put).

    Measured here against the topology's balancer, 300 to 3000 requests at 32 in flight: httpx 0.29 spends 5–10 ms
    of CPU per request, aiohttp 0.3 ms. At the mix's 150 requests/s, httpx alone wanted most of a core on a
    2-core machine that also carries the whole topology; the bench process fell behind, and every time it took
    (the probes' included) grew by its own queueing, not the system's. Setup and checks keep httpx.
    """

    def __init__(self, base_url: str, connections: int, timeout: float = 30) -> None:
        self._base = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def __aenter__(self) -> LeanHttp:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Reply:
        url = path if path.startswith("http") else self._base + path
        async with self._session.request(method, url, **kwargs) as response:
            return Reply(response.status, await response.read())

    async def get(self, path: str, *, headers: dict[str, str] | None = None, params: Any = None) -> Reply:
        return await self._call("GET", path, headers=headers, params=params)

    async def post(self, path: str, *, json: Any = None, headers: dict[str, str] | None = None) -> Reply:
        return await self._call("POST", path, json=json, headers=headers)

    async def put(self, path: str, *, headers: dict[str, str] | None = None) -> Reply:
        return await self._call("PUT", path, headers=headers)


# The failures a timed request may end in (the client's own; an HTTP status is an answer).
REQUEST_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass
class Deployment:
    name: str
    env: dict[str, str]
    secret: str = ""
    lb: str = ""
    node_a: str = ""
    node_b: str = ""
    admin_user: int = 0  # tokens name an existing user (the server checks subjects), admin or not

    def __post_init__(self) -> None:
        self.secret = self.env["SN_JWT_SECRET"]
        self.lb = self.env["TOPOLOGY_LB_URL"]
        self.node_a = self.env["TOPOLOGY_NODE_A_URL"]
        self.node_b = self.env["TOPOLOGY_NODE_B_URL"]

    @property
    def db(self) -> str:
        return self.env["SN_DATABASE_URL"]

    def auth(self, user: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(self.secret, user)}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(self.secret, self.admin_user, admin=True)}"}


@dataclass
class Log:
    """Every request of the scenario: (monotonic start, endpoint, seconds, ok); and, for the ones that failed or took
    longer than SLOW seconds, what happened (to tell where a tail comes from)."""

    SLOW = 1.0

    rows: list[tuple[float, str, float, bool]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    slow: list[tuple[float, str, float, str]] = field(default_factory=list)  # (start, endpoint, seconds, outcome)

    async def timed(self, endpoint: str, call: Awaitable[Reply], gate: asyncio.Semaphore | None = None) -> Reply | None:
        """`call` is not started yet (a coroutine): with a `gate`, the time waiting for it counts as the request's."""
        started = time.monotonic()
        try:
            if gate is None:
                response = await call
            else:
                async with gate:
                    response = await call
        except REQUEST_ERRORS as exc:
            seconds = time.monotonic() - started
            self.rows.append((started, endpoint, seconds, False))
            self.slow.append((started, endpoint, seconds, type(exc).__name__))
            key = f"{endpoint}: {type(exc).__name__}"
            self.errors[key] = self.errors.get(key, 0) + 1
            return None
        ok = response.status_code < 400
        seconds = time.monotonic() - started
        self.rows.append((started, endpoint, seconds, ok))
        if seconds > self.SLOW or not ok:
            self.slow.append((started, endpoint, seconds, f"HTTP {response.status_code}"))
        if not ok:
            key = f"{endpoint}: HTTP {response.status_code}"
            self.errors[key] = self.errors.get(key, 0) + 1
        return response

    def summary(self, start: float, end: float, exclude: Callable[[str], bool] = lambda _: False) -> dict[str, Any]:
        by: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        for started, endpoint, seconds, ok in self.rows:
            if start <= started < end and not exclude(endpoint):
                by.setdefault(endpoint, []).append(seconds)
                if not ok:
                    failed[endpoint] = failed.get(endpoint, 0) + 1
        span = max(end - start, 1e-9)
        return {
            endpoint: {"per_s": round(len(v) / span, 1), "failed": failed.get(endpoint, 0)} | ms(v)
            for endpoint, v in sorted(by.items())
        }

    def p99(self, start: float, end: float, exclude: Callable[[str], bool]) -> float:
        values = sorted(s for t, e, s, _ in self.rows if start <= t < end and not exclude(e))
        return round(percentile(values, 0.99) * 1000, 1)


async def post(
    http: LeanHttp,
    dep: Deployment,
    author: int,
    text: str,
    log: Log,
    label: str,
    gate: asyncio.Semaphore | None = None,
) -> str | None:
    response = await log.timed(label, http.post("/post/create", json={"text": text}, headers=dep.auth(author)), gate)
    if response is None or response.status_code != 200:
        return None
    return str(response.json())


# ================================================================== prep


@dataclass
class Graph:
    celebrity: int
    celebrity_followers: int
    rising: int
    rising_followers: int
    over_threshold: list[int]
    mid: int  # an author whose only followers are the online users (the final fan-out)
    online: list[int]
    users: list[int]
    following: dict[int, set[int]]  # online user -> authors they follow (seeded)


async def load_graph(db: str, threshold: int, online: int, rising_follows: int) -> Graph:
    conn = await asyncpg.connect(db)
    try:
        counts = await conn.fetch("SELECT author_id, count(*) AS n FROM followers GROUP BY 1 ORDER BY 2 DESC LIMIT 500")
        celebrity, celebrity_n = int(counts[0]["author_id"]), int(counts[0]["n"])
        over = [int(r["author_id"]) for r in counts if r["n"] >= threshold]
        below = [r for r in counts if r["n"] < threshold]
        rising, rising_n = int(below[0]["author_id"]), int(below[0]["n"])
        keep = threshold - rising_follows
        if rising_n > keep:
            # The same burst of follows every run (the seed's nearest user below the threshold may lack 5 or 150):
            # followers beyond `keep` are removed from both mirror tables, as `sn seed` writes them (Redis knows
            # nothing of this user yet).
            gone = [
                int(r[0])
                for r in await conn.fetch(
                    "SELECT follower_id FROM followers WHERE author_id = $1 ORDER BY follower_id DESC LIMIT $2",
                    rising,
                    rising_n - keep,
                )
            ]
            await conn.execute(
                "DELETE FROM followers WHERE author_id = $1 AND follower_id = ANY($2::bigint[])", rising, gone
            )
            await conn.execute(
                "DELETE FROM friendships WHERE friend_id = $1 AND user_id = ANY($2::bigint[])", rising, gone
            )
            rising_n = keep
        online_ids = [
            int(r[0])
            for r in await conn.fetch(
                "SELECT follower_id FROM followers WHERE author_id = $1 AND follower_id <> $2"
                " ORDER BY follower_id LIMIT $3",
                celebrity,
                rising,
                online,
            )
        ]
        users = [int(r[0]) for r in await conn.fetch("SELECT id FROM users ORDER BY id")]
        rows = await conn.fetch(
            "SELECT user_id, array_agg(friend_id) AS f FROM friendships WHERE user_id = ANY($1::bigint[]) GROUP BY 1",
            online_ids,
        )
        following = {int(r["user_id"]): {int(x) for x in r["f"]} for r in rows}
        # The final fan-out's author: followed by exactly the online users, written like `sn seed` writes follows
        # (both mirror tables, straight into the database: Redis holds nothing about this author yet).
        taken = set(online_ids) | {celebrity, rising}
        mid = next(u for u in reversed(users) if u not in taken)
        await conn.execute("DELETE FROM followers WHERE author_id = $1", mid)
        await conn.execute(
            "INSERT INTO followers (author_id, follower_id) SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
            mid,
            online_ids,
        )
        await conn.execute(
            "INSERT INTO friendships (user_id, friend_id) SELECT unnest($2::bigint[]), $1 ON CONFLICT DO NOTHING",
            mid,
            online_ids,
        )
    finally:
        await conn.close()
    if len(online_ids) >= threshold:
        # Over the threshold too: promoted by hand with the others, or the app would move it once the final fan-out
        # caches its follower count, and the end-of-run check would find that move still running.
        over.append(mid)
    return Graph(celebrity, celebrity_n, rising, rising_n, over, mid, online_ids, users, following)


def sn_command(dep: Deployment, *args: str, timeout: float = 300) -> tuple[float, str]:
    env = {**os.environ, **{k: v for k, v in dep.env.items() if k.startswith("SN_") and v}}
    started = time.monotonic()
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "sn"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise BenchError(f"sn {' '.join(args)}: {out.stdout}{out.stderr}")
    return time.monotonic() - started, out.stdout


# ================================================================== ratio (wrk)


def wrk(base_url: str, mode: str, path: Path, seconds: int, connections: int, threads: int = 2) -> dict[str, Any]:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s"]
    command += [str(HERE / "topology_wrk.lua"), base_url, "--", mode, str(path), str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise BenchError(f"wrk {mode}: no RESULT line:\n{out.stdout}{out.stderr}")
    rps, p50, p99, requests, errors = line.split()[1:]
    return {
        "per_s": float(rps),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "requests": int(requests),
        "errors": int(errors),
    }


async def warm(dep: Deployment, readers: Sequence[int], profiles: Sequence[int]) -> None:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=dep.lb, timeout=60, limits=limits) as http:
        gate = asyncio.Semaphore(32)

        async def one(path: str, headers: dict[str, str] | None = None) -> None:
            async with gate:
                # A 503 is the balancer with no node passing /ready for a moment (a busy machine): retried.
                for _ in range(20):
                    response = await http.get(path, headers=headers)
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(0.5)
                if response.status_code != 200:
                    raise BenchError(f"warm-up {path}: {response.status_code} {response.text[:200]}")

        await asyncio.gather(
            *(one("/post/feed", dep.auth(u)) for u in readers), *(one(f"/user/get/{u}") for u in profiles)
        )


async def ratio_users(db: str, exclude: set[int]) -> list[int]:
    """A deployment's users (each database was seeded on its own: the ids differ), less the special ones."""
    conn = await asyncpg.connect(db)
    try:
        top = {
            int(r[0])
            for r in await conn.fetch("SELECT author_id FROM followers GROUP BY 1 ORDER BY count(*) DESC LIMIT 3")
        }
        users = [int(r[0]) for r in await conn.fetch("SELECT id FROM users ORDER BY id")]
    finally:
        await conn.close()
    pool = [u for u in users if u not in exclude and u not in top]
    random.Random(7).shuffle(pool)
    return pool


async def ratio(args: argparse.Namespace, deps: dict[str, Deployment], graph: Graph, out: Path) -> dict[str, Any]:
    exclude = {*graph.online, graph.celebrity, graph.rising, graph.mid}
    pools = {name: await ratio_users(dep.db, exclude) for name, dep in deps.items()}
    for name, dep in deps.items():
        pool = pools[name]
        readers, profiles, writers = pool[:1000], pool[1000:2000], pool[2000:3000]
        (out / f"profiles-{name}.txt").write_text("\n".join(map(str, profiles)) + "\n")
        (out / f"readers-{name}.txt").write_text("\n".join(token(dep.secret, u) for u in readers) + "\n")
        (out / f"writers-{name}.txt").write_text("\n".join(token(dep.secret, u) for u in writers) + "\n")
        say(f"ratio: warming {len(readers)} feeds and {len(profiles)} profiles on {name}")
        await warm(dep, readers, profiles)
    # Cold ids: a slice of its own per run, so that no run reads a profile another run (or itself) cached.
    runs = [(r, name) for r in range(args.ratio_rounds) for name in ("plain", "citus")]
    slice_size = min(len(pool) - 3000 for pool in pools.values()) // args.ratio_rounds
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"plain": {}, "citus": {}}
    for number, (round_no, name) in enumerate(runs):
        dep = deps[name]
        cold = pools[name][3000 + round_no * slice_size : 3000 + (round_no + 1) * slice_size]
        miss_file = out / f"cold-{number}.txt"
        miss_file.write_text("\n".join(map(str, cold)) + "\n")
        plan = (
            ("feed (cached)", "feed", out / f"readers-{name}.txt"),
            ("user/get (cached)", "user_get", out / f"profiles-{name}.txt"),
            ("user/get (cache miss)", "user_miss", miss_file),
            ("post/create (write)", "post_create", out / f"writers-{name}.txt"),
        )
        for label, mode, path in plan:
            result = await asyncio.to_thread(wrk, dep.lb, mode, path, args.ratio_seconds, args.ratio_connections)
            if mode == "user_miss":
                result["ids"] = slice_size
            results[name].setdefault(label, []).append(result)
            say(
                f"ratio round {round_no + 1} {name:6} {label:22} {result['per_s']:8.1f}/s p50 {result['p50_ms']} ms "
                f"p99 {result['p99_ms']} ms errors {result['errors']}"
            )
    table = {}
    for label in results["citus"]:
        plain = [r["per_s"] for r in results["plain"][label]]
        citus = [r["per_s"] for r in results["citus"][label]]
        table[label] = {
            "plain_per_s": round(sum(plain) / len(plain), 1),
            "citus_per_s": round(sum(citus) / len(citus), 1),
            "ratio": round(sum(citus) / max(sum(plain), 1e-9), 2),
            "ratio_per_round": [round(c / max(p, 1e-9), 2) for c, p in zip(citus, plain, strict=True)],
            "plain_p99_ms": [r["p99_ms"] for r in results["plain"][label]],
            "citus_p99_ms": [r["p99_ms"] for r in results["citus"][label]],
            "errors": sum(r["errors"] for r in results["plain"][label] + results["citus"][label]),
            "miss_ids_per_run": results["citus"][label][0].get("ids"),
            "miss_requests_max": max(r["requests"] for r in results["plain"][label] + results["citus"][label]),
        }
    return table


# ================================================================== the scenario


@dataclass
class Scenario:
    args: argparse.Namespace
    dep: Deployment
    graph: Graph
    topology_script: Path
    topology_env: dict[str, str]
    log: Log = field(default_factory=Log)
    committed: dict[str, tuple[int, float, str]] = field(default_factory=dict)  # post id -> (author, start, kind)
    events: dict[str, float] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    promotion: dict[str, Any] = field(default_factory=dict)
    node_loss: dict[str, Any] = field(default_factory=dict)
    # (post id, receipt, node, receipt wall-clock time)
    probe_receipts: list[tuple[str, float, str, float]] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # probe (author, follower)
    # post -> (start, via, to, response): the POST's start and the time its response came back
    probe_posts: dict[str, tuple[float, str, str, float]] = field(default_factory=dict)
    # (time, seconds late) of every wake-up of this process's own event loop: its stalls delay every timing here
    loop_lag: list[tuple[float, float]] = field(default_factory=list)
    probe_reconnects: int = 0
    settled_s: float = 0.0  # how long the frames took to stop after the load
    probe_event_ids: dict[str, int] = field(default_factory=dict)  # post -> the event id its follower got it under
    # /metrics of each node: at the start, node A's just before its kill, both at the end
    stage_scrapes: dict[str, topology_trace.StageHistograms] = field(default_factory=dict)
    recent: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))

    async def sample_loop_lag(self, interval: float = 0.01) -> None:
        """The bench's own event loop: a receipt or a response it reads late is timed late by as much."""
        while not self.stopping.is_set():
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            woke = time.monotonic()
            self.loop_lag.append((woke, woke - due))

    def mark(self, name: str) -> None:
        self.events[name] = time.monotonic()
        say(f"t+{self.events[name] - self.events['start']:.1f}s {name}")

    async def make_post(
        self, http: LeanHttp, author: int, kind: str, gate: asyncio.Semaphore | None = None
    ) -> str | None:
        started = time.monotonic()
        post_id = await post(http, self.dep, author, f"{kind} post", self.log, f"POST /post/create ({kind})", gate)
        if post_id is not None:
            self.committed[post_id] = (author, started, kind)
            if kind != "celebrity":
                self.recent.append(post_id)
        return post_id

    # ---- loops -----------------------------------------------------------------------------------------------------

    async def mix(self, http: LeanHttp, rate: float) -> None:
        """Open loop: requests start on the clock (not when the previous answered), ~50 reads per write.

        A request due while every connection of the mix is busy waits at `gate` (its wait counted in its time, as
        an open loop must) rather than in httpx's pool: httpcore 1.0 scans all its connections for every queued
        request at each request's start and end, so a queue of thousands there costs this process whole seconds
        of CPU per second, its throughput collapses to tens of requests/s, and every timing taken in it (the
        probes' included) grows by as much; seen as the 20–45 s tails of earlier runs.
        """
        rng = random.Random(11)
        gate = asyncio.Semaphore(MIX_CONNECTIONS)
        online = self.graph.online
        readers = online[: min(1000, len(online) // 2)]
        profiles = self.graph.users
        tasks: set[asyncio.Task[Any]] = set()
        interval = 1.0 / rate
        next_at = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            n += 1
            kind = n % 52
            if kind == 0:
                call: Awaitable[Any] = self.make_post(http, rng.choice(online), "online user", gate)
            elif kind % 3 == 0:
                user = rng.choice(readers)
                call = self.log.timed("GET /post/feed", http.get("/post/feed", headers=self.dep.auth(user)), gate)
            elif kind % 3 == 1 or not self.recent:
                call = self.log.timed("GET /user/get", http.get(f"/user/get/{rng.choice(profiles)}"), gate)
            else:
                call = self.log.timed("GET /post/get", http.get(f"/post/get/{rng.choice(self.recent)}"), gate)
            task = asyncio.ensure_future(call)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1:
                next_at = time.monotonic()  # fell behind by a second: skip, do not burst
        await asyncio.gather(*tasks, return_exceptions=True)

    async def celebrity(self, http: LeanHttp) -> None:
        while not self.stopping.is_set():
            await self.make_post(http, self.graph.celebrity, "celebrity")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.celebrity_every)

    async def rising(self, http: LeanHttp) -> None:
        """The rising user posts every second for the whole scenario; their followers read their posts."""
        rng = random.Random(5)
        while not self.stopping.is_set():
            post_id = await self.make_post(http, self.graph.rising, "rising user")
            if post_id is not None and self.promotion.get("followers"):
                reader = rng.choice(self.promotion["followers"])
                await self.log.timed(
                    "GET /post/feed (rising's followers)", http.get("/post/feed", headers=self.dep.auth(reader))
                )
                await self.log.timed("GET /post/get (rising's posts)", http.get(f"/post/get/{post_id}"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 1.0)

    async def promote(self, http: LeanHttp, at: float) -> None:
        await asyncio.sleep(at)
        threshold = self.args.threshold
        needed = threshold - self.graph.rising_followers + 1
        already = {u for u, f in self.graph.following.items() if self.graph.rising in f}
        new_followers = [u for u in self.graph.online if u not in already][:needed]
        self.promotion["followers"] = new_followers
        self.mark("rising user: follows start")
        gate = asyncio.Semaphore(16)
        async with LeanHttp(self.dep.lb, 16) as own:

            async def follow(user: int) -> None:
                async with gate:
                    await self.log.timed(
                        "PUT /friend/set (rising)",
                        own.put(f"/friend/set/{self.graph.rising}", headers=self.dep.auth(user)),
                    )

            await asyncio.gather(*(follow(u) for u in new_followers))
        self.mark("rising user: over the threshold")
        conn = await asyncpg.connect(self.dep.db)
        try:
            hot_node = await conn.fetchval(
                "SELECT nodename || ':' || nodeport FROM pg_dist_node WHERE nodeport = $1",
                int(self.dep.env["SN_CITUS_HOT_WORKER"].rsplit(":", 1)[1]),
            )
            deadline = time.monotonic() + self.args.promotion_timeout
            while time.monotonic() < deadline:
                row = await conn.fetchrow("SELECT hot, changed_at FROM hot_users WHERE user_id = $1", self.graph.rising)
                if row is not None and "recorded" not in self.events:
                    self.mark("promotion: recorded (move starts)")
                    self.events["recorded"] = self.events["promotion: recorded (move starts)"]
                node = await conn.fetchval(
                    "SELECT nodename || ':' || nodeport FROM citus_shards WHERE table_name = 'users'::regclass"
                    " AND shardid = get_shard_id_for_distribution_column('users', $1::bigint)",
                    self.graph.rising,
                )
                if node == hot_node:
                    self.mark("promotion: on the hot worker")
                    break
                await asyncio.sleep(0.2)
            else:
                self.promotion["error"] = f"not on the hot worker after {self.args.promotion_timeout} s"
        finally:
            await conn.close()

    async def scrape_stages(self, http: LeanHttp, name: str, url: str) -> None:
        response = await http.get(url + "/metrics", headers=self.dep.admin)
        self.stage_scrapes[name] = topology_trace.StageHistograms.parse(response.text)

    async def node_kill(self, fleet: TopoFleet, http: LeanHttp, at: float, down_for: float) -> None:
        await asyncio.sleep(at)
        before = await fleet.stats()
        await self.scrape_stages(http, "node-a before the kill", self.dep.node_a)
        await asyncio.to_thread(
            subprocess.run, ["bash", str(self.topology_script), "kill", "a"], env=self.topology_env, check=True
        )
        self.mark("node A SIGKILLed")
        # Every client back: as many open sockets as before, and no reconnect round in progress.
        dropped_seen = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = await fleet.stats()
            dropped_seen = max(dropped_seen, stats["unexpected_closes"] - before["unexpected_closes"])
            if dropped_seen and stats["open"] >= before["open"] and not stats["reconnecting"]:
                self.mark("node loss: every client back")
                break
            await asyncio.sleep(0.1)
        self.node_loss.update(
            dropped=dropped_seen,
            back_s=round(
                self.events.get("node loss: every client back", float("nan")) - self.events["node A SIGKILLed"], 2
            ),
        )
        remaining = down_for - (time.monotonic() - self.events["node A SIGKILLed"])
        if remaining > 0:
            await asyncio.sleep(remaining)
        started = time.monotonic()
        await asyncio.to_thread(
            subprocess.run, ["bash", str(self.topology_script), "start", "a"], env=self.topology_env, check=True
        )
        self.node_loss["restart_s"] = round(time.monotonic() - started, 1)
        self.mark("node A started again")

    async def probes(self, http_a: LeanHttp, http_b: LeanHttp) -> None:
        """Probe followers hold sockets through the balancer (and reconnect through it with ?since= when their node
        goes away); their authors post on the node the follower is *not* on, directly."""
        from websockets.asyncio.client import connect

        rng = random.Random(3)
        base = self.dep.lb.replace("http://", "ws://")

        @dataclass
        class Probe:
            author: int
            follower: int
            node: str = ""
            last_event_id: int = 0
            ws: Any = None

        async def open_socket(probe: Probe) -> None:
            while True:
                try:
                    path = ws_path(probe.follower, self.dep.secret)
                    if probe.last_event_id:
                        path += f"&since={probe.last_event_id}"
                    ws = await connect(base + path, open_timeout=10)
                    await ws.recv()
                    await ws.send(json.dumps({"type": "get_stats"}))
                    while (frame := json.loads(await ws.recv()))["type"] != "stats":
                        self._probe_frame(probe, frame)
                    probe.node, probe.ws = frame["data"]["worker"]["node"], ws
                    return
                except (OSError, TimeoutError, ValueError, Exception) as exc:
                    say(f"probe reconnect failed: {exc!r}")
                    await asyncio.sleep(0.5)

        probes = [Probe(a, f) for a, f in self.pairs]
        for probe in probes:
            await open_socket(probe)

        async def listen(probe: Probe) -> None:
            while True:
                with contextlib.suppress(Exception):
                    async for raw in probe.ws:
                        self._probe_frame(probe, json.loads(raw))
                if self.stopping.is_set() and time.monotonic() > self.events.get("load stops", 0) + 2:
                    return
                probe.ws = None
                self.probe_reconnects += 1
                await open_socket(probe)

        listeners = [asyncio.ensure_future(listen(p)) for p in probes]
        while not self.stopping.is_set():
            probe = rng.choice(probes)
            # Skip while node A is away: "the other node" must be up to be posted on.
            down = "node A SIGKILLed" in self.events and "node A started again" not in self.events
            if not down and probe.ws is not None:
                via, via_name = (http_b, "node-b") if probe.node == "node-a" else (http_a, "node-a")
                started = time.monotonic()
                post_id = await post(
                    via, self.dep, probe.author, "probe", self.log, "POST /post/create (probe, other node)"
                )
                if post_id is not None:
                    self.committed[post_id] = (probe.author, started, "probe")
                    self.probe_posts[post_id] = (started, via_name, probe.node, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.probe_every)
        await asyncio.sleep(3)
        for task in listeners:
            task.cancel()
        for probe in probes:
            if probe.ws is not None:
                with contextlib.suppress(Exception):
                    await probe.ws.close()

    def _probe_frame(self, probe: Any, frame: dict[str, Any]) -> None:
        if isinstance(frame.get("event_id"), int):
            probe.last_event_id = max(probe.last_event_id, frame["event_id"])
        if frame.get("type") == "post_created":
            self.probe_event_ids.setdefault(str(frame["data"]["post_id"]), frame["event_id"])
            self.probe_receipts.append((str(frame["data"]["post_id"]), time.monotonic(), probe.node, time.time()))
        elif frame.get("type") == "resync":
            self.probe_receipts.append(("resync", time.monotonic(), probe.node, time.time()))


async def scenario(args: argparse.Namespace, dep: Deployment, graph: Graph, out: Path) -> dict[str, Any]:
    topology_env = {**os.environ, "TOPOLOGY_DIR": args.citus_dir}
    for key in ("TOPOLOGY_LB_PORT", "TOPOLOGY_NODE_A_PORT", "TOPOLOGY_NODE_B_PORT"):
        topology_env[key] = dep.env["TOPOLOGY_" + key.split("_", 1)[1].replace("_PORT", "_URL")].rsplit(":", 1)[1]
    sc = Scenario(args, dep, graph, Path(args.topology_script), topology_env)
    # Probe pairs: users outside the online set, so their sockets are the only ones that see these posts.
    online = set(graph.online)
    spare = [u for u in graph.users if u not in online and u not in (graph.celebrity, graph.rising, graph.mid)]
    rng = random.Random(9)
    rng.shuffle(spare)
    pairs = [(spare[2 * i], spare[2 * i + 1]) for i in range(args.probes)]
    lb_port = int(dep.lb.rsplit(":", 1)[1])
    # The mix's connections, and a few more for the loops that share its client (celebrity, rising user).
    async with (
        LeanHttp(dep.lb, MIX_CONNECTIONS + 8) as http,
        LeanHttp(dep.node_a, 8) as http_a,
        LeanHttp(dep.node_b, 8) as http_b,
    ):
        for author, follower in pairs:
            response = await http.put(f"/friend/set/{author}", headers=dep.auth(follower))
            if response.status_code != 200:
                raise BenchError(f"probe follow: {response.status_code} {response.text}")
        sc.pairs = pairs
        # The mix's readers are online users whose feeds are in use: cached, as an active user's is. (Cold feeds
        # are what the ratio runs' cache-miss class and the mix's /user/get of any user measure.)
        readers = graph.online[: min(1000, len(graph.online) // 2)]
        say(f"scenario: warming the feeds of {len(readers)} readers")
        await warm(dep, readers, [])
        fleet = TopoFleet(args.shards, lb_port)
        try:
            specs = [(i, ws_path(uid, dep.secret)) for i, uid in enumerate(graph.online)]
            say(f"scenario: connecting {len(specs)} WebSocket clients through the balancer")
            started = time.monotonic()
            await fleet.record(True)
            connected = await fleet.connect(specs, concurrency=args.concurrency, timeout=120)
            say(
                f"scenario: {connected['opened']} open, {connected['failed']} failed"
                f" in {time.monotonic() - started:.1f} s"
            )

            async def sockets_per_worker() -> dict[str, Any]:
                stats = (await http.get(dep.node_b + "/stats", headers=dep.admin)).json()["websocket"]
                return {k: stats[k] for k in ("connections_per_worker", "rebalance_closes")}

            per_node = await sockets_per_worker()
            await sc.scrape_stages(http_a, "node-a at the start", dep.node_a)
            await sc.scrape_stages(http_b, "node-b at the start", dep.node_b)
            sc.events["start"] = time.monotonic()
            wall_start = time.time()
            cpu = CpuAccount(node_pids=node_pids(Path(args.citus_dir)))
            sc.mark("scenario starts")
            load_before = os.getloadavg()
            loops = [
                asyncio.ensure_future(sc.mix(http, args.mix_rate)),
                asyncio.ensure_future(sc.celebrity(http)),
                asyncio.ensure_future(sc.rising(http)),
                asyncio.ensure_future(sc.probes(http_a, http_b)),
                asyncio.ensure_future(sc.sample_loop_lag()),
            ]
            timed = [
                asyncio.ensure_future(sc.promote(http, args.promote_at)),
                asyncio.ensure_future(sc.node_kill(fleet, http_a, args.kill_at, args.down_for)),
            ]
            await asyncio.sleep(args.duration)
            sc.mark("load stops")
            wall_end = time.time()
            cpu_report = cpu.report()
            sc.stopping.set()
            await asyncio.gather(*loops)
            # The node loss finishes (its restart is bounded); a promotion still not done is reported as such.
            await timed[1]
            if not timed[0].done():
                timed[0].cancel()
                sc.promotion.setdefault("error", "not on the hot worker when the load stopped")
            await asyncio.gather(timed[0], return_exceptions=True)
            # Let replays and the last celebrity batches land: a celebrity post made just before the load stopped
            # is still being paced out (its batches take 10-35 s on two cores). Until no frame has come for 3 s.
            sc.settled_s = await settle(fleet, at_least=args.settle, at_most=args.settle_max)
            receipts = await fleet.receipts()
            final = await fleet.stats()
            # Node A came back empty: how far the workers' rebalancing had spread the sockets again.
            per_node_end = await sockets_per_worker()
            await sc.scrape_stages(http_a, "node-a at the end", dep.node_a)
            await sc.scrape_stages(http_b, "node-b at the end", dep.node_b)
            end = sc.events["load stops"]
            result: dict[str, Any] = {
                "connected": connected["opened"],
                "connect_failed": connected["failed"],
                "connections_per_worker_at_start": per_node,
                "connections_per_worker_at_the_end": per_node_end,
                "events_s": {k: round(v - sc.events["start"], 2) for k, v in sc.events.items()},
                "http_errors": sc.log.errors,
                "load_average_before_after": [load_before, os.getloadavg()],
                "fleet": final,
            }
            result["endpoints"] = sc.log.summary(sc.events["start"], end)
            result["slow_requests"] = slow_requests(sc)
            result["cpu"] = cpu_report
            result["balancer_view"] = balancer_view(Path(args.citus_dir), wall_start, wall_end)
            result["bench_loop_lag"] = ms([lag for _, lag in sc.loop_lag]) | {
                "over_100ms": sum(1 for _, lag in sc.loop_lag if lag > 0.1),
                "worst": [
                    {"t_s": round(t - sc.events["start"], 2), "late_ms": round(lag * 1000, 1)}
                    for t, lag in sorted(sc.loop_lag, key=lambda row: -row[1])[:5]
                ],
            }
            # Promotion: duration and everybody else's p99 before / during.
            promo: dict[str, Any] = {k: v for k, v in sc.promotion.items() if k != "followers"}
            crossed = sc.events.get("rising user: over the threshold")
            recorded = sc.events.get("recorded")
            done = sc.events.get("promotion: on the hot worker")
            if crossed and done:
                promo["threshold_to_hot_s"] = round(done - crossed, 2)
            if recorded and done:
                promo["move_s"] = round(done - recorded, 2)
                window = done - recorded

                def not_rising(endpoint: str) -> bool:
                    return "rising" in endpoint

                promo["others_p99_before_ms"] = sc.log.p99(recorded - max(window, 10), recorded, not_rising)
                promo["others_p99_during_ms"] = sc.log.p99(recorded, done, not_rising)
            rising_posts = [p for p, (_, _, k) in sc.committed.items() if k == "rising user"]
            promo["rising_posts_committed"] = len(rising_posts)
            # Failed while the promotion ran (its follows start → 5 s after the move): a write in flight on the node
            # SIGKILLed later is the node loss's, counted there.
            promo_from = sc.events.get("rising user: follows start", 0.0)
            promo_to = (done or sc.events["load stops"]) + 5
            promo["rising_posts_failed"] = sum(
                1
                for started, e, _, ok in sc.log.rows
                if e == "POST /post/create (rising user)" and not ok and promo_from <= started <= promo_to
            )
            promo["rising_follows_failed"] = sum(
                1 for _, e, _, ok in sc.log.rows if e == "PUT /friend/set (rising)" and not ok
            )
            result["promotion"] = promo
            # Cross-node latency (probe posts made on the node the follower is not on).
            arrivals: dict[str, float] = {}
            arrivals_wall: dict[str, float] = {}
            for post_id, received, _, wall in sc.probe_receipts:
                arrivals.setdefault(post_id, received)
                arrivals_wall.setdefault(post_id, wall)
            latencies = [arrivals[p] - s for p, (s, *_) in sc.probe_posts.items() if p in arrivals]
            # The same by phase of the run (start of the POST), to tell where a tail comes from.
            kill_at = sc.events.get("node A SIGKILLed", float("inf"))
            back_at = sc.events.get("node loss: every client back", kill_at)
            promoting = (
                sc.events.get("rising user: follows start", 0.0),
                sc.events.get("promotion: on the hot worker", 0.0),
            )
            phases: dict[str, list[float]] = {"promotion": [], "node loss": [], "otherwise": []}
            for post_id, (started, *_) in sc.probe_posts.items():
                if post_id not in arrivals:
                    continue
                phase = (
                    "node loss"
                    if kill_at <= started <= back_at
                    else "promotion"
                    if promoting[0] <= started <= promoting[1]
                    else "otherwise"
                )
                phases[phase].append(arrivals[post_id] - started)
            # Where the time goes: the POST itself (request start → its response), and the delivery after the
            # app made the post (its id's timestamp, the app node's clock → the receipt, this machine's clock).
            delivered = [p for p in sc.probe_posts if p in arrivals]
            result["cross_node"] = ms(latencies) | {
                "by_phase": {name: ms(values) for name, values in phases.items() if values},
                "post_response": ms([sc.probe_posts[p][3] - sc.probe_posts[p][0] for p in sc.probe_posts]),
                "receipt_after_response": ms([arrivals[p] - sc.probe_posts[p][3] for p in delivered]),
                "receipt_before_response": sum(1 for p in delivered if arrivals[p] < sc.probe_posts[p][3]),
                "id_to_receipt": ms([arrivals_wall[p] - timestamp_ms(int(p)) / 1000 for p in delivered]),
                "posts": len(sc.probe_posts),
                "missing": sum(1 for p in sc.probe_posts if p not in arrivals),
                "probe_reconnects": sc.probe_reconnects,
                "resync_frames": sum(1 for p, *_ in sc.probe_receipts if p == "resync"),
            }
            result["cross_node"]["trace"] = await trace_probes(sc, dep, delivered, arrivals, arrivals_wall)
            result["delivery_stages"] = delivery_stages(sc.stage_scrapes)
            # Celebrity fan-out over the N online sockets (paced celebrity path) and what each socket got.
            # Per (post, socket): received as a frame (live or replayed), else covered by a resync frame
            # the socket got after the post was made (the client then refetches its feed, which holds
            # every committed post: feed_check verifies that part), else missing.
            # A socket's first copy of each post counts; a second copy (live and replayed again after a reconnect)
            # is counted as a duplicate, by the kind of post.
            by_post: dict[str, list[float]] = {}
            seen: dict[str, set[int]] = {}
            resync_at: dict[int, list[float]] = {}
            celebrity_ids = {p for p, (_, _, k) in sc.committed.items() if k == "celebrity"}
            duplicates = {"celebrity": 0, "other": 0}
            first_copy: dict[tuple[str, int], tuple[float, int]] = {}
            celebrity_copies: list[tuple[int, float, int, float, int]] = []
            copies_by_post: collections.Counter[str] = collections.Counter()
            for idx, received, kind, post_id, event_id in receipts:
                if kind == "post_created":
                    if idx in seen.get(post_id, ()):
                        duplicates["celebrity" if post_id in celebrity_ids else "other"] += 1
                        if post_id in celebrity_ids:
                            celebrity_copies.append((idx, *first_copy[(post_id, idx)], received, event_id))
                            copies_by_post[post_id] += 1
                        continue
                    by_post.setdefault(post_id, []).append(received)
                    seen.setdefault(post_id, set()).add(idx)
                    first_copy[(post_id, idx)] = (received, event_id)
                elif kind == "resync":
                    resync_at.setdefault(idx, []).append(received)
            celebrity_posts = {p: s for p, (a, s, k) in sc.committed.items() if k == "celebrity"}
            fanouts = []
            missing_on_sockets = covered_by_resync = 0
            for post_id, started_at in celebrity_posts.items():
                times = sorted(t - started_at for t in by_post.get(post_id, []))
                got = seen.get(post_id, set())
                resynced = sum(
                    1
                    for idx in range(len(graph.online))
                    if idx not in got and any(t >= started_at for t in resync_at.get(idx, ()))
                )
                covered_by_resync += resynced
                missing_on_sockets += len(graph.online) - len(got) - resynced
                fanouts.append(
                    {
                        "received": len(got),
                        "covered_by_resync": resynced,
                        "first_s": round(times[0], 3) if times else None,
                        "last_s": round(times[-1], 3) if times else None,
                    }
                )
            result["celebrity"] = {
                "posts": len(celebrity_posts),
                "fanouts": fanouts,
                "resync_frames": sum(len(t) for t in resync_at.values()),
                "sockets_resynced": len(resync_at),
                "duplicate_frames": duplicates,
                "duplicates_by_path": duplicate_paths(celebrity_copies, await fleet.reconnect_log()),
                # The posts with the most copies: one post holding most of them points at its fan-out (cut short
                # by the node loss?), copies spread over every post at the reconnects.
                "duplicates_top_posts": dict(copies_by_post.most_common(3)),
            }
            # Node loss: posts committed while node A was away, and whether each reached feeds and sockets.
            kill = sc.events.get("node A SIGKILLed", 0)
            back = sc.events.get("node A started again", kill)
            result["node_loss"] = sc.node_loss | {
                "posts_committed_while_down": sum(1 for _, s, _ in sc.committed.values() if kill <= s <= back),
                # Requests in flight on node A when it died: a write is not retried (it may have committed).
                "requests_failed_at_the_kill": sum(
                    1 for started, _, _, ok in sc.log.rows if not ok and kill - 2 <= started <= kill + 2
                ),
                "celebrity_missing_on_sockets": missing_on_sockets,
                "celebrity_covered_by_resync": covered_by_resync,
                "settled_after_the_load_s": sc.settled_s,
            }
            result["node_loss"]["missing_in_feeds"] = await feed_check(http, dep, sc, pairs, graph, kill, back)
            result["final_fanout"] = await final_fanout(http, dep, graph, fleet, args)
            return result
        finally:
            fleet.stop()


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, CPU seconds so far) of every process this user can read."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        table[int(entry.name)] = (int(fields[1]), cmdline or comm, (int(fields[11]) + int(fields[12])) / ticks)
    return table


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / ticks, sum(values) / ticks


@dataclass
class CpuAccount:
    """Where the machine's CPU went over a window, by part of the topology: a one-machine rehearsal's figures
    depend on what the load client and the other parts took from the part being timed."""

    node_pids: dict[str, int]
    start: dict[int, tuple[int, str, float]] = field(default_factory=_processes)
    start_busy: tuple[float, float] = field(default_factory=_machine_busy)

    def _part(self, pid: int, table: dict[int, tuple[int, str, float]]) -> str:
        me = os.getpid()
        seen = 0
        while pid in table and seen < 50:
            parent, cmdline, _ = table[pid]
            if pid == me:
                return "bench (main process)" if seen == 0 else "bench (socket shards, wrk)"
            for name, node_pid in self.node_pids.items():
                if pid == node_pid:
                    return f"sn {name}"
            if " -D " in f" {cmdline} " and "postgres" in cmdline:
                return "postgres " + Path(cmdline.split(" -D ", 1)[1].split()[0]).name
            for part in ("haproxy", "redis-server", "beam.smp"):
                if part in cmdline.split(" ", 1)[0]:
                    return {"beam.smp": "rabbitmq", "redis-server": "redis"}.get(part, part)
            pid, seen = parent, seen + 1
        return "other"

    def report(self) -> dict[str, Any]:
        table = _processes()
        busy, total = _machine_busy()
        window = max(total - self.start_busy[1], 1e-9) / (os.cpu_count() or 1)  # wall seconds
        parts: collections.Counter[str] = collections.Counter()
        for pid, (_, _, cpu) in table.items():
            before = self.start.get(pid)
            used = cpu - before[2] if before is not None and before[1] == table[pid][1] else cpu
            if used > 0:
                parts[self._part(pid, table)] += used
        return {
            "window_s": round(window, 1),
            "machine_busy_pct": round(100 * (busy - self.start_busy[0]) / max(total - self.start_busy[1], 1e-9), 1),
            # CPU seconds per wall second: 1.0 is one core for the whole window (processes that died in the window,
            # node A's killed workers, are not counted)
            "cores_by_part": {k: round(v / window, 2) for k, v in parts.most_common() if v / window >= 0.01},
        }


_HAPROXY_LINE = re.compile(
    r"\[(?P<date>[^\]]+)\] \S+ (?P<server>\S+) (?P<timers>[-\d]+/[-\d]+/[-\d]+/[-\d]+/[-\d]+) (?P<status>-?\d+) .*?"
    r' (?P<state>[-\w]{4}) [\d/]+ [\d/]+ "(?P<method>\S+) (?P<path>[^ ?"]*)'
)


def node_pids(topology_dir: Path) -> dict[str, int]:
    """The app nodes' session leaders (`sn serve`), from scripts/topology.sh's pid files, read at the scenario's
    start: node A started again after its kill has a new pid and is counted under "other"."""
    pids = {}
    for name in ("node-a", "node-b"):
        with contextlib.suppress(OSError, ValueError):
            pids[name] = int((topology_dir / f"{name}.pid").read_text().strip())
    return pids


def balancer_view(topology_dir: Path, start: float, end: float) -> dict[str, Any]:
    """The same requests seen from HAProxy (its request log, TOPOLOGY_LB_LOG=1): per endpoint, the time from the
    request's arrival at the balancer to the end of its response (Ta), and how many ended other than normally.
    Beside the bench's own timings, this tells the system's latency from what the load client adds to it."""
    times: dict[str, list[float]] = {}
    abnormal: collections.Counter[str] = collections.Counter()
    for log in sorted(topology_dir.glob("haproxy-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            match = _HAPROXY_LINE.search(line)
            if match is None or match["path"].startswith("/ws/") or match["path"] == "/ready":
                continue
            at = datetime.datetime.strptime(match["date"], "%d/%b/%Y:%H:%M:%S.%f").timestamp()
            if not start <= at < end:
                continue
            endpoint = f"{match['method']} {re.sub(r'/[0-9]+$', '', match['path'])}"
            active = int(match["timers"].rsplit("/", 1)[1])
            if active >= 0:
                times.setdefault(endpoint, []).append(active / 1000)
            if match["state"] != "----":
                abnormal[f"{endpoint}: {match['state']} {match['status']} via {match['server']}"] += 1
    return {"endpoints": {e: ms(v) for e, v in sorted(times.items())}, "abnormal": dict(abnormal.most_common(10))}


def slow_requests(sc: Scenario) -> dict[str, Any]:
    """The requests that failed or took longer than Log.SLOW: how many per second of the run and per outcome, and
    the worst ones, with their start relative to the scenario's (to line them up with the events)."""
    start = sc.events["start"]
    per_second: collections.Counter[int] = collections.Counter(int(t - start) for t, *_ in sc.log.slow)
    outcomes: collections.Counter[str] = collections.Counter(f"{e}: {o}" for _, e, _, o in sc.log.slow)
    worst = sorted(sc.log.slow, key=lambda row: -row[2])[:15]
    return {
        "count": len(sc.log.slow),
        "of": len(sc.log.rows),
        "per_second_of_run": dict(sorted(per_second.items())),
        "outcomes": dict(outcomes.most_common()),
        "worst": [{"t_s": round(t - start, 2), "endpoint": e, "s": round(d, 2), "outcome": o} for t, e, d, o in worst],
    }


async def trace_probes(
    sc: Scenario, dep: Deployment, delivered: list[str], arrivals: dict[str, float], arrivals_wall: dict[str, float]
) -> dict[str, Any]:
    """Each delivered probe post split at the moment its fan-out consumer routed it (the event log's 't')."""
    routed = await topology_trace.route_times(
        dep.env["SN_REDIS_URL"], [sc.probe_event_ids[p] for p in delivered if p in sc.probe_event_ids]
    )
    timings = []
    for post_id in delivered:
        started, via, to, responded = sc.probe_posts[post_id]
        made_to_routed, routed_to_receipt = topology_trace.split(
            timestamp_ms(int(post_id)), routed.get(sc.probe_event_ids.get(post_id, -1)), arrivals_wall[post_id]
        )
        timings.append(
            topology_trace.ProbeTiming(
                post_id,
                started - sc.events["start"],
                via,
                to,
                (responded - started) * 1000,
                made_to_routed,
                routed_to_receipt,
                (arrivals[post_id] - started) * 1000,
            )
        )
    return {
        "traced": sum(1 for t in timings if t.made_to_routed_ms is not None),
        "made_to_routed": ms([t.made_to_routed_ms / 1000 for t in timings if t.made_to_routed_ms is not None]),
        "routed_to_receipt": ms([t.routed_to_receipt_ms / 1000 for t in timings if t.routed_to_receipt_ms is not None]),
        "worst": topology_trace.worst(timings),
    }


def delivery_stages(scrapes: dict[str, topology_trace.StageHistograms]) -> dict[str, Any]:
    """Every new post's age at each stage, by node and together, over the scenario (the app's own histograms)."""
    if not {"node-a at the start", "node-b at the start", "node-a at the end", "node-b at the end"} <= scrapes.keys():
        return {"error": f"missing scrapes: only {sorted(scrapes)}"}
    node_a = topology_trace.node_share(
        scrapes["node-a at the start"], scrapes.get("node-a before the kill"), scrapes["node-a at the end"]
    )
    node_b = topology_trace.node_share(scrapes["node-b at the start"], None, scrapes["node-b at the end"])
    return {"both": (node_a + node_b).summary(), "node-a": node_a.summary(), "node-b": node_b.summary()}


async def feed_check(
    http: LeanHttp,
    dep: Deployment,
    sc: Scenario,
    pairs: Sequence[tuple[int, int]],
    graph: Graph,
    since: float,
    until: float,
) -> dict[str, int]:
    """Every probe post in its follower's feed; every celebrity post of the node-loss window in a sample of the
    celebrity's followers' feeds (feeds read through the balancer, the API's own answer)."""
    follower_of = dict(pairs)
    missing_probe = checked_probe = 0
    for post_id, (author, _, kind) in sc.committed.items():
        if kind != "probe":
            continue
        # The API's largest page: a probe follower who also follows the rising user (90 posts in the run) and the
        # celebrity has more than 100 posts newer than the first probe posts.
        response = await http.get("/post/feed", params={"limit": 1000}, headers=dep.auth(follower_of[author]))
        checked_probe += 1
        if post_id not in {str(p["id"]) for p in response.json()}:
            missing_probe += 1
    window = [p for p, (_, s, k) in sc.committed.items() if k == "celebrity" and since - 10 <= s <= until + 10]
    sample = random.Random(1).sample(graph.online, min(200, len(graph.online)))
    missing_celebrity = 0
    for user in sample:
        response = await http.get("/post/feed", params={"limit": 100}, headers=dep.auth(user))
        ids = {str(p["id"]) for p in response.json()}
        missing_celebrity += sum(1 for p in window if p not in ids)
    return {
        "probe_posts_checked": checked_probe,
        "probe_posts_missing": missing_probe,
        "celebrity_posts_checked": len(window) * len(sample),
        "celebrity_posts_missing": missing_celebrity,
    }


async def final_fanout(
    http: LeanHttp, dep: Deployment, graph: Graph, fleet: TopoFleet, args: argparse.Namespace
) -> dict[str, Any]:
    """A post by the author the N online users follow, on the normal fan-out path (threshold raised above N, as
    bench/ws_run.sh does for its fan-out step): POST → last receipt over the online sockets on both nodes."""
    response = await http.post(
        "/celebrity-settings", json={"celebrity_threshold": len(graph.online) + 1}, headers=dep.admin
    )
    if response.status_code != 200:
        return {"error": f"/celebrity-settings: {response.status_code}"}
    await asyncio.sleep(2.0)
    await fleet.receipts()  # drop what came before
    started = time.monotonic()
    post_id = str((await http.post("/post/create", json={"text": "final"}, headers=dep.auth(graph.mid))).json())
    deadline = time.monotonic() + 20
    first: dict[int, float] = {}  # socket -> its first copy of the post
    while time.monotonic() < deadline and len(first) < len(graph.online):
        await asyncio.sleep(0.5)
        for idx, received, _, pid, _ in await fleet.receipts():
            if pid == post_id:
                first[idx] = min(received, first.get(idx, received))
    await http.post("/celebrity-settings", json={"celebrity_threshold": args.threshold}, headers=dep.admin)
    # A socket that reconnected after the POST (handed back by a rebalancing round, say) got the post from its
    # replay: that time is its reconnect's, not the fan-out's; told apart from the sockets that stayed open.
    reopened = await fleet.reopened()
    live = sorted(t for idx, t in first.items() if reopened.get(idx, 0.0) < started)
    after = sorted(t for idx, t in first.items() if reopened.get(idx, 0.0) >= started)
    got = sorted(first.values())

    def since_post(times: list[float]) -> dict[str, float | None]:
        return {
            "first_ms": round((times[0] - started) * 1000, 1) if times else None,
            "p50_ms": round((times[len(times) // 2] - started) * 1000, 1) if times else None,
            "p99_ms": round((times[int(len(times) * 0.99)] - started) * 1000, 1) if times else None,
            "last_ms": round((times[-1] - started) * 1000, 1) if times else None,
        }

    return (
        {"online": len(graph.online), "received": len(got)}
        | since_post(got)
        | {
            "sockets_open_throughout": len(live),
            "open_throughout": since_post(live),
            "reconnected_after_the_post": len(after),
            "reconnected": since_post(after),
        }
    )


async def hot_worker_check(dep: Deployment) -> dict[str, Any]:
    conn = await asyncpg.connect(dep.db)
    try:
        port = int(dep.env["SN_CITUS_HOT_WORKER"].rsplit(":", 1)[1])
        rows = await conn.fetch(
            "SELECT s.shardid, s.shardminvalue::bigint AS lo, s.shardmaxvalue::bigint AS hi FROM pg_dist_shard s"
            " JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid)"
            " WHERE n.nodeport = $1 AND s.logicalrelid = 'users'::regclass",
            port,
        )
        hot = [int(r[0]) for r in await conn.fetch("SELECT user_id FROM hot_users WHERE hot")]
        hashes = {int(await conn.fetchval("SELECT hashint8($1::bigint)", u)) for u in hot}
        foreign = [r["shardid"] for r in rows if not (r["lo"] == r["hi"] and r["lo"] in hashes)]
        return {"hot_users": len(hot), "users_shards_on_hot_worker": len(rows), "not_a_hot_user": foreign}
    finally:
        await conn.close()


# ================================================================== main


async def run(args: argparse.Namespace, out: Path) -> int:
    deps = {"citus": Deployment("citus", read_env(Path(args.citus_env)))}
    if args.plain_env:
        deps["plain"] = Deployment("plain", read_env(Path(args.plain_env)))
    citus = deps["citus"]
    graph = await load_graph(citus.db, args.threshold, args.online, args.rising_follows)
    citus.admin_user = graph.celebrity
    say(
        f"graph: celebrity {graph.celebrity} ({graph.celebrity_followers} followers); rising user {graph.rising} "
        f"({graph.rising_followers} followers, threshold {args.threshold}); {len(graph.over_threshold)} user(s) over "
        f"the threshold; {len(graph.online)} online clients; {len(graph.users)} users"
    )
    results: dict[str, Any] = {"args": vars(args)}
    promotions = []
    for user in graph.over_threshold:
        seconds, _ = await asyncio.to_thread(sn_command, citus, "hot", "promote", str(user))
        promotions.append({"user": user, "seconds": round(seconds, 2)})
        say(f"prep: promoted {user} by hand in {seconds:.1f} s")
    results["prep_promotions"] = promotions
    if "plain" in deps:
        results["ratio"] = await ratio(args, deps, graph, out)
        (out / "topology.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        if args.stop_plain:
            await asyncio.to_thread(subprocess.run, args.stop_plain, shell=True, check=False)
    results["scenario"] = await scenario(args, citus, graph, out)
    results["hot_worker"] = await hot_worker_check(citus)
    _, status = await asyncio.to_thread(sn_command, citus, "cluster", "status")
    results["cluster_problems"] = json.loads(status).get("problems")
    (out / "topology.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report(results))
    return 0


def report(results: dict[str, Any]) -> str:
    lines = []
    if "ratio" in results:
        lines += [
            "| class | plain PostgreSQL req/s | Citus req/s | Citus ÷ plain (per round) | p99 plain / Citus ms |",
            "|---|---|---|---|---|",
        ]
        for label, r in results["ratio"].items():
            lines.append(
                f"| {label} | {r['plain_per_s']} | {r['citus_per_s']} | **{r['ratio']}** "
                f"({', '.join(map(str, r['ratio_per_round']))}) | {r['plain_p99_ms']} / {r['citus_p99_ms']} |"
            )
        lines.append("")
    sc = results["scenario"]
    lines += [
        "| endpoint (scenario, through the balancer) | req/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|",
    ]
    for endpoint, r in sc["endpoints"].items():
        lines.append(f"| {endpoint} | {r['per_s']} | {r['p50']} | {r['p99']} | {r['failed']} |")
    lines.append("")
    lines.append(f"- cross-node POST → receipt: {sc['cross_node']}")
    lines.append(f"- every new post's age at each delivery stage (the nodes' histograms): {sc.get('delivery_stages')}")
    lines.append(f"- slow or failed requests: {sc.get('slow_requests')}")
    lines.append(f"- CPU over the scenario, by part: {sc.get('cpu')}")
    lines.append(f"- the same requests at the balancer (HAProxy's log): {sc.get('balancer_view')}")
    lines.append(f"- the bench's own event loop, lateness: {sc.get('bench_loop_lag')}")
    lines.append(f"- celebrity: {sc['celebrity']}")
    lines.append(f"- final fan-out (normal path): {sc['final_fanout']}")
    lines.append(f"- promotion: {sc['promotion']}")
    lines.append(f"- node loss: {sc['node_loss']}")
    lines.append(
        f"- sockets per worker at the start / the end (with the rebalancing's closes): "
        f"{sc.get('connections_per_worker_at_start')} / {sc.get('connections_per_worker_at_the_end')}"
    )
    lines.append(f"- events: {sc['events_s']}")
    lines.append(f"- fleet: {sc['fleet']}; http errors: {sc['http_errors']}")
    lines.append(
        f"- load average (1, 5, 15 min) at the scenario's start and end: {sc.get('load_average_before_after')}"
    )
    lines.append(f"- prep promotions: {results['prep_promotions']}")
    lines.append(f"- hot worker: {results['hot_worker']}; cluster problems: {results['cluster_problems']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="topology_bench.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--citus-env", required=True)
    p.add_argument("--citus-dir", required=True, help="the Citus topology's TOPOLOGY_DIR (for kill/start)")
    p.add_argument("--plain-env")
    p.add_argument("--stop-plain", help="shell command that stops the plain topology after the ratio runs")
    p.add_argument("--topology-script", default=str(ROOT / "scripts" / "topology.sh"))
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=int, default=1000)
    p.add_argument("--online", type=int, default=10000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--ratio-rounds", type=int, default=2)
    p.add_argument("--ratio-seconds", type=int, default=5)
    p.add_argument("--ratio-connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=90)
    p.add_argument("--mix-rate", type=float, default=150)
    p.add_argument("--celebrity-every", type=float, default=5)
    p.add_argument("--probes", type=int, default=20)
    p.add_argument("--probe-every", type=float, default=0.25)
    p.add_argument("--promote-at", type=float, default=15)
    p.add_argument(
        "--rising-follows", type=int, default=125, help="follows that take the rising user over the threshold"
    )
    p.add_argument("--promotion-timeout", type=float, default=90)
    p.add_argument("--kill-at", type=float, default=50)
    p.add_argument("--down-for", type=float, default=15)
    p.add_argument("--settle", type=float, default=10)
    p.add_argument("--settle-max", type=float, default=40, help="longest wait for the last frames after the load")
    r = sub.add_parser("report")
    r.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(json.loads((Path(args.out) / "topology.json").read_text())))
        return 0
    try:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run(args, out))
    except BenchError as exc:
        print(f"topology-bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
