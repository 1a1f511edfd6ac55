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


async def test_authenticate_needs_an_existing_subject_and_remembers_the_answer() -> None:
    existing = {7}
    asked: list[int] = []

    async def user_exists(user_id: int) -> bool:
        asked.append(user_id)
        return user_id in existing

    tokens = TokenService(SECRET, ttl_seconds=60, user_exists=user_exists)
    good, ghost = tokens.issue(7), tokens.issue(999)
    assert (await tokens.authenticate(good))[0] == 7
    assert (await tokens.authenticate(good))[0] == 7
    assert (await tokens.authenticate(tokens.issue(7, ttl_seconds=90)))[0] == 7  # a fresh token of the same user
    assert asked == [7]  # confirmed once per user
    for _ in range(3):
        with pytest.raises(Unauthorized, match="token subject is not a user"):
            await tokens.authenticate(ghost)
    assert asked == [7, 999]  # the refusal is remembered (SUBJECT_ABSENT_SECONDS)
    with pytest.raises(Unauthorized, match="token subject is not a user"):
        await tokens.authenticate(tokens.issue(999, ttl_seconds=120))  # another token, same subject
    assert asked == [7, 999]
    tokens._subjects[999] = (False, 0.0)  # (the brief refusal lapsed) and the user now exists
    existing.add(999)
    assert (await tokens.authenticate(ghost))[0] == 999
    with pytest.raises(Unauthorized, match="invalid token"):
        await tokens.authenticate(TokenService("x" * 40, ttl_seconds=60).issue(7))  # signature first
