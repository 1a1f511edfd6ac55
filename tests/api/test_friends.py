from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support import User, eventually


def test_follow_is_idempotent_and_unfollow_too(client: httpx.Client, make_user: Callable[..., User]) -> None:
    me, friend = make_user(), make_user()
    for _ in range(2):
        response = client.put(f"/friend/set/{friend.id}", headers=me.auth)
        assert response.status_code == 200, response.text
    post_id = client.post("/post/create", json={"text": "visible"}, headers=friend.auth).json()
    eventually(lambda: [p["id"] for p in client.get("/post/feed", headers=me.auth).json()] == [post_id])
    for _ in range(2):
        assert client.put(f"/friend/delete/{friend.id}", headers=me.auth).status_code == 200
    assert client.get("/post/feed", headers=me.auth).json() == []


def test_friend_errors(client: httpx.Client, make_user: Callable[..., User]) -> None:
    me = make_user()
    yourself = client.put(f"/friend/set/{me.id}", headers=me.auth)
    assert yourself.status_code == 400
    assert "yourself" in yourself.json()["message"]
    assert client.put("/friend/set/999999999999", headers=me.auth).status_code == 404
    assert client.put("/friend/delete/999999999999", headers=me.auth).status_code == 404
    assert client.put("/friend/set/abc", headers=me.auth).status_code == 400
    assert client.put(f"/friend/set/{me.id}").status_code == 401
