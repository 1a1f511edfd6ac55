"""The feed cache seen through the API: misses rebuild, and each write touches what it should."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis

from sn.storage.feed_cache import feed_key
from tests.support import User, eventually


def _feed(client: httpx.Client, user: User) -> list[str]:
    response = client.get("/post/feed", params={"limit": 100}, headers=user.auth)
    assert response.status_code == 200
    return [p["id"] for p in response.json()]


def _cached_members(redis_client: redis.Redis, user: User) -> set[str]:
    return {m.decode().split(":")[0].lstrip("0") for m in redis_client.zrange(feed_key(int(user.id)), 0, -1)} - {""}


def test_miss_rebuilds_from_database(
    client: httpx.Client, make_user: Callable[..., User], redis_client: redis.Redis
) -> None:
    reader, author = make_user(), make_user()
    client.put(f"/friend/set/{author.id}", headers=reader.auth)
    posts = [client.post("/post/create", json={"text": str(i)}, headers=author.auth).json() for i in range(3)]
    eventually(lambda: posts[-1] in _cached_members(redis_client, reader))  # the pipeline warmed it
    redis_client.delete(feed_key(int(reader.id)))
    assert _feed(client, reader) == posts[::-1]
    assert _cached_members(redis_client, reader) >= set(posts)
    for pattern in ("sn:feed:*", "sn:post:*", "sn:following:*", "sn:followers:*", "sn:authorposts:*"):
        for key in redis_client.scan_iter(pattern):  # every cache gone: the database alone answers
            redis_client.delete(key)
    assert _feed(client, reader) == posts[::-1]


def test_create_pushes_into_existing_feeds_only(
    client: httpx.Client, make_user: Callable[..., User], redis_client: redis.Redis
) -> None:
    author, active, idle = make_user(), make_user(), make_user()
    for reader in (active, idle):
        client.put(f"/friend/set/{author.id}", headers=reader.auth)
    _feed(client, active)  # builds active's cached feed
    eventually(lambda: redis_client.exists(feed_key(int(idle.id))))  # the follow's warm-up rebuild ran
    redis_client.delete(feed_key(int(idle.id)))  # as if idle's feed had expired
    post = client.post("/post/create", json={"text": "fresh"}, headers=author.auth).json()
    eventually(lambda: post in _cached_members(redis_client, active))
    assert not redis_client.exists(feed_key(int(idle.id)))  # not materialised for a non-reader
    assert _feed(client, idle) == [post]


def test_update_changes_body_not_membership(
    client: httpx.Client, make_user: Callable[..., User], redis_client: redis.Redis
) -> None:
    author, reader = make_user(), make_user()
    client.put(f"/friend/set/{author.id}", headers=reader.auth)
    post = client.post("/post/create", json={"text": "before"}, headers=author.auth).json()
    eventually(lambda: [p["text"] for p in client.get("/post/feed", headers=reader.auth).json()] == ["before"])
    members = _cached_members(redis_client, reader)
    client.put("/post/update", json={"id": post, "text": "after"}, headers=author.auth)
    assert [p["text"] for p in client.get("/post/feed", headers=reader.auth).json()] == ["after"]
    assert _cached_members(redis_client, reader) == members


def test_delete_removes_from_feeds(
    client: httpx.Client, make_user: Callable[..., User], redis_client: redis.Redis
) -> None:
    author, reader = make_user(), make_user()
    client.put(f"/friend/set/{author.id}", headers=reader.auth)
    keep = client.post("/post/create", json={"text": "keep"}, headers=author.auth).json()
    drop = client.post("/post/create", json={"text": "drop"}, headers=author.auth).json()
    eventually(lambda: _feed(client, reader) == [drop, keep])
    client.put(f"/post/delete/{drop}", headers=author.auth)
    eventually(lambda: drop not in _cached_members(redis_client, reader))
    assert _feed(client, reader) == [keep]


def test_follow_and_unfollow_invalidate_only_the_follower(
    client: httpx.Client, make_user: Callable[..., User], redis_client: redis.Redis
) -> None:
    reader, bystander, a, b = make_user(), make_user(), make_user(), make_user()
    client.put(f"/friend/set/{a.id}", headers=reader.auth)
    client.put(f"/friend/set/{a.id}", headers=bystander.auth)
    post_a = client.post("/post/create", json={"text": "a"}, headers=a.auth).json()
    post_b = client.post("/post/create", json={"text": "b"}, headers=b.auth).json()
    eventually(lambda: _feed(client, reader) == [post_a])
    eventually(lambda: _feed(client, bystander) == [post_a])
    client.put(f"/friend/set/{b.id}", headers=reader.auth)
    assert redis_client.exists(feed_key(int(bystander.id)))
    assert _feed(client, reader) == [post_b, post_a]
    client.put(f"/friend/delete/{a.id}", headers=reader.auth)
    assert _feed(client, reader) == [post_b]
    assert _feed(client, bystander) == [post_a]


def test_profile_and_post_bodies_are_cached(
    client: httpx.Client, make_user: Callable[..., User], redis_client: redis.Redis
) -> None:
    user = make_user()
    client.get(f"/user/get/{user.id}")
    assert redis_client.exists(f"sn:user:v2:{user.id}")
    post = client.post("/post/create", json={"text": "cached"}, headers=user.auth).json()
    assert redis_client.exists(f"sn:post:{post}")
    client.put(f"/post/delete/{post}", headers=user.auth)
    assert not redis_client.exists(f"sn:post:{post}")
