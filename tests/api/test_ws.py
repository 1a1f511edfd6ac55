"""Real-time feed over WebSocket, end to end: real server (2 workers), real Redis, the real pipeline.

The session server runs the Redis Streams bus (no SN_AMQP_URL); test_ws_rabbitmq.py repeats the
delivery tests over RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import JWT_SECRET
from tests.support import ServerProcess, User, admin_token, eventually

pytestmark = pytest.mark.slow


def ws_url(server: ServerProcess, user: User, *, otus: bool = False, since: int | None = None) -> str:
    base = server.base_url.replace("http://", "ws://")
    path = "/post/feed/posted" if otus else f"/ws/{user.id}"
    query = f"?token={user.token}" + (f"&since={since}" if since is not None else "")
    return base + path + query


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


async def open_socket(server: ServerProcess, user: User, **kwargs: Any) -> ClientConnection:
    ws = await connect(ws_url(server, user, **kwargs), open_timeout=5)
    if not kwargs.get("otus"):  # (the OTUS channel sends Post messages only: no welcome)
        welcome = await recv_json(ws)
        assert welcome["type"] == "system"
        assert welcome["data"]["message"] == "Connected successfully"
    return ws


async def worker_of(ws: ClientConnection) -> str:
    await ws.send(json.dumps({"type": "get_stats"}))
    stats = await recv_type(ws, "stats")
    return str(stats["data"]["worker"]["name"])


def follow(client: httpx.Client, follower: User, author: User) -> None:
    assert client.put(f"/friend/set/{author.id}", headers=follower.auth).status_code == 200


def post(client: httpx.Client, author: User, text: str) -> str:
    response = client.post("/post/create", json={"text": text}, headers=author.auth)
    assert response.status_code == 200, response.text
    return str(response.json())


@pytest.fixture
async def sockets() -> AsyncIterator[list[ClientConnection]]:
    opened: list[ClientConnection] = []
    yield opened
    for ws in opened:
        await ws.close()


async def test_followers_on_both_workers_and_all_tabs_receive(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User], sockets: list[ClientConnection]
) -> None:
    author = make_user()
    followers = [make_user() for _ in range(3)]
    for follower in followers:
        follow(client, follower, author)
    # Open sockets until both workers hold some (the kernel spreads connections between them).
    by_worker: dict[str, list[tuple[User, ClientConnection]]] = {}
    for attempt in range(24):
        user = followers[attempt % len(followers)]
        ws = await open_socket(server, user)
        sockets.append(ws)
        by_worker.setdefault(await worker_of(ws), []).append((user, ws))
        if len(by_worker) == 2 and attempt >= 5:
            break
    assert len(by_worker) == 2, "all connections landed on one worker"

    post_id = post(client, author, "hello followers")
    for ws in sockets:  # every tab of every follower, on either worker
        event = await recv_type(ws, "post_created")
        assert event["data"] == {
            "post_id": post_id,
            "author_user_id": author.id,
            "post_text": "hello followers",
            "created_at": event["data"]["created_at"],
        }
        assert isinstance(event["event_id"], int)
        assert event["event_id"] > 0

    # Workers publish their counts every second; /stats sums every live worker's.
    stats = eventually(
        lambda: (s := client.get("/stats").json())["websocket"]["total_connections"] >= len(sockets) and s
    )
    per_worker = stats["websocket"]["connections_per_worker"]
    assert sum(1 for n in per_worker.values() if n > 0) == 2


def stage_counts(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    pattern = r'^sn_post_delivery_stage_seconds_count\{stage="(\w+)"\} (\S+)$'
    return {stage: float(value) for stage, value in re.findall(pattern, text, re.MULTILINE)}


async def test_a_delivered_post_is_timed_at_every_stage_of_its_path(
    client: httpx.Client, server: ServerProcess, make_user: Callable[..., User], sockets: list[ClientConnection]
) -> None:
    author, follower = make_user(), make_user()
    follow(client, follower, author)
    ws = await open_socket(server, follower)
    sockets.append(ws)
    before = stage_counts(client)
    post_id = post(client, author, "timed")
    assert (await recv_type(ws, "post_created"))["data"]["post_id"] == post_id
    # Bus confirm, fan-out consumer, worker streams, router: each stage counted this post (the
    # router's count is written after its sockets' writes, hence eventually).
    stages = ("published", "consumed", "routed", "dispatched")
    eventually(lambda: (c := stage_counts(client)) and all(c.get(s, 0) > before.get(s, 0) for s in stages) and c)
    # The suite's server counts every post as late (SN_SLOW_DELIVERY_MS): its log says where each
    # step of a post's path spent its time. A drain names the oldest post it carried (another
    # test's, when they share one); a fan-out carries one post.
    lines = server.log_tail(5000).splitlines()
    relay = next(line for line in reversed(lines) if "after the outbox relay (waited=" in line)
    assert all(f" {phase}=" in relay for phase in ("acquire", "select", "route", "publish", "delete", "commit"))
    fanout = next(line for line in lines if f"slow delivery: post {post_id} " in line and "after its fan-out (" in line)
    assert "(followers=" in fanout
    assert all(f" {phase}=" in fanout for phase in ("feeds", "route"))
    assert fanout.endswith(", 1 followers")


async def test_stats_counts_a_user_with_tabs_on_two_workers_once(
    server: ServerProcess, make_user: Callable[..., User], client: httpx.Client, sockets: list[ClientConnection]
) -> None:
    user = make_user()
    workers: set[str] = set()
    # Tabs until they span both workers, then one more. Opened two at a time: on a quiet server
    # one worker can win every accept of a sequence of single connections; a tab on a worker
    # already held is closed again, so the user stays under the per-user socket limit.
    for _ in range(40):
        for ws in await asyncio.gather(open_socket(server, user), open_socket(server, user)):
            worker = await worker_of(ws)
            if worker in workers:
                await ws.close()
            else:
                workers.add(worker)
                sockets.append(ws)
        if len(workers) == 2:
            break
    assert len(workers) == 2
    sockets.append(await open_socket(server, user))

    # Other tests' sockets may come and go meanwhile; what cannot happen with a distinct count is
    # that it reaches the workers' sum while this user is listed by both of them.
    def counted_once() -> bool:
        stats = client.get("/stats").json()
        per_worker_sum = sum(w["users"] for w in stats["workers"])
        return bool(per_worker_sum >= stats["websocket"]["active_users"] + 1 and stats["websocket"]["active_users"])

    eventually(counted_once, timeout=10)


async def test_update_and_delete_events_and_otus_dialect(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User], sockets: list[ClientConnection]
) -> None:
    author, reader = make_user(), make_user()
    follow(client, reader, author)
    seed = await open_socket(server, reader)
    otus = await open_socket(server, reader, otus=True)
    sockets += [seed, otus]
    post_id = post(client, author, "v1")
    # As otus-asyncapi.json gives the message: its fields at the top level, our type and
    # event_id beside them, and nothing else first (no welcome).
    first = await recv_json(otus)
    assert first == {
        "type": "post_created",
        "event_id": first["event_id"],
        "postId": post_id,
        "postText": "v1",
        "author_user_id": author.id,
    }
    client.put("/post/update", json={"id": post_id, "text": "v2"}, headers=author.auth)
    updated = await recv_type(seed, "post_updated")
    assert updated["data"]["post_text"] == "v2"
    assert updated["data"]["post_id"] == post_id
    client.put(f"/post/delete/{post_id}", headers=author.auth)
    deleted = await recv_type(seed, "post_deleted")
    assert deleted["data"]["post_id"] == post_id
    ids = [(await recv_type(otus, kind))["event_id"] for kind in ("post_updated", "post_deleted")]
    assert ids == sorted(ids)


async def test_ping_stats_and_bad_frames_keep_the_connection(
    server: ServerProcess, make_user: Callable[..., User], sockets: list[ClientConnection]
) -> None:
    user = make_user()
    ws = await open_socket(server, user)
    sockets.append(ws)
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv_json(ws))["type"] == "pong"
    for bad in ("not json", "[]", json.dumps({"type": "dance"}), json.dumps({"no": "type"})):
        await ws.send(bad)
        error = await recv_json(ws)
        assert error["type"] == "error"
        assert error["data"]["message"]
    await ws.send(json.dumps({"type": "get_stats"}))
    stats = (await recv_type(ws, "stats"))["data"]
    assert stats["connection"]["messages_received"] >= 5
    assert stats["worker"]["connections"] >= 1


async def test_oversized_frame_is_refused(server: ServerProcess, make_user: Callable[..., User]) -> None:
    ws = await open_socket(server, make_user())
    await ws.send("x" * (70 * 1024))
    with pytest.raises(ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


@pytest.mark.parametrize(
    ("path_user", "token_kind", "status"),
    [("self", "garbage", 401), ("other", "valid", 403), ("self", "none", 401), ("self", "expired", 401)],
)
async def test_bad_tokens_are_refused_before_upgrade(
    server: ServerProcess, make_user: Callable[..., User], path_user: str, token_kind: str, status: int
) -> None:
    import jwt

    me, other = make_user(), make_user()
    target = me if path_user == "self" else other
    token = {
        "garbage": "not.a.jwt",
        "valid": me.token,
        "none": "",
        "expired": jwt.encode({"sub": me.id, "iat": 1, "exp": 2}, JWT_SECRET, algorithm="HS256"),
    }[token_kind]
    url = server.base_url.replace("http://", "ws://") + f"/ws/{target.id}" + (f"?token={token}" if token else "")
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, open_timeout=5)
    assert refused.value.response.status_code == status


def test_a_plain_get_or_a_broken_handshake_gets_a_4xx_with_a_message(
    client: httpx.Client, make_user: Callable[..., User]
) -> None:
    user = make_user()
    plain = client.get(f"/ws/{user.id}", headers=user.auth)
    assert plain.status_code == 426
    assert "WebSocket" in plain.json()["message"]
    assert plain.headers["upgrade"] == "websocket"
    upgrade = {**user.auth, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    bad_key = client.get(f"/ws/{user.id}", headers={**upgrade, "Sec-WebSocket-Key": "short"})
    assert bad_key.status_code == 400
    assert "Sec-WebSocket-Key" in bad_key.json()["message"]
    with_body = client.request(
        "GET", f"/ws/{user.id}", headers={**upgrade, "Sec-WebSocket-Key": "a" * 22 + "=="}, content=b"hello"
    )
    assert with_body.status_code == 400
    assert "no body" in with_body.json()["message"]
    old_version = client.get(
        "/post/feed/posted", headers={**upgrade, "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "a" * 22 + "=="}
    )
    assert old_version.status_code == 426
    assert old_version.headers["sec-websocket-version"] == "13"


async def test_frames_sent_right_behind_the_upgrade_request_are_not_lost(
    server: ServerProcess, make_user: Callable[..., User]
) -> None:
    from websockets.frames import Frame, Opcode

    user = make_user()
    request = (
        f"GET /ws/{user.id}?token={user.token} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ping = Frame(Opcode.TEXT, b'{"type":"ping"}').serialize(mask=True, extensions=[])
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request + ping)  # one packet: the ping arrives with the handshake
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        kinds = []
        for _ in range(2):
            first, length = await asyncio.wait_for(reader.readexactly(2), 5)
            assert first == 0x81  # a final, unmasked text frame
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            kinds.append(json.loads(await reader.readexactly(length))["type"])
        assert kinds == ["system", "pong"]
    finally:
        writer.close()


async def test_otus_endpoint_accepts_bearer_header(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User]
) -> None:
    author, reader = make_user(), make_user()
    follow(client, reader, author)
    url = server.base_url.replace("http://", "ws://") + "/post/feed/posted"
    async with connect(url, additional_headers=reader.auth, open_timeout=5) as ws:
        post_id = post(client, author, "via header")
        message = await recv_json(ws)
        assert (message["type"], message["postId"], message["postText"]) == ("post_created", post_id, "via header")


async def test_reconnect_with_since_replays_missed_events(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User]
) -> None:
    author, reader = make_user(), make_user()
    follow(client, reader, author)
    async with await open_socket(server, reader) as ws:
        post(client, author, "seen")
        last_seen = (await recv_type(ws, "post_created"))["event_id"]
    missed = [post(client, author, f"missed {i}") for i in range(3)]
    time.sleep(0.3)  # let the pipeline route them while the reader is away
    async with await open_socket(server, reader, since=last_seen) as ws:
        replayed = [await recv_type(ws, "post_created") for _ in missed]
        # Competing consumers may route two posts a few ms apart in either order; event ids
        # still increase for the recipient.
        assert sorted(m["data"]["post_id"] for m in replayed) == sorted(missed)
        assert [m["event_id"] for m in replayed] == sorted(m["event_id"] for m in replayed)
        assert replayed[0]["event_id"] > last_seen
    # A cursor the server never issued (e.g. Redis was flushed since): refetch over HTTP.
    async with await open_socket(server, reader, since=10**15) as ws:
        assert (await recv_type(ws, "resync"))["data"]["since"] == 10**15


async def test_slow_consumer_is_closed_and_others_unaffected(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User], sockets: list[ClientConnection]
) -> None:
    author, slow_user, fast_user = make_user(), make_user(), make_user()
    follow(client, slow_user, author)
    follow(client, fast_user, author)
    # The slow client: a raw socket with a tiny receive buffer that completes the handshake and
    # then never reads again.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    raw.sendall(
        (
            f"GET /ws/{slow_user.id}?token={slow_user.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in raw.recv(200)
    fast = await open_socket(server, fast_user)
    sockets.append(fast)
    admin = {"Authorization": f"Bearer {admin_token(JWT_SECRET, make_user().id)}"}
    # Enough bytes to fill the kernel buffers on both sides and then the 256-frame mailbox.
    text = "x" * 10_000
    count = 800
    before = client.get("/stats").json()["websocket"]["slow_consumer_closes"]

    async def drain_fast() -> int:
        # Reads concurrently with the posting below, as a healthy client does.
        received = 0
        while received < count:
            await recv_type(fast, "post_created", timeout=20)
            received += 1
        return received

    reader = asyncio.create_task(drain_fast())
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for i in range(count):
            response = await http.post(
                "/test-post",
                json={"post_id": str(10_000 + i), "author_user_id": author.id, "post_text": text},
                headers=admin,
            )
            assert response.status_code == 200
    assert await reader == count  # the healthy client got every event

    def closed_count() -> int:
        return int(client.get("/stats").json()["websocket"]["slow_consumer_closes"])

    deadline = time.monotonic() + 10
    while closed_count() <= before and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert closed_count() > before
    raw.close()
    await fast.send(json.dumps({"type": "ping"}))
    assert (await recv_type(fast, "pong"))["type"] == "pong"


def test_monitoring_endpoints_and_admin_checks(client: httpx.Client, make_user: Callable[..., User]) -> None:
    user = make_user()
    stats = client.get("/stats").json()
    assert set(stats) >= {"websocket", "feed_processor", "celebrity_handler"}
    assert stats["feed_processor"]["is_running"] is True
    assert stats["celebrity_handler"]["threshold"] >= 1
    assert client.post("/celebrity-settings", json={"batch_size": 5}).status_code == 401
    assert client.post("/celebrity-settings", json={"batch_size": 5}, headers=user.auth).status_code == 403
    admin = {"Authorization": f"Bearer {admin_token(JWT_SECRET, make_user().id)}"}
    for bad in ({"batch_size": 0}, {"batch_delay": -1}, {"celebrity_threshold": "x"}, {"unknown": 1}):
        response = client.post("/celebrity-settings", json=bad, headers=admin)
        assert response.status_code == 400, bad
    assert client.post("/test-post", json={"post_id": "1"}, headers=admin).status_code == 400


async def test_test_post_takes_any_post_id_and_refuses_an_unknown_author(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User], sockets: list[ClientConnection]
) -> None:
    author, reader = make_user(), make_user()
    follow(client, reader, author)
    ws = await open_socket(server, reader)
    sockets.append(ws)
    admin = {"Authorization": f"Bearer {admin_token(JWT_SECRET, make_user().id)}"}
    # The seed project's own example: a post id that is not one of ours.
    body = {"post_id": "test_123", "author_user_id": author.id, "post_text": "Test post message"}
    response = client.post("/test-post", json=body, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "test post delivered"
    frame = await recv_type(ws, "post_created")
    assert frame["data"]["post_id"] == "test_123"
    assert frame["data"]["post_text"] == "Test post message"

    unknown = client.post("/test-post", json={**body, "author_user_id": "123456789012"}, headers=admin)
    assert unknown.status_code == 404
    assert "author_user_id" in unknown.json()["message"]
    for bad, field in (({**body, "post_id": ""}, "post_id"), ({**body, "author_user_id": "bob"}, "author_user_id")):
        response = client.post("/test-post", json=bad, headers=admin)
        assert response.status_code == 400, response.text
        assert field in response.json()["message"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "sn_ws_connections" in metrics.text
    # Every worker samples its event loop (a timer every 20 ms) and times the collector's pauses.
    assert re.search(r"^sn_event_loop_lag_seconds_count [1-9]", metrics.text, re.MULTILINE), metrics.text
    assert "sn_gc_pause_seconds" in metrics.text
