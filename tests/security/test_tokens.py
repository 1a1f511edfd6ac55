"""JWT attacks and authorization, against the session server over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from collections.abc import Callable

import asyncpg
import httpx
import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.support import ServerProcess, User, admin_token

UNKNOWN = "999"


def _token(sub: str, *, secret: str = JWT_SECRET, exp_delta: int = 3600, **extra: object) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + exp_delta, **extra}, secret, algorithm="HS256")


def _tampered(token: str, **changes: object) -> str:
    """The same signature over a payload with ``changes``: what a client editing its token sends."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


def _upgrade_status(server: ServerProcess, path: str) -> int:
    async def attempt() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return int(line.split()[1])

    return asyncio.run(attempt())


def _hs512(subject: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (PyJWT warns that the test secret is short for SHA-512)
        return jwt.encode({"sub": subject, "iat": int(time.time()), "exp": 2**40}, JWT_SECRET, algorithm="HS512")


def _attacks(user: User) -> dict[str, str]:
    return {
        "alg none": jwt.encode({"sub": user.id, "iat": 1, "exp": 2**40}, key="", algorithm="none"),
        "wrong key": _token(user.id, secret="another-secret-that-is-long-enough-for-hs256"),
        "tampered subject": _tampered(user.token, sub=UNKNOWN),
        "tampered expiry": _tampered(_token(user.id, exp_delta=-60), exp=2**40),
        "expired": _token(user.id, exp_delta=-10),
        "unknown subject": _token(UNKNOWN),
        "unknown snowflake subject": _token("384954579525046272"),
        "truncated": user.token[:-5],
        "HS512 with the right key": _hs512(user.id),
        "kid/jku headers": jwt.encode(
            {"sub": user.id, "iat": int(time.time()), "exp": 2**40},
            "attacker-key-attacker-key-attacker-key",
            algorithm="HS256",
            headers={"kid": "../../../../dev/null", "jku": "https://evil.example/jwks.json"},
        ),
        "no subject": jwt.encode({"iat": int(time.time()), "exp": 2**40}, JWT_SECRET, algorithm="HS256"),
    }


def test_jwt_attacks_get_401_everywhere(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User], database_url: str
) -> None:
    user, other = make_user(), make_user()
    for name, token in _attacks(user).items():
        auth = {"Authorization": f"Bearer {token}"}
        for method, path, body in (
            ("GET", "/post/feed", None),
            ("POST", "/post/create", {"text": f"by {name}"}),
            ("PUT", f"/friend/set/{other.id}", None),
            ("POST", f"/dialog/{other.id}/send", {"text": f"by {name}"}),
            ("GET", f"/dialog/{other.id}/list", None),
            ("GET", f"/user/get/{other.id}", None),  # optional auth: a token sent must be valid
        ):
            response = client.request(method, path, headers=auth, json=body)
            assert response.status_code == 401, (name, method, path, response.text)
            assert response.json()["message"], (name, path)
        assert _upgrade_status(server, f"/post/feed/posted?token={token}") == 401, name
        assert _upgrade_status(server, f"/ws/{user.id}?token={token}") == 401, name
    # The real token still works, and nothing was written by any of the forged ones.
    assert client.get("/post/feed", headers=user.auth).status_code == 200

    async def orphans() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            posts = await conn.fetchval("SELECT count(*) FROM posts WHERE text LIKE 'by %'")
            dialogs = await conn.fetchval("SELECT count(*) FROM dialog_messages WHERE text LIKE 'by %'")
            return int(posts) + int(dialogs)
        finally:
            await conn.close()

    assert asyncio.run(orphans()) == 0


def test_unknown_subject_message_and_expired_message(client: httpx.Client) -> None:
    response = client.get("/post/feed", headers={"Authorization": f"Bearer {_token(UNKNOWN)}"})
    assert response.json() == {"message": "token subject is not a user"}
    # Asked again (the refusal is remembered briefly): the same answer.
    again = client.get("/post/feed", headers={"Authorization": f"Bearer {_token(UNKNOWN)}"})
    assert again.status_code == 401
    assert again.json() == {"message": "token subject is not a user"}
    expired = client.get("/post/feed", headers={"Authorization": f"Bearer {_token(UNKNOWN, exp_delta=-5)}"})
    assert expired.json() == {"message": "token expired"}


def test_a_stale_token_does_not_break_a_route_without_auth(
    client: httpx.Client, make_user: Callable[..., User]
) -> None:
    user = make_user()
    stale = {"Authorization": f"Bearer {_token(user.id, exp_delta=-10)}"}
    login = client.post("/login", headers=stale, json={"id": user.id, "password": "correct horse"})
    assert login.status_code == 200


def test_another_users_post_dialog_and_socket(
    server: ServerProcess, client: httpx.Client, make_user: Callable[..., User]
) -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    post_id = client.post("/post/create", headers=alice.auth, json={"text": "alice's"}).json()
    for method, path, body in (
        ("PUT", "/post/update", {"id": post_id, "text": "hijacked"}),
        ("PUT", f"/post/delete/{post_id}", None),
    ):
        response = client.request(method, path, headers=mallory.auth, json=body)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["message"] == "only the author may change this post"
    assert client.get(f"/post/get/{post_id}").json()["text"] == "alice's"
    assert client.post(f"/dialog/{bob.id}/send", headers=alice.auth, json={"text": "private"}).status_code == 200
    for peer in (alice, bob):
        seen = client.get(f"/dialog/{peer.id}/list", headers=mallory.auth)
        assert seen.status_code == 200
        assert seen.json() == []  # mallory's own dialog with them: empty, never alice-bob
    assert _upgrade_status(server, f"/ws/{alice.id}?token={mallory.token}") == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/celebrity-settings", {"batch_size": 100}),
        ("POST", "/test-post", {"post_id": "1", "author_user_id": "1", "post_text": "x"}),
        ("GET", "/admin/cluster/status", None),
    ],
)
def test_admin_endpoints(
    client: httpx.Client, make_user: Callable[..., User], method: str, path: str, body: object
) -> None:
    user, admin = make_user(), make_user()
    if path == "/test-post":  # its author must exist (404 otherwise)
        assert isinstance(body, dict)
        body = {**body, "author_user_id": admin.id}
    cases = {
        "no token": ({}, 401),
        "normal token": (user.auth, 403),
        "expired admin token": ({"Authorization": f"Bearer {admin_token(JWT_SECRET, admin.id, ttl=-10)}"}, 401),
        "admin token of no user": ({"Authorization": f"Bearer {admin_token(JWT_SECRET, UNKNOWN)}"}, 401),
        "admin claim added by the client": ({"Authorization": f"Bearer {_tampered(user.token, admin=True)}"}, 401),
    }
    for name, (headers, status) in cases.items():
        response = client.request(method, path, headers=headers, json=body)
        assert response.status_code == status, (name, response.text)
        assert response.json()["message"], name
    valid = client.request(
        method, path, headers={"Authorization": f"Bearer {admin_token(JWT_SECRET, admin.id)}"}, json=body
    )
    assert valid.status_code == 200, valid.text
