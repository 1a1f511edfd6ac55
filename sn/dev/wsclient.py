"""`sn ws-client`: try the real-time feed by hand against any running server (the seed's test_client.py).

    sn ws-client --mode simple [--base-url http://localhost:9000] [--channel seed|otus]
    sn ws-client --mode multi --clients 5 --duration 30 [--interval 0.2] [--base-url ...] [--channel ...]

``--channel otus`` uses the OTUS AsyncAPI endpoint ``/post/feed/posted`` instead of ``/ws/{id}``.

simple: registers a reader and a friend over REST, the reader follows the friend and opens
``/ws/{reader}``, the friend posts, and every frame that arrives is printed with its latency from
the start of the POST. A ping shows the round trip too. Exit code 0 once the post arrived.

multi: registers N users who all follow each other, opens one socket each, then for ``duration``
seconds a random user posts at random intervals. Every post must reach the other N-1 sockets;
the report gives posts made, deliveries expected vs received, latency percentiles (POST request
start -> frame receipt, matched by post id), errors and reconnects. A socket that drops is
reopened with ``?since=<last event id>``, so the server replays what it missed. Exit code 1 if
any delivery was lost.

Everything goes through the public API, so it works against any base URL (dev server, a pod,
a load balancer). It needs httpx and websockets (the ``dev`` extra), imported only when it runs,
so that `sn serve` does not depend on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx
    from websockets.asyncio.client import ClientConnection

__all__ = ["add_arguments", "percentile", "post_id_of", "run", "ws_url"]

# Exit codes: 1 is "the feed lost something", so that a script can tell it from "could not even start".
EXIT_OK = 0
EXIT_LOST = 1
EXIT_SETUP = 2

# Presence is announced by each worker's hub loop shortly after a socket opens (batched, so a
# reconnect storm costs few Redis calls); a post made in that gap would not find the socket.
PRESENCE_SETTLE_SECONDS = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("simple", "multi"), default="simple")
    parser.add_argument(
        "--channel",
        choices=("seed", "otus"),
        default="seed",
        help="seed: /ws/{user_id} (frames wrap the post in data); otus: /post/feed/posted (the AsyncAPI Post"
        " message, postId/postText at the top level)",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="the server's HTTP base URL (default: the `sn dev` running in this checkout, else http://localhost:SN_PORT)",
    )
    parser.add_argument("--clients", type=int, default=5, help="multi: users, all following each other")
    parser.add_argument("--duration", type=float, default=30.0, help="multi: seconds of posting")
    parser.add_argument("--interval", type=float, default=0.2, help="multi: mean seconds between posts")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for a frame (simple) or stragglers (multi)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        print(f"sn ws-client needs httpx and websockets: pip install -e '.[dev]' ({exc})", file=sys.stderr)
        return EXIT_SETUP
    if args.mode == "multi" and (args.clients < 2 or args.duration <= 0 or args.interval <= 0):
        print("sn ws-client: --clients must be >= 2, --duration and --interval > 0", file=sys.stderr)
        return EXIT_SETUP
    main = _simple(args) if args.mode == "simple" else _multi(args)
    try:
        return asyncio.run(main)
    except SetupError as exc:
        print(f"sn ws-client: {exc}", file=sys.stderr)
        return EXIT_SETUP


class SetupError(Exception):
    """The scenario could not be set up (server unreachable, registration refused, ...)."""


# -- REST ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    token: str
    name: str


class Api:
    """The few REST calls the scenarios need; any failure is a SetupError naming the call."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def _call(self, method: str, path: str, *, token: str | None = None, body: Any = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self._http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SetupError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429:
            raise SetupError(
                f"{method} {path}: rate limited ({response.text.strip()}); "
                "start the server with SN_RATE_LIMIT_AUTH=0 / SN_RATE_LIMIT_WRITE=0 or wait"
            )
        if response.status_code != 200:
            raise SetupError(f"{method} {path}: HTTP {response.status_code} {response.text.strip()}")
        return response.json()

    async def register(self, first_name: str) -> Account:
        password = secrets.token_urlsafe(12)
        second_name = "Wsclient" + secrets.token_hex(4)
        body = {
            "first_name": first_name,
            "second_name": second_name,
            "birthdate": "1990-05-17",
            "city": "Moscow",
            "password": password,
            "biography": "created by sn ws-client",
        }
        user_id = str((await self._call("POST", "/user/register", body=body))["user_id"])
        token = str((await self._call("POST", "/login", body={"id": user_id, "password": password}))["token"])
        return Account(user_id, token, f"{first_name} {second_name}")

    async def follow(self, follower: Account, author: Account) -> None:
        await self._call("PUT", f"/friend/set/{author.id}", token=follower.token)

    async def post(self, author: Account, text: str) -> str:
        return str(await self._call("POST", "/post/create", token=author.token, body={"text": text}))


