"""Two app nodes behind the real load balancer (HAProxy with deploy/haproxy/haproxy.cfg), as scripts/topology.sh runs
them: a post made through one node reaches a follower connected to the other, and when a node is SIGKILLed its
client reconnects through the balancer to the surviving node with `since` and misses nothing.

Plain PostgreSQL always; the same on Citus where SN_TEST_CITUS_URL (and SN_CITUS_WORKERS / SN_CITUS_HOT_WORKER)
is set. Without the haproxy binary the clients talk to each node directly (the part about the balancer is then
skipped, said in the test's output).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests import citus_support
from tests.private_services import PrivateRedis
from tests.support import ROOT, ServerProcess, User, free_port, kill_session, register

pytestmark = pytest.mark.slow

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy")


@dataclass
class Balancer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def haproxy_env(bind: str, node_a: str, node_b: str, maxconn: int = 1000) -> dict[str, str]:
    # SN_LB_LOG: its request log goes to the test's log file, which the node-kill test reads.
    return {
        "SN_LB_BIND": bind,
        "SN_NODE_A": node_a,
        "SN_NODE_B": node_b,
        "SN_LB_MAXCONN": str(maxconn),
        "SN_LB_LOG": "stderr",
    }


def start_balancer(a: ServerProcess, b: ServerProcess, log_path: Path) -> Balancer:
    assert HAPROXY is not None
    port = free_port()
    env = {**os.environ, **haproxy_env(f"127.0.0.1:{port}", f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")}
    log = log_path.open("wb")
    # -db: foreground, so the test owns the process; a session of its own like the servers.
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    balancer = Balancer(port, proc, log_path)
    wait_for(lambda: _ready(balancer.base_url), 30, f"haproxy never reached a ready node:\n{log_path.read_text()}")
    return balancer


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


@pytest.fixture(params=["postgres", pytest.param("citus", marks=pytest.mark.citus)])
def topology_database(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgres":
        yield request.getfixturevalue("private_database_url")
        return
    if citus_support.citus_target() is None:
        pytest.skip(citus_support.skip_reason())
    yield from citus_support.fresh_database(f"sn_test_{uuid.uuid4().hex[:12]}")


@dataclass
class Topology:
    a: ServerProcess
    b: ServerProcess
    balancer: Balancer | None

    @property
    def entry_url(self) -> str:
        """Where clients go: the balancer, or node B when there is none."""
        return self.balancer.base_url if self.balancer else self.b.base_url


@pytest.fixture
def topology(topology_database: str, server_env: dict[str, str], tmp_path: Path) -> Iterator[Topology]:
    # The session's Redis database and secret, a database and a bus of their own: the session server neither
    # consumes these nodes' events nor sees their users.
    env = {
        **server_env,
        "SN_DATABASE_URL": topology_database,
        "SN_BUS_PREFIX": f"sntopo{uuid.uuid4().hex[:8]}",
        "SN_PROXIES_COUNT": "1",
    }
    if citus_support.citus_target() is not None and topology_database != server_env["SN_DATABASE_URL"]:
        env["SN_CITUS_WORKERS"] = os.environ["SN_CITUS_WORKERS"]
        env["SN_CITUS_HOT_WORKER"] = os.environ["SN_CITUS_HOT_WORKER"]
    a = ServerProcess({**env, "SN_NODE_ID": "node-a"}, workers=2, log_path=tmp_path / "node-a.log")
    b = ServerProcess({**env, "SN_NODE_ID": "node-b"}, workers=2, log_path=tmp_path / "node-b.log")
    started: list[ServerProcess] = []
    balancer = None
    try:
        for node in (a, b):
            node.start(timeout=60)
            started.append(node)
        if HAPROXY is not None:
            balancer = start_balancer(a, b, tmp_path / "haproxy.log")
        yield Topology(a, b, balancer)
    finally:
        if balancer is not None:
            kill_session(balancer.proc)
        for node in started:
            node.stop()


def ws_url(base_url: str, user: User, since: int | None = None) -> str:
    query = f"?token={user.token}" + (f"&since={since}" if since is not None else "")
    return base_url.replace("http://", "ws://") + f"/ws/{user.id}" + query


async def recv_json(ws: ClientConnection, timeout: float) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


class Follower:
    """One user's socket: every post_created frame it got, and the newest event id (the `since` cursor)."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.ws: ClientConnection | None = None
        self.node = ""
        self.last_event_id = 0
        self.posts: list[str] = []
        self.frames: list[dict[str, Any]] = []

    async def open(self, base_url: str, since: int | None = None) -> None:
        ws = await connect(ws_url(base_url, self.user, since), open_timeout=10)
        welcome = await recv_json(ws, 10)
        assert welcome["type"] == "system", welcome
        # The stats reply says which app node the socket reached (and that its setup ran).
        await ws.send(json.dumps({"type": "get_stats"}))
        while (frame := await recv_json(ws, 10))["type"] != "stats":
            self._record(frame)
        self.node = str(frame["data"]["worker"]["node"])
        self.ws = ws

    def _record(self, frame: dict[str, Any]) -> None:
        assert frame["type"] not in ("error", "resync"), frame
        if isinstance(frame.get("event_id"), int):
            self.last_event_id = max(self.last_event_id, frame["event_id"])
        if frame["type"] == "post_created":
            self.posts.append(str(frame["data"]["post_id"]))
            self.frames.append(frame)

    async def wait_posts(self, expected: set[str], timeout: float = 15.0) -> None:
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        while not expected <= set(self.posts):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"missing posts {expected - set(self.posts)}; got {self.posts}"
            self._record(await recv_json(self.ws, remaining))


