from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support import User


def test_dialog_both_directions_oldest_first(client: httpx.Client, make_user: Callable[..., User]) -> None:
    a, b, c = make_user(), make_user(), make_user()
    assert client.post(f"/dialog/{b.id}/send", json={"text": "hi b"}, headers=a.auth).status_code == 200
    assert client.post(f"/dialog/{a.id}/send", json={"text": "hi a"}, headers=b.auth).status_code == 200
    client.post(f"/dialog/{c.id}/send", json={"text": "other dialog"}, headers=a.auth)
    expected = [(a.id, b.id, "hi b"), (b.id, a.id, "hi a")]
    for viewer, peer in ((a, b), (b, a)):
        messages = client.get(f"/dialog/{peer.id}/list", headers=viewer.auth).json()
        assert [(m["from"], m["to"], m["text"]) for m in messages] == expected
        assert all(m["created_at"] for m in messages)
    page = client.get(f"/dialog/{b.id}/list", params={"offset": 1, "limit": 1}, headers=a.auth).json()
    assert [m["text"] for m in page] == ["hi a"]


def test_dialog_errors(client: httpx.Client, make_user: Callable[..., User]) -> None:
    a = make_user()
    assert client.post(f"/dialog/{a.id}/send", json={"text": "me"}, headers=a.auth).status_code == 400
    assert client.post("/dialog/999999999999/send", json={"text": "x"}, headers=a.auth).status_code == 404
    assert client.post("/dialog/zzz/send", json={"text": "x"}, headers=a.auth).status_code == 400
    assert client.post(f"/dialog/{a.id}/send", json={"text": "x"}).status_code == 401
    b = make_user()
    too_long = client.post(f"/dialog/{b.id}/send", json={"text": "x" * 5000}, headers=a.auth)
    assert too_long.status_code == 400
    assert client.post(f"/dialog/{b.id}/send", content=b"{", headers=a.auth).status_code == 400
    assert client.get(f"/dialog/{b.id}/list", params={"limit": 0}, headers=a.auth).status_code == 400