def ws_url(base_url: str, user_id: str, token: str, since: int | None = None, *, channel: str = "seed") -> str:
    """The seed endpoint ``/ws/{user_id}`` (or, ``channel="otus"``, ``/post/feed/posted``) under
    ``base_url`` (http -> ws, https -> wss, path prefix kept)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = f"token={quote(token)}" + (f"&since={since}" if since is not None else "")
    path = "/post/feed/posted" if channel == "otus" else f"/ws/{user_id}"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def post_id_of(frame: dict[str, Any]) -> str | None:
    """The post an event frame is about, in either channel's shape (sn.protocol.messages)."""
    if "postId" in frame:  # /post/feed/posted: OtusPostFrame / OtusDeletedFrame
        return str(frame["postId"])
    data = frame.get("data")
    if isinstance(data, dict) and "post_id" in data:  # /ws/{user_id}: EventFrame with SeedPostData
        return str(data["post_id"])
    return None


def _redacted(url: str) -> str:
    # The token is a bearer credential: keep it out of terminals and CI logs.
    head, _, _ = url.partition("token=")
    return head + "token=…" if head != url else url


async def _connect(url: str) -> ClientConnection:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    try:
        return await connect(url, open_timeout=10, max_size=2**20)
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise SetupError(f"WebSocket {_redacted(url)}: {type(exc).__name__}: {exc}") from exc


async def _register_all(api: Api, names: Sequence[str]) -> list[Account]:
    # Registration hashes a password (argon2) on the server: a few at a time is as fast as many.
    limit = asyncio.Semaphore(8)

    async def one(name: str) -> Account:
        async with limit:
            return await api.register(name)

    return list(await asyncio.gather(*(one(name) for name in names)))


# -- simple ----------------------------------------------------------------------------------------


class FrameLog:
    """Frames in arrival order with their receipt time; lets the scenario wait for a given one."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def add(self, frame: dict[str, Any]) -> None:
        self.frames.append((time.perf_counter(), frame))
        self._changed.set()

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> tuple[float, dict[str, Any]] | None:
        # Checks frames already logged too: a post's frame may well arrive before its POST returns.
        deadline = time.perf_counter() + timeout
        while True:
            for received, frame in self.frames:
                if match(frame):
                    return received, frame
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None


def _print_frame(frame: dict[str, Any], note: str) -> None:
    print(f"<- {frame.get('type', '?')}  ({note})")
    print(json.dumps(frame, indent=2, ensure_ascii=False))


async def _simple(args: argparse.Namespace) -> int:
    import httpx
    from websockets.exceptions import ConnectionClosed

    async with httpx.AsyncClient(base_url=args.base_url, timeout=30) as http:
        api = Api(http)
        reader, friend = await _register_all(api, ["Reader", "Friend"])
        print(f"registered reader {reader.id} ({reader.name}) and friend {friend.id} ({friend.name})")
        await api.follow(reader, friend)
        print(f"reader follows friend: PUT /friend/set/{friend.id}")
        url = ws_url(args.base_url, reader.id, reader.token, channel=args.channel)
        print(f"connecting {_redacted(url)}")
        ws = await _connect(url)
        log = FrameLog()
        # Frames are printed relative to this mark: the moment of connecting, then the POST start.
        mark: dict[str, tuple[str, float]] = {"ref": ("after connecting", time.perf_counter())}

        async def listen() -> None:
            try:
                async for raw in ws:
                    try:
                        frame = json.loads(raw)
                    except ValueError:
                        frame = {"type": "?", "raw": str(raw)}
                    log.add(frame)
                    label, started = mark["ref"]
                    _print_frame(frame, f"{(time.perf_counter() - started) * 1000:.1f} ms {label}")
            except ConnectionClosed as exc:
                print(f"connection closed: {exc}")

        listener = asyncio.create_task(listen())
        try:
            # (The OTUS channel sends nothing but posts: no welcome to wait for.)
            welcomed = args.channel == "otus" or await log.wait_for(lambda f: f.get("type") == "system", args.timeout)
            if not welcomed:
                print(f"no welcome frame within {args.timeout:.0f} s")
                return EXIT_LOST
            text = f"Hello from sn ws-client at {time.strftime('%H:%M:%S')}"
            print(f"friend posts {text!r}: POST /post/create")
            started = time.perf_counter()
            mark["ref"] = ("after the POST started", started)
            post_id = await api.post(friend, text)
            print(f"POST /post/create -> {post_id} in {(time.perf_counter() - started) * 1000:.1f} ms")
            arrived = await log.wait_for(
                lambda f: f.get("type") == "post_created" and post_id_of(f) == post_id,
                args.timeout,
            )
            if arrived is None:
                print(f"FAILED: post {post_id} did not arrive within {args.timeout:.0f} s")
                return EXIT_LOST
            latency_ms = (arrived[0] - started) * 1000
            ping_started = time.perf_counter()
            mark["ref"] = ("after the ping", ping_started)
            print("-> ping")
            await ws.send(json.dumps({"type": "ping"}))
            pong = await log.wait_for(lambda f: f.get("type") == "pong", args.timeout)
            # A short linger so that anything else the server sends still gets printed.
            await asyncio.sleep(0.3)
            rtt = f", ping round trip {(pong[0] - ping_started) * 1000:.1f} ms" if pong else ", no pong"
            print(f"OK: post {post_id} arrived {latency_ms:.1f} ms after the POST started{rtt}")
            return EXIT_OK
        finally:
            await ws.close()
            await listener


# -- multi -----------------------------------------------------------------------------------------


@dataclass
class Peer:
    """One user's socket and what it received."""

    index: int
    account: Account
    channel: str = "seed"
    ws: ClientConnection | None = None
    last_event_id: int = 0
    receipts: dict[str, float] = field(default_factory=dict)  # post id -> first receipt (perf_counter)
    duplicates: int = 0
    reconnects: int = 0


