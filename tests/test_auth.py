from __future__ import annotations

import time

import pytest

from sn.auth import TokenService
from sn.errors import Unauthorized

SECRET = "s" * 40


def test_verified_tokens_are_cached_but_still_expire() -> None:
    tokens = TokenService(SECRET, ttl_seconds=1)
    token = tokens.issue(42)
    assert tokens.verify(token)[0] == 42
    assert tokens.verify(token)[0] == 42  # served from the per-worker cache
    time.sleep(2.1)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)


def test_cache_is_bounded_and_never_holds_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TokenService, "CACHE_SIZE", 3)
    tokens = TokenService(SECRET, ttl_seconds=60)
    for user in range(1, 6):
        tokens.verify(tokens.issue(user, ttl_seconds=60 + user))
    assert len(tokens._verified) == 3
    forged = TokenService("x" * 40, ttl_seconds=60).issue(1)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            tokens.verify(forged)
    assert forged not in tokens._verified
