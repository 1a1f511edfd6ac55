from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support import User


def test_post_lifecycle(client: httpx.Client, make_user: Callable[..., User]) -> None:
    author = make_user()
    created = client.post("/post/create", json={"text": "first post"}, headers=author.auth)
    assert created.status_code == 200
    post_id = created.json()
    assert isinstance(post_id, str)
    assert post_id.isdigit()

    got = client.get(f"/post/get/{post_id}").json()
    assert got["id"] == post_id
    assert got["text"] == "first post"
    assert got["author_user_id"] == author.id
    assert got["created_at"]

    assert client.put("/post/update", json={"id": post_id, "text": "edited"}, headers=author.auth).status_code == 200
    assert client.get(f"/post/get/{post_id}").json()["text"] == "edited"

    assert client.put(f"/post/delete/{post_id}", headers=author.auth).status_code == 200
    assert client.get(f"/post/get/{post_id}").status_code == 404
    assert client.put(f"/post/delete/{post_id}", headers=author.auth).status_code == 404


def test_only_author_may_change(client: httpx.Client, make_user: Callable[..., User]) -> None:
    author, other = make_user(), make_user()
    post_id = client.post("/post/create", json={"text": "mine"}, headers=author.auth).json()
    update = client.put("/post/update", json={"id": post_id, "text": "hijack"}, headers=other.auth)
    assert update.status_code == 403
    assert client.put(f"/post/delete/{post_id}", headers=other.auth).status_code == 403
    assert client.get(f"/post/get/{post_id}").json()["text"] == "mine"


def test_unknown_and_malformed_post_ids(client: httpx.Client, make_user: Callable[..., User]) -> None:
    user = make_user()
    assert client.get("/post/get/999999999999").status_code == 404
    assert client.get("/post/get/not-an-id").status_code == 400
    assert client.put("/post/update", json={"id": "999999999999", "text": "x"}, headers=user.auth).status_code == 404
    assert client.put("/post/update", json={"id": "x", "text": "x"}, headers=user.auth).status_code == 400
    assert client.put("/post/delete/-5", headers=user.auth).status_code == 400


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 10_001}, "10000"),
        ({"text": 5}, "text"),
        ({}, "text"),
        ({"txt": "a"}, "text"),
    ],
)
def test_create_rejects_bad_text(
    client: httpx.Client, make_user: Callable[..., User], body: dict[str, object], fragment: str
) -> None:
    user = make_user()
    response = client.post("/post/create", json=body, headers=user.auth)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_text_at_the_cap_is_accepted(client: httpx.Client, make_user: Callable[..., User]) -> None:
    user = make_user()
    text = "я" * 10_000  # characters, not bytes
    post_id = client.post("/post/create", json={"text": text}, headers=user.auth).json()
    assert client.get(f"/post/get/{post_id}").json()["text"] == text
