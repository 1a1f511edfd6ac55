"""GET /user/{user_id}/posts: one user's posts, newest first, paged with `before`."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support import User, eventually


def test_a_users_posts_newest_first_with_the_before_cursor(
    client: httpx.Client, make_user: Callable[..., User]
) -> None:
    author, other = make_user(), make_user()
    ids = [client.post("/post/create", json={"text": f"post {i}"}, headers=author.auth).json() for i in range(5)]
    client.post("/post/create", json={"text": "not theirs"}, headers=other.auth)
    page = client.get(f"/user/{author.id}/posts", params={"limit": 3})
    assert page.status_code == 200
    assert [p["id"] for p in page.json()] == ids[::-1][:3]
    assert {p["author_user_id"] for p in page.json()} == {author.id}
    rest = client.get(f"/user/{author.id}/posts", params={"limit": 3, "before": ids[2]}).json()
    assert [p["id"] for p in rest] == [ids[1], ids[0]]
    # Edits and deletions show: the list is the author's current posts.
    client.put("/post/update", json={"id": ids[4], "text": "post 4, edited"}, headers=author.auth)
    client.put(f"/post/delete/{ids[3]}", headers=author.auth)

    # (the deleted post's id leaves the author's cached list through the pipeline, a moment later;
    # until then its body is already gone, so a page may come back one short, never wrong)
    def latest() -> list[tuple[str, str]]:
        page = client.get(f"/user/{author.id}/posts", params={"limit": 2}, headers=other.auth).json()
        return [(p["id"], p["text"]) for p in page]

    assert eventually(lambda: latest() == [(ids[4], "post 4, edited"), (ids[2], "post 2")])
    assert ids[3] not in {p["id"] for p in client.get(f"/user/{author.id}/posts").json()}
    assert client.get(f"/user/{other.id}/posts").json()[0]["text"] == "not theirs"
    assert client.get(f"/user/{make_user().id}/posts").json() == []


def test_bad_requests(client: httpx.Client, make_user: Callable[..., User]) -> None:
    user = make_user()
    assert client.get("/user/12345/posts").status_code == 404
    assert client.get("/user/12345/posts").json()["message"] == "user not found"
    assert client.get("/user/abc/posts").status_code == 400
    for bad in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"before": "y"}):
        response = client.get(f"/user/{user.id}/posts", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["message"]
    assert client.get(f"/user/{user.id}/posts", headers={"Authorization": "Bearer nope"}).status_code == 401
