from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.support import User


def _token(sub: str, *, secret: str = JWT_SECRET, exp_delta: int = 3600, **extra: object) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + exp_delta, **extra}, secret, algorithm="HS256")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer garbage",
        "Bearer " + _token("1", secret="some-other-secret-which-is-long-enough-for-hs256"),
        "Bearer " + _token("1", exp_delta=-10),
        "Bearer " + _token("not-a-number"),
        "Bearer " + jwt.encode({"sub": "1"}, JWT_SECRET, algorithm="HS256"),  # no exp/iat
    ],
)
def test_protected_endpoints_refuse_bad_tokens(client: httpx.Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in (("GET", "/post/feed"), ("POST", "/post/create"), ("PUT", "/friend/set/1")):
        response = client.request(method, path, headers=headers, json={"text": "x"})
        assert response.status_code == 401, (method, path, header, response.text)
        assert response.json()["message"]


def test_expired_token_message(client: httpx.Client) -> None:
    response = client.get("/post/feed", headers={"Authorization": "Bearer " + _token("1", exp_delta=-10)})
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def test_alg_none_is_refused(client: httpx.Client, make_user: Callable[..., User]) -> None:
    user = make_user()
    unsigned = jwt.encode({"sub": user.id, "iat": 1, "exp": 2**40}, key="", algorithm="none")
    response = client.get("/post/feed", headers={"Authorization": f"Bearer {unsigned}"})
    assert response.status_code == 401
