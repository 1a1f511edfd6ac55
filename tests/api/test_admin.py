"""GET /admin/cluster/status and POST /admin/hot-users/{id} on the session server.

On plain PostgreSQL (CI) the server is single-node; with SN_TEST_REST_ON_CITUS=1 the same tests run
against a Citus database and the promotion moves real shards (writes keep going meanwhile)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from tests import citus_support
from tests.conftest import JWT_SECRET
from tests.support import User, admin_token, register

ON_CITUS = citus_support.rest_on_citus()
MODE = "citus" if ON_CITUS else "single-node"


@pytest.fixture(scope="module")
def admin(client: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token(JWT_SECRET, register(client).id)}"}


def test_cluster_status_requires_an_admin_token(client: httpx.Client, make_user: Callable[..., User]) -> None:
    anonymous = client.get("/admin/cluster/status")
    assert anonymous.status_code == 401
    user = make_user()
    forbidden = client.get("/admin/cluster/status", headers=user.auth)
    assert forbidden.status_code == 403
    assert "admin" in forbidden.json()["message"]
    assert client.post(f"/admin/hot-users/{user.id}", headers=user.auth).status_code == 403
    assert client.post(f"/admin/hot-users/{user.id}").status_code == 401


def test_cluster_status_describes_the_deployment(client: httpx.Client, admin: dict[str, str]) -> None:
    response = client.get("/admin/cluster/status", headers=admin)
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["mode"] == MODE
    assert status["problems"] == []
    tables = {table["name"]: table for table in status["tables"]}
    assert {"users", "posts", "friendships", "followers", "dialog_messages", "hot_users"} <= set(tables)
    nodes = status["nodes"]
    assert all(node["reachable"] and node["active"] for node in nodes)
    if ON_CITUS:
        assert sorted(node["role"] for node in nodes) == ["coordinator", "hot", "worker", "worker"]
        assert tables["posts"]["colocation_id"] == tables["users"]["colocation_id"]
        assert tables["hot_users"]["type"] == "reference"
        assert status["rebalance_strategy"]["name"] == "sn_hot_pinned"
    else:
        assert [node["role"] for node in nodes] == ["single-node"]
        assert {table["type"] for table in status["tables"]} == {"local"}
        assert status["rebalance_strategy"] is None


def test_hot_user_promotion_and_demotion_over_http(
    client: httpx.Client, admin: dict[str, str], make_user: Callable[..., User]
) -> None:
    star = make_user()
    fan = make_user()
    assert client.put(f"/friend/set/{star.id}", headers=fan.auth).status_code == 200
    assert client.post("/post/create", json={"text": "before"}, headers=star.auth).status_code == 200

    # Keep posting while the promotion runs: on Citus the user's shards move meanwhile.
    posted: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            while not stop.is_set():
                reply = own.post("/post/create", json={"text": f"during {len(posted)}"}, headers=star.auth)
                if reply.status_code == 200:
                    posted.append(reply.json())
                else:
                    failures.append(f"{reply.status_code} {reply.text}")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not posted and not failures:  # the move must start while posts are being written
            stop.wait(0.01)
        promoted = client.post(f"/admin/hot-users/{star.id}", headers=admin, timeout=60)
    finally:
        stop.set()
        thread.join()
    assert promoted.status_code == 200, promoted.text
    body = promoted.json()
    assert body["user_id"] == star.id
    assert body["mode"] == MODE
    assert body["action"] == ("promoted" if ON_CITUS else "recorded")
    assert failures == []
    assert posted
    for post_id in posted:
        got = client.get(f"/post/get/{post_id}")
        assert got.status_code == 200, got.text

    status = client.get("/admin/cluster/status", headers=admin).json()
    hot = {item["user_id"]: item for item in status["hot_users"]}
    assert hot[star.id]["hot"] is True
    if ON_CITUS:
        assert hot[star.id]["on_hot_worker"] is True
        assert hot[star.id]["isolated"] is True
        assert status["problems"] == []
    # The user's reads keep working on the hot worker.
    assert client.get(f"/user/get/{star.id}").status_code == 200
    feed = client.get("/post/feed", headers=fan.auth, params={"limit": 1000})
    assert feed.status_code == 200
    assert len(feed.json()) >= 1

    demoted = client.post(f"/admin/hot-users/{star.id}", params={"action": "demote"}, headers=admin, timeout=60)
    assert demoted.status_code == 200, demoted.text
    assert demoted.json()["action"] == "demoted"
    status = client.get("/admin/cluster/status", headers=admin).json()
    item = next(item for item in status["hot_users"] if item["user_id"] == star.id)
    assert item["hot"] is False
    if ON_CITUS:
        assert item["on_hot_worker"] is False


def test_hot_user_errors(client: httpx.Client, admin: dict[str, str], make_user: Callable[..., User]) -> None:
    assert client.post("/admin/hot-users/999999999", headers=admin).status_code == 404
    assert client.post("/admin/hot-users/not-an-id", headers=admin).status_code == 400
    user = make_user()
    bad = client.post(f"/admin/hot-users/{user.id}", params={"action": "freeze"}, headers=admin)
    assert bad.status_code == 400
    assert "promote or demote" in bad.json()["message"]
