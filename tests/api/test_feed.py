from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import httpx
import pytest

from tests.support import User, eventually


def _ids(client: httpx.Client, user: User, **params: object) -> list[str]:
    response = client.get("/post/feed", params=params, headers=user.auth)
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()]


def test_feed_newest_first_only_followed(client: httpx.Client, make_user: Callable[..., User]) -> None:
    reader, a, b, stranger = make_user(), make_user(), make_user(), make_user()
    for author in (a, b):
        client.put(f"/friend/set/{author.id}", headers=reader.auth)
    posted = []
    for i in range(6):
        author = a if i % 2 else b
        posted.append(client.post("/post/create", json={"text": f"p{i}"}, headers=author.auth).json())
    client.post("/post/create", json={"text": "not for you"}, headers=stranger.auth)
    # Fan-out runs on the pipeline: the feed converges within milliseconds, not synchronously.
    eventually(lambda: _ids(client, reader, limit=100) == posted[::-1])
    assert _ids(client, reader, offset=1, limit=2) == posted[::-1][1:3]
    assert _ids(client, reader, before=posted[3], limit=10) == posted[:3][::-1]


def test_feed_paging_beyond_cached_window_and_cursor(
    client: httpx.Client, make_user: Callable[..., User], server_env: dict[str, str]
) -> None:
    reader, author = make_user(), make_user()
    client.put(f"/friend/set/{author.id}", headers=reader.auth)
    posted = [client.post("/post/create", json={"text": f"n{i}"}, headers=author.auth).json() for i in range(25)]
    newest_first = posted[::-1]
    eventually(lambda: _ids(client, reader, limit=1) == newest_first[:1])
    pages = [_ids(client, reader, offset=offset, limit=10) for offset in (0, 10, 20)]
    assert functools.reduce(operator.iadd, pages, []) == newest_first
    assert _ids(client, reader, offset=30, limit=10) == []


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1001"}, {"offset": "-1"}, {"limit": "ten"}, {"before": "x"}]
)
def test_feed_bad_params(client: httpx.Client, make_user: Callable[..., User], params: dict[str, str]) -> None:
    user = make_user()
    response = client.get("/post/feed", params=params, headers=user.auth)
    assert response.status_code == 400
    assert response.json()["message"]