# deploy/haproxy/haproxy.cfg: `inter 1s fastinter 500ms fall 2`, so node A is out within ~1.5 s of its death.
BALANCER_DOWN_SECONDS = 3.0


def post(client: httpx.Client, author: User, text: str) -> str:
    response = client.post("/post/create", json={"text": text}, headers=author.auth)
    assert response.status_code == 200, response.text
    return str(response.json())


async def test_two_nodes_behind_the_balancer_survive_a_node_kill(topology: Topology) -> None:
    entry = httpx.Client(base_url=topology.entry_url, timeout=15)
    via_b = httpx.Client(base_url=topology.b.base_url, timeout=15)
    try:
        author, reader = register(entry), register(entry)
        assert entry.put(f"/friend/set/{author.id}", headers=reader.auth).status_code == 200
        follower = Follower(reader)

        if topology.balancer is not None:
            # Consecutive sockets through the balancer land on both nodes (the fewest open: a tie each time, which
            # HAProxy breaks in turn); keep one on node A.
            seen = set()
            for _ in range(4):
                await follower.open(topology.entry_url)
                seen.add(follower.node)
                if follower.node == "node-a" and len(seen) == 2:
                    break
                assert follower.ws is not None
                await follower.ws.close()
            assert seen == {"node-a", "node-b"}, seen
        else:
            print("haproxy is not installed: the follower connects to node A directly")
            await follower.open(topology.a.base_url)
        assert follower.node == "node-a"

        # A post made through node B reaches the follower held by node A.
        first = post(via_b, author, "through node B")
        await follower.wait_posts({first})
        assert follower.last_event_id > 0

        # Node A dies at once (SIGKILL of the manager and its workers): its socket just drops.
        assert topology.a.proc is not None
        kill_session(topology.a.proc)
        assert follower.ws is not None
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(follower.ws.recv(), 10)
        follower.ws = None

        if topology.balancer is not None:
            # Until its health check marks node A down (2 failed checks 0.5-1 s apart), the balancer may
            # still send a request over an idle connection it kept to A, and a POST that got no answer
            # is not retried, by it or by httpx: a client would see one failed request. What this test
            # is about is the state once A is known down, so let the check see it first.
            time.sleep(BALANCER_DOWN_SECONDS)
        # While the follower is away, posts keep being accepted through the entry point.
        missed = {post(entry, author, f"while node A is down {i}") for i in range(3)}

        # The client reconnects where it always connects (the balancer: it lands on node B) with its cursor.
        deadline = time.monotonic() + 10
        failures: list[str] = []
        while time.monotonic() < deadline:
            try:
                await follower.open(topology.entry_url, since=follower.last_event_id)
                break
            except (TimeoutError, OSError, ConnectionClosed) as exc:
                failures.append(repr(exc))
                await asyncio.sleep(0.2)
        assert follower.ws is not None, f"no reconnect within 10 s: {failures}"
        assert follower.node == "node-b"
        await follower.wait_posts(missed)
        later = post(entry, author, "after the reconnect")
        await follower.wait_posts({later})
        # Exactly once each, and every post is in the feed too.
        assert sorted(follower.posts) == sorted({first, later} | missed), (follower.frames, first, missed, later)
        feed = entry.get("/post/feed", params={"limit": 10}, headers=reader.auth)
        assert feed.status_code == 200, feed.text
        assert {first, later} | missed <= {str(item["id"]) for item in feed.json()}
        if follower.ws is not None:
            await follower.ws.close()
        if topology.balancer is not None:
            # The balancer's own account, as an operator reads it: node A marked down, the socket it held, and
            # the requests after the kill served by node B.
            wait_for(
                lambda: "/ws/" in topology.balancer.log_path.read_text(), 5, "no WebSocket line in the haproxy log"
            )
            log = topology.balancer.log_path.read_text().splitlines()
            assert any("node-a is DOWN" in line for line in log), log[-20:]
            assert any("sn-ws/node-a" in line and f'"GET /ws/{reader.id}' in line for line in log), log[-20:]
            created = [line for line in log if '"POST /post/create' in line]
            assert created, log[-20:]
            assert "sn-app/node-b" in created[-1], created[-5:]
    finally:
        entry.close()
        via_b.close()