@dataclass
class Tally:
    posts: dict[str, tuple[int, float]] = field(default_factory=dict)  # post id -> (author index, POST start)
    errors: list[str] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)  # sockets the server closed (then reopened)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every new receipt


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _listen(peer: Peer, base_url: str, tally: Tally, stopping: asyncio.Event) -> None:
    from websockets.exceptions import ConnectionClosed

    backoff = 0.2
    while True:
        ws = peer.ws
        assert ws is not None
        try:
            async for raw in ws:
                _record(peer, raw, tally)
        except ConnectionClosed:
            pass
        if stopping.is_set():
            return
        # An unexpected close (worker restart, slow-consumer close, network): reopen with the
        # cursor, so the server replays the events this socket missed meanwhile.
        reason = f"code {ws.close_code}" if ws.close_code is not None else "no close frame"
        tally.closes.append(f"user {peer.index}: socket closed ({reason}), reopened with since={peer.last_event_id}")
        while not stopping.is_set():
            await asyncio.sleep(backoff)
            try:
                peer.ws = await _connect(
                    ws_url(base_url, peer.account.id, peer.account.token, peer.last_event_id, channel=peer.channel)
                )
            except SetupError as exc:
                tally.errors.append(f"user {peer.index}: reconnect failed: {exc}")
                backoff = min(backoff * 2, 5.0)
                continue
            peer.reconnects += 1
            backoff = 0.2
            break
        else:
            return


def _record(peer: Peer, raw: str | bytes, tally: Tally) -> None:
    received = time.perf_counter()
    try:
        frame = json.loads(raw)
    except ValueError:
        tally.errors.append(f"user {peer.index}: not JSON: {str(raw)[:80]!r}")
        return
    kind = frame.get("type")
    event_id = frame.get("event_id")
    if isinstance(event_id, int):
        peer.last_event_id = max(peer.last_event_id, event_id)
    if kind == "post_created":
        post_id = str(post_id_of(frame))
        if post_id in peer.receipts:
            peer.duplicates += 1
        else:
            peer.receipts[post_id] = received
            tally.arrived.set()
    elif kind in ("error", "resync"):
        tally.errors.append(f"user {peer.index}: {kind} frame: {frame.get('data', frame)}")


