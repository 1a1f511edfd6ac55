"""The fault suite's driver: real clients against a real 2-worker server, one fault at a time.

Everything it breaks is its own: a Redis server on a free port, TCP proxies in front of that
Redis, of PostgreSQL (a database it creates) and of RabbitMQ (a bus prefix of its own), and the
server processes. Never the machine's shared services.

Clients: every user has several tabs (WebSockets, spread by the kernel over both workers) that
reconnect with ``since`` when closed and refetch ``/post/feed`` on ``resync``; a steady stream of
posts, follows and feed reads. After each fault it reconciles: every post that got a 200 must be
in every follower's feed and must have reached every tab of every follower (live, by replay, or
by the refetch after a resync), once, with event ids increasing per tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sn.storage.migrations import migrate
from tests.private_services import PrivateRedis
from tests.proxy import TcpProxy
from tests.support import FAST_HASHING, ServerProcess, free_port, user_payload

FEED_LIMIT = 1000


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Account:
    id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Tab:
    """One browser tab: a socket that is reopened (with ``since``) whenever it closes."""

    account: Account
    name: str
    last_event_id: int = 0
    arrived: dict[str, float] = field(default_factory=dict)  # post id -> first arrival (monotonic)
    refetched: set[str] = field(default_factory=set)  # post ids seen in the refetch after a resync
    received: dict[str, int] = field(default_factory=dict)  # post id -> post_created frames
    out_of_order: int = 0
    resyncs: int = 0
    closes: list[int | None] = field(default_factory=list)
    ws: ClientConnection | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)  # set: stop reading (slow consumer)


@dataclass
class Post:
    id: str
    author: str
    sent_at: float  # monotonic, when the request went out
    committed_at: float


@dataclass
class Window:
    """What happened to the HTTP requests of one phase."""

    committed: list[Post] = field(default_factory=list)
    status: dict[int, int] = field(default_factory=dict)
    refused: int = 0  # no HTTP answer at all (connection refused/reset, timeout)

    def count(self, code: int) -> None:
        self.status[code] = self.status.get(code, 0) + 1


class Clients:
    def __init__(self, base_url: str, *, users: int, tabs: int, follows: int, seed: int = 7) -> None:
        self.base_url = base_url
        self.users_wanted, self.tabs_per_user, self.follows_per_user = users, tabs, follows
        self.random = random.Random(seed)
        self.accounts: list[Account] = []
        self.tabs: list[Tab] = []
        # follower id -> author id -> when the follow was answered 200 (monotonic)
        self.follows: dict[str, dict[str, float]] = {}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=15)
        self.window = Window()  # the running phase's
        self.feeds: dict[str, set[str]] = {}  # each user's feed as last read by the reconciliation
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def setup(self) -> None:
        for _ in range(self.users_wanted):
            body = user_payload(password="chaos-password")
            response = await self.http.post("/user/register", json=body)
            response.raise_for_status()
            user_id = response.json()["user_id"]
            login = await self.http.post("/login", json={"id": user_id, "password": body["password"]})
            login.raise_for_status()
            self.accounts.append(Account(user_id, login.json()["token"]))
        for account in self.accounts:
            others = [a for a in self.accounts if a is not account]
            for author in self.random.sample(others, min(self.follows_per_user, len(others))):
                await self.follow(account, author, window=None)
        for account in self.accounts:
            for index in range(self.tabs_per_user):
                tab = Tab(account, f"{account.id}/{index}")
                self.tabs.append(tab)
                await self._open(tab)
                self._tasks.append(asyncio.create_task(self._listen(tab)))

    async def close(self) -> None:
        self._stopping.set()
        for tab in self.tabs:
            if tab.ws is not None:
                with contextlib.suppress(Exception):
                    await tab.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()

    # -- requests ----------------------------------------------------------------------------

    async def _request(self, window: Window | None, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError:
            if window is not None:
                window.refused += 1
            return None
        if window is not None:
            window.count(response.status_code)
        return response

    async def follow(self, follower: Account, author: Account, *, window: Window | None) -> None:
        response = await self._request(window, "PUT", f"/friend/set/{author.id}", headers=follower.auth)
        if response is not None and response.status_code == 200:
            self.follows.setdefault(follower.id, {}).setdefault(author.id, time.monotonic())

    async def post(self, author: Account, window: Window, *, text: str | None = None) -> None:
        sent = time.monotonic()
        text = f"chaos {uuid.uuid4().hex[:12]} {text or ''}"
        response = await self._request(window, "POST", "/post/create", json={"text": text}, headers=author.auth)
        if response is not None and response.status_code == 200:
            window.committed.append(Post(str(response.json()), author.id, sent, time.monotonic()))

    async def feed(self, account: Account, window: Window | None = None) -> set[str] | None:
        response = await self._request(window, "GET", "/post/feed", params={"limit": FEED_LIMIT}, headers=account.auth)
        if response is None or response.status_code != 200:
            return None
        return {item["id"] for item in response.json()}

    async def load(self, window: Window, stop: asyncio.Event, *, rate: float) -> None:
        """Steady traffic until ``stop``: posts at ``rate`` a second, a follow or a feed read now and
        then, each request on its own task (a stalled dependency must not slow the schedule)."""
        pending: set[asyncio.Task[None]] = set()
        tick = 1.0 / rate
        while not stop.is_set():
            roll = self.random.random()
            author = self.random.choice(self.accounts)
            if roll < 0.85:
                job: Awaitable[Any] = self.post(author, window)
            elif roll < 0.92:
                other = self.random.choice([a for a in self.accounts if a is not author])
                job = self.follow(author, other, window=window)
            else:
                job = self.feed(author, window)
            if len(pending) < 64:
                task = asyncio.ensure_future(job)
                pending.add(task)
                task.add_done_callback(pending.discard)
            elif asyncio.iscoroutine(job):
                job.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
        if pending:
            await asyncio.wait(pending, timeout=30)

    # -- tabs --------------------------------------------------------------------------------

    def _url(self, tab: Tab) -> str:
        base = self.base_url.replace("http://", "ws://")
        since = f"&since={tab.last_event_id}" if tab.last_event_id else ""
        return f"{base}/ws/{tab.account.id}?token={tab.account.token}{since}"

    async def _open(self, tab: Tab) -> None:
        # A small queue and receive buffer: a tab that stops reading (the slow-consumer fault)
        # soon stops taking bytes, as a phone on a bad network would.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        try:
            host, port = urlsplit(self.base_url).hostname or "127.0.0.1", urlsplit(self.base_url).port or 80
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 10)
            tab.ws = await connect(self._url(tab), sock=sock, open_timeout=10, max_queue=4, ping_interval=None)
        except BaseException:
            sock.close()
            raise

    async def _listen(self, tab: Tab) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            ws = tab.ws
            if ws is not None:
                try:
                    while True:
                        if tab.paused.is_set():
                            await asyncio.sleep(0.05)
                            continue
                        raw = await ws.recv()
                        await self._record(tab, raw)
                except ConnectionClosed:
                    pass
                tab.closes.append(ws.close_code)
                tab.ws = None
            if self._stopping.is_set():
                return
            await asyncio.sleep(backoff)
            try:
                await self._open(tab)
                backoff = 0.2
            except Exception:
                backoff = min(backoff * 2, 2.0)

    async def _record(self, tab: Tab, raw: str | bytes) -> None:
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "resync":
            tab.resyncs += 1
            await self._refetch(tab)
            return
        if kind not in ("post_created", "post_updated", "post_deleted"):
            return
        event_id = int(message["event_id"])
        if event_id <= tab.last_event_id:
            tab.out_of_order += 1
        tab.last_event_id = max(tab.last_event_id, event_id)
        if kind == "post_created":
            post_id = str(message["data"]["post_id"])
            tab.received[post_id] = tab.received.get(post_id, 0) + 1
            tab.arrived.setdefault(post_id, time.monotonic())

    async def _refetch(self, tab: Tab) -> None:
        """What a client does on ``resync``: refetch the feed (retrying while the server is away)."""
        for _ in range(60):
            found = await self.feed(tab.account)
            if found is not None:
                now = time.monotonic()
                for post_id in found:
                    tab.refetched.add(post_id)
                    tab.arrived.setdefault(post_id, now)
                return
            await asyncio.sleep(0.5)

    # -- reconciliation ------------------------------------------------------------------------

    def expected(self, posts: list[Post]) -> Iterator[tuple[Post, str]]:
        """(post, follower id) for every follower whose follow was answered before the post was sent."""
        for post in posts:
            for follower, authors in self.follows.items():
                followed_at = authors.get(post.author)
                if followed_at is not None and followed_at < post.sent_at:
                    yield post, follower

    def undelivered(self, posts: list[Post]) -> int:
        by_user: dict[str, list[Tab]] = {}
        for tab in self.tabs:
            by_user.setdefault(tab.account.id, []).append(tab)
        return sum(
            1 for post, follower in self.expected(posts) for tab in by_user[follower] if post.id not in tab.arrived
        )


# -- the system under test ----------------------------------------------------------------------


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


class System:
    """Its own Redis, proxies in front of Redis, PostgreSQL and RabbitMQ, and `sn serve` (2 workers)."""

    def __init__(self, *, postgres_admin_url: str, amqp_url: str | None, workers: int = 2) -> None:
        self.postgres_admin_url = postgres_admin_url
        self.amqp_url = amqp_url
        self.workers = workers
        self.redis = PrivateRedis()
        self.database = f"sn_chaos_{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.proxies: dict[str, TcpProxy] = {}
        self.server: ServerProcess | None = None
        self.env: dict[str, str] = {}
        self.log_dir = Path(os.environ.get("SN_CHAOS_LOG_DIR", "/tmp"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await asyncio.to_thread(self.redis.start)
        pg = urlsplit(self.postgres_admin_url)
        conn = await asyncpg.connect(self.postgres_admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()
        database_url = urlunsplit(pg._replace(path="/" + self.database))
        await migrate(database_url)
        self.proxies["postgres"] = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432).__enter__()
        self.proxies["redis"] = TcpProxy("127.0.0.1", self.redis.port).__enter__()
        self.env = {
            **FAST_HASHING,
            "SN_DATABASE_URL": _through(database_url, self.proxies["postgres"]),
            "SN_REDIS_URL": _through(self.redis.url(0), self.proxies["redis"]),
            "SN_JWT_SECRET": "chaos-secret-" + uuid.uuid4().hex,
            "SN_RATE_LIMIT_AUTH": "0",
            "SN_RATE_LIMIT_WRITE": "0",
            "SN_LOG_LEVEL": "INFO",
            "SN_BUS_PREFIX": f"chaos{uuid.uuid4().hex[:8]}",
            "SN_REQUEST_TIMEOUT_SECONDS": "10",
        }
        if self.amqp_url:
            amqp = urlsplit(self.amqp_url)
            self.proxies["rabbitmq"] = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672).__enter__()
            self.env["SN_AMQP_URL"] = _through(self.amqp_url, self.proxies["rabbitmq"])
        await self.start_server()

    async def start_server(self) -> None:
        log_path = self.log_dir / f"sn-chaos-{self.port}-{int(time.time())}.log"
        self.server = ServerProcess(self.env, workers=self.workers, port=self.port, log_path=log_path)
        await asyncio.to_thread(self.server.start, 60.0)

    async def stop_server(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    async def worker_pids(self) -> list[int]:
        def read() -> list[int]:
            with self.redis.client() as store:
                raw = store.hgetall("sn:rt:workers")
            now = time.time()
            stats = [json.loads(value) for value in raw.values()]
            return sorted(s["pid"] for s in stats if now - s["updated_at"] < 5)

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        await self.stop_server()
        for proxy in self.proxies.values():
            await asyncio.to_thread(proxy.__exit__)
        await asyncio.to_thread(self.redis.__exit__)
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.postgres_admin_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await conn.close()


# -- faults --------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    inject: Callable[[System, Clients], Awaitable[None]]
    restore: Callable[[System, Clients], Awaitable[None]]
    hold: float  # seconds between inject and restore


async def _nothing(system: System, clients: Clients) -> None:
    return None


def _proxy(name: str, action: str) -> Callable[[System, Clients], Awaitable[None]]:
    async def run(system: System, clients: Clients) -> None:
        await asyncio.to_thread(getattr(system.proxies[name], action))

    return run


async def _kill_redis(system: System, clients: Clients) -> None:
    await asyncio.to_thread(system.redis.kill)


async def _start_redis(system: System, clients: Clients) -> None:
    await asyncio.to_thread(system.redis.start)


async def _kill_a_worker(system: System, clients: Clients) -> None:
    pids = await system.worker_pids()
    os.kill(pids[0], signal.SIGKILL)


async def _sigterm_server(system: System, clients: Clients) -> None:
    await system.stop_server()


SLOW_BURST_POSTS = 700
SLOW_POST_CHARS = 9900


async def _slow_tabs(system: System, clients: Clients) -> None:
    """One tab of each follower of one author stops reading (a phone in a tunnel) while that author
    posts a burst of big posts: more than the server buffers for a socket, so the slow tabs are
    closed (4008) and catch up on reconnecting; every other tab must get the burst live."""
    loud = clients.accounts[0]
    followers = {f for f, authors in clients.follows.items() if loud.id in authors}
    slow = [tab for tab in clients.tabs if tab.account.id in followers and tab.name.endswith("/0")]
    for tab in slow:
        tab.paused.set()
    window = clients.window
    text = "x" * SLOW_POST_CHARS
    queue = list(range(SLOW_BURST_POSTS))

    async def poster() -> None:
        while queue:
            queue.pop()
            await clients.post(loud, window, text=text)

    await asyncio.gather(*(poster() for _ in range(12)))


async def _resume_tabs(system: System, clients: Clients) -> None:
    for tab in clients.tabs:
        tab.paused.clear()


FAULTS: dict[str, Fault] = {
    "redis-restart-empty": Fault("redis-restart-empty", _kill_redis, _start_redis, 3.0),
    "worker-sigkill": Fault("worker-sigkill", _kill_a_worker, _nothing, 0.0),
    "rabbitmq-down": Fault("rabbitmq-down", _proxy("rabbitmq", "cut"), _proxy("rabbitmq", "restore"), 8.0),
    "postgres-cut": Fault("postgres-cut", _proxy("postgres", "cut"), _proxy("postgres", "restore"), 6.0),
    "redis-partition": Fault("redis-partition", _proxy("redis", "stall"), _proxy("redis", "unstall"), 12.0),
    "server-sigterm": Fault("server-sigterm", _sigterm_server, lambda s, c: s.start_server(), 0.0),
    "slow-consumer": Fault("slow-consumer", _slow_tabs, _resume_tabs, 3.0),
}


class Row(msgspec.Struct):
    fault: str
    committed: int
    missing_in_feeds: int
    missing_on_sockets: int
    duplicates: int
    out_of_order: int
    http_4xx: int
    http_5xx: int
    no_answer: int
    resyncs: int
    closes: dict[str, int]
    recovery_seconds: float | None

    @property
    def met(self) -> bool:
        return (
            self.missing_in_feeds == 0
            and self.missing_on_sockets == 0
            and self.duplicates == 0
            and self.out_of_order == 0
            and self.recovery_seconds is not None
            and self.recovery_seconds <= 10.0
        )


async def run_fault(
    system: System, clients: Clients, fault: Fault, *, rate: float, before: float = 3.0, settle: float = 20.0
) -> Row:
    window = clients.window = Window()
    stop = asyncio.Event()
    tabs_before = {tab.name: (len(tab.closes), tab.resyncs, dict(tab.received)) for tab in clients.tabs}
    load = asyncio.create_task(clients.load(window, stop, rate=rate))
    await asyncio.sleep(before)
    await fault.inject(system, clients)
    await asyncio.sleep(fault.hold)
    await fault.restore(system, clients)
    back = time.monotonic()
    # Traffic goes on until a post sent after the dependency returned has reached every tab
    # that should have it (or the settle time is up), and a little longer.
    deadline = back + settle
    recovered: float | None = None
    while time.monotonic() < deadline:
        recovered = _recovery(clients, window.committed, back)
        if recovered is not None:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(2.0)
    stop.set()
    await load
    # Quiet: whatever is still in flight (bus backlog, replays) arrives, or is missing.
    posts = window.committed
    quiet_deadline = time.monotonic() + 20
    while clients.undelivered(posts) and time.monotonic() < quiet_deadline:
        await asyncio.sleep(0.5)
    if recovered is None:
        recovered = _recovery(clients, posts, back)
    await _refetch_until_stable(clients, posts)
    return _reconcile(clients, fault.name, window, posts, tabs_before, recovered)


def _recovery(clients: Clients, posts: list[Post], back: float) -> float | None:
    """Seconds from the dependency's return to the first post sent after it that reached every
    tab of every follower."""
    by_user: dict[str, list[Tab]] = {}
    for tab in clients.tabs:
        by_user.setdefault(tab.account.id, []).append(tab)
    best: float | None = None
    targets: dict[str, list[str]] = {}
    for post, follower in clients.expected([p for p in posts if p.sent_at >= back]):
        targets.setdefault(post.id, []).append(follower)
    for post_id, followers in targets.items():
        times = [tab.arrived.get(post_id) for follower in followers for tab in by_user[follower]]
        if times and all(t is not None for t in times):
            done = max(t for t in times if t is not None) - back
            best = done if best is None else min(best, done)
    return best


async def _refetch_until_stable(clients: Clients, posts: list[Post]) -> None:
    clients.feeds = {}
    for account in clients.accounts:
        for _ in range(20):
            found = await clients.feed(account)
            if found is not None:
                clients.feeds[account.id] = found
                break
            await asyncio.sleep(0.5)


def _reconcile(
    clients: Clients,
    name: str,
    window: Window,
    posts: list[Post],
    tabs_before: dict[str, tuple[int, int, dict[str, int]]],
    recovered: float | None,
) -> Row:
    feeds = clients.feeds
    by_user: dict[str, list[Tab]] = {}
    for tab in clients.tabs:
        by_user.setdefault(tab.account.id, []).append(tab)
    missing_feeds = missing_sockets = 0
    for post, follower in clients.expected(posts):
        if post.id not in feeds.get(follower, set()):
            missing_feeds += 1
        missing_sockets += sum(1 for tab in by_user[follower] if post.id not in tab.arrived)
    phase_ids = {post.id for post in posts}
    duplicates = out_of_order = resyncs = 0
    closes: dict[str, int] = {}
    for tab in clients.tabs:
        closes_before, resyncs_before, _received_before = tabs_before[tab.name]
        duplicates += sum(count - 1 for post_id, count in tab.received.items() if post_id in phase_ids and count > 1)
        out_of_order += tab.out_of_order
        tab.out_of_order = 0
        resyncs += tab.resyncs - resyncs_before
        for code in tab.closes[closes_before:]:
            closes[str(code)] = closes.get(str(code), 0) + 1
    return Row(
        fault=name,
        committed=len(posts),
        missing_in_feeds=missing_feeds,
        missing_on_sockets=missing_sockets,
        duplicates=duplicates,
        out_of_order=out_of_order,
        http_4xx=sum(n for code, n in window.status.items() if 400 <= code < 500),
        http_5xx=sum(n for code, n in window.status.items() if code >= 500),
        no_answer=window.refused,
        resyncs=resyncs,
        closes=closes,
        recovery_seconds=None if recovered is None else round(recovered, 2),
    )


def table(rows: list[Row]) -> str:
    header = (
        "| fault | committed | missing in feeds | missing on sockets | duplicates | ids out of order "
        "| 4xx | 5xx | no answer | resyncs | socket closes (code: n) | recovery (s) | target |"
    )
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        closes = ", ".join(f"{code}: {n}" for code, n in sorted(row.closes.items())) or "none"
        recovery = "n/a" if row.recovery_seconds is None else f"{row.recovery_seconds:.1f}"
        lines.append(
            f"| {row.fault} | {row.committed} | {row.missing_in_feeds} | {row.missing_on_sockets} | {row.duplicates} "
            f"| {row.out_of_order} | {row.http_4xx} | {row.http_5xx} | {row.no_answer} | {row.resyncs} | {closes} "
            f"| {recovery} | {'met' if row.met else 'MISSED'} |"
        )
    return "\n".join(lines)


async def run(
    faults: list[str],
    *,
    postgres_admin_url: str,
    amqp_url: str | None,
    users: int,
    tabs: int,
    follows: int,
    rate: float,
    report: Callable[[str], None] = print,
) -> list[Row]:
    system = System(postgres_admin_url=postgres_admin_url, amqp_url=amqp_url)
    rows: list[Row] = []
    await system.start()
    clients = Clients(system.base_url, users=users, tabs=tabs, follows=follows)
    try:
        await clients.setup()
        for name in faults:
            fault = FAULTS[name]
            if name == "rabbitmq-down" and "rabbitmq" not in system.proxies:
                report(f"{name}: skipped (no RabbitMQ)")
                continue
            started = time.monotonic()
            row = await run_fault(system, clients, fault, rate=rate)
            rows.append(row)
            report(f"{name}: done in {time.monotonic() - started:.0f} s\n{table([row])}")
    finally:
        await clients.close()
        await system.close()
    return rows