class RebalancedFollower(Follower):
    """A follower that does what a client does when its socket is closed: reconnect with its cursor."""

    def __init__(self, user: User, entry: Any) -> None:
        super().__init__(user)
        self._entry = entry  # () -> the base URL to reconnect to (the balancer, or the nodes in turn)
        self.closes: list[tuple[int | None, str | None, str]] = []  # (code, reason, node it left)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            assert self.ws is not None
            try:
                self._record(await recv_json(self.ws, 0.2))
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.closes.append((self.ws.close_code, self.ws.close_reason, self.node))
                while not stop.is_set():
                    try:
                        await self.open(self._entry(), since=self.last_event_id)
                        break
                    except (OSError, TimeoutError, ConnectionClosed):
                        await asyncio.sleep(0.1)  # as a client retries; the test's own checks say if too long


async def test_a_node_that_comes_back_gets_its_share_of_sockets_and_nobody_misses_a_post(
    private_database_url: str, server_env: dict[str, str], tmp_path: Path
) -> None:
    # One worker a node, and thresholds scaled down to a dozen sockets (sn.realtime.rebalance). A Redis of its
    # own: a worker balances against every worker that publishes stats there, and the suite's other servers do.
    services = contextlib.ExitStack()
    private_redis = services.enter_context(PrivateRedis())
    env = {
        **server_env,
        "SN_DATABASE_URL": private_database_url,
        "SN_REDIS_URL": private_redis.url(),
        "SN_BUS_PREFIX": f"sntopo{uuid.uuid4().hex[:8]}",
        "SN_PROXIES_COUNT": "1",
        "SN_WS_REBALANCE_RATE": "4",
        "SN_WS_REBALANCE_MIN_EXCESS": "2",
        # Node B's worker counts once HAProxy has it in rotation (2 good checks, ~2 s; 6 leaves room on a busy
        # machine), as SN_WS_REBALANCE_WARMUP_SECONDS is meant to be set: sockets handed back before that would
        # all come back to node A.
        "SN_WS_REBALANCE_WARMUP_SECONDS": "6",
    }
    a = ServerProcess({**env, "SN_NODE_ID": "node-a"}, workers=1, log_path=tmp_path / "node-a.log")
    b = ServerProcess({**env, "SN_NODE_ID": "node-b"}, workers=1, log_path=tmp_path / "node-b.log")
    balancer: Balancer | None = None
    followers: list[RebalancedFollower] = []
    runs: list[asyncio.Task[None]] = []
    via_a = httpx.Client(base_url=a.base_url, timeout=15)
    try:
        a.start(timeout=60)
        if HAPROXY is not None:
            # In front from the start, node B not there yet (its checks fail): every socket lands on node A.
            balancer = start_balancer(a, b, tmp_path / "haproxy.log")
        else:
            print("haproxy is not installed: clients reconnect to the two nodes in turn")
        author = register(via_a)
        turn = iter(range(1_000_000))

        def entry() -> str:
            # Where a client reconnects: the balancer, or without one the two nodes in turn (round-robin).
            if balancer is not None:
                return balancer.base_url
            return (a.base_url, b.base_url)[next(turn) % 2]

        for _ in range(12):
            reader = register(via_a)
            assert via_a.put(f"/friend/set/{author.id}", headers=reader.auth).status_code == 200
            follower = RebalancedFollower(reader, entry)
            await follower.open(balancer.base_url if balancer is not None else a.base_url)
            assert follower.node == "node-a"
            followers.append(follower)
        made = {post(via_a, author, "all on node A")}
        for follower in followers:
            await follower.wait_posts(made)

        # Node B joins (a restart, a scale-out): node A hands sockets back until both hold their share.
        b.start(timeout=60)
        stop = asyncio.Event()
        runs += [asyncio.create_task(f.run(stop)) for f in followers]
        deadline = time.monotonic() + 30
        while sum(f.node == "node-b" for f in followers) < 5:  # mean 6; node A keeps <= 6 * 1.25
            assert time.monotonic() < deadline, [f.node for f in followers]
            made.add(post(via_a, author, f"while rebalancing {len(made)}"))
            await asyncio.sleep(0.3)
        # Balanced: no more sockets are handed back.
        moved = sum(len(f.closes) for f in followers)
        await asyncio.sleep(2.5)
        assert sum(len(f.closes) for f in followers) == moved
        stop.set()
        await asyncio.gather(*runs)

        made.add(post(via_a, author, "after the rebalance"))
        for follower in followers:
            await follower.wait_posts(made)
            # Every post exactly once, whether it came live or in the replay after a reconnect.
            assert sorted(follower.posts) == sorted(made), (follower.closes, follower.frames)
        closes = [close for f in followers for close in f.closes]
        assert closes, "nothing was handed back"
        assert {(code, reason, node) for code, reason, node in closes} == {
            (1012, "rebalancing: reconnect with since", "node-a")
        }
        if balancer is not None:
            # The balancer sends a WebSocket to the node with the fewest (leastconn): each socket handed back moved
            # to node B, in one close, and none came back (round-robin would send about half back to node A).
            assert sum(f.node == "node-b" for f in followers) == len(closes), [(f.node, f.closes) for f in followers]
        stats = via_a.get("/stats").json()["websocket"]
        assert stats["rebalance_closes"] == len(closes)
        assert set(stats["connections_per_worker"].values()) <= {5, 6, 7}
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for follower in followers:
            if follower.ws is not None:
                await follower.ws.close()
        via_a.close()
        if balancer is not None:
            kill_session(balancer.proc)
        for node in (a, b):
            node.stop()
        services.close()