async def _post_loop(api: Api, peers: Sequence[Peer], tally: Tally, duration: float, interval: float) -> None:
    rnd = random.Random()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    in_flight: set[asyncio.Task[None]] = set()
    number = 0

    async def post(author: Peer, text: str) -> None:
        started = time.perf_counter()
        try:
            post_id = await api.post(author.account, text)
        except SetupError as exc:
            tally.errors.append(f"post by user {author.index} failed: {exc}")
            return
        tally.posts[post_id] = (author.index, started)

    while True:
        # Uniform around the mean: random, yet bounded, so `duration` alone decides the run time.
        delay = rnd.uniform(0, 2 * interval)
        if loop.time() + delay >= deadline:
            break
        await asyncio.sleep(delay)
        number += 1
        author = rnd.choice(peers)
        # Posts are not serialised behind each other's responses: a slow POST must not thin the load.
        task = asyncio.create_task(post(author, f"multi post #{number} from user {author.index}"))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


def _missing(peers: Sequence[Peer], tally: Tally) -> int:
    return sum(
        1
        for post_id, (author, _) in tally.posts.items()
        for peer in peers
        if peer.index != author and post_id not in peer.receipts
    )


async def _multi(args: argparse.Namespace) -> int:
    import httpx

    n: int = args.clients
    print(f"multi: {n} clients, {args.duration:g} s of posting, a post every {args.interval:g} s on average")
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=30, limits=limits) as http:
        api = Api(http)
        accounts = await _register_all(api, [f"Multi{i}" for i in range(n)])
        peers = [Peer(i, account, args.channel) for i, account in enumerate(accounts)]
        limit = asyncio.Semaphore(16)

        async def follow(follower: Peer, author: Peer) -> None:
            async with limit:
                await api.follow(follower.account, author.account)

        await asyncio.gather(*(follow(a, b) for a in peers for b in peers if a is not b))
        print(f"registered {n} users, {n * (n - 1)} follows")
        sockets = await asyncio.gather(
            *(_connect(ws_url(args.base_url, p.account.id, p.account.token, channel=p.channel)) for p in peers)
        )
        for peer, ws in zip(peers, sockets, strict=True):
            peer.ws = ws
        print(f"connected {n} sockets")
        await asyncio.sleep(PRESENCE_SETTLE_SECONDS)

        tally = Tally()
        stopping = asyncio.Event()
        listeners = [asyncio.create_task(_listen(p, args.base_url, tally, stopping)) for p in peers]
        try:
            await _post_loop(api, peers, tally, args.duration, args.interval)
            # Stragglers: the pipeline is asynchronous, so give the last posts time to arrive.
            deadline = time.perf_counter() + args.timeout
            while _missing(peers, tally) and (remaining := deadline - time.perf_counter()) > 0:
                tally.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tally.arrived.wait(), remaining)
        finally:
            stopping.set()
            for peer in peers:
                if peer.ws is not None:
                    await peer.ws.close()
            await asyncio.gather(*listeners)
    return _report(peers, tally)


def _report(peers: Sequence[Peer], tally: Tally) -> int:
    expected = len(tally.posts) * (len(peers) - 1)
    latencies: list[float] = []
    unexpected = 0
    for peer in peers:
        for post_id, received in peer.receipts.items():
            origin = tally.posts.get(post_id)
            if origin is None or origin[0] == peer.index:
                unexpected += 1  # not one of ours, or the author's own post
                continue
            latencies.append((received - origin[1]) * 1000)
    latencies.sort()
    lost = _missing(peers, tally)
    duplicates = sum(p.duplicates for p in peers)
    reconnects = sum(p.reconnects for p in peers)
    print(f"posts made:          {len(tally.posts)}")
    print(f"deliveries expected: {expected}")
    print(f"deliveries received: {len(latencies)} (lost {lost}, duplicates {duplicates}, unexpected {unexpected})")
    if latencies:
        figures = "  ".join(f"{name} {percentile(latencies, q):.1f}" for name, q in (("p50", 0.5), ("p90", 0.9)))
        print(
            f"latency ms (POST start -> frame receipt, {len(latencies)} samples): {figures}"
            f"  p99 {percentile(latencies, 0.99):.1f}  max {latencies[-1]:.1f}"
        )
    print(f"errors:              {len(tally.errors)}")
    for error in tally.errors[:20]:
        print(f"  {error}")
    print(f"reconnects:          {reconnects}")
    for close in tally.closes[:20]:
        print(f"  {close}")
    if lost:
        print(f"FAILED: {lost} of {expected} deliveries lost")
        return EXIT_LOST
    print("OK: every delivery arrived")
    return EXIT_OK
