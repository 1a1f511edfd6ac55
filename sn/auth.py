"""JWT issue/verify (HS256) and argon2id password hashing off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sn.errors import Unauthorized
from sn.ids import parse_id

_ALGORITHM = "HS256"


class TokenService:
    # Verified tokens, per worker: a client sends the same token on every request, and HMAC
    # verification plus claim parsing was ~9% of a cached feed read. Bounded; expiry re-checked.
    CACHE_SIZE = 10_000
    # Subjects checked against the users, per worker: user id -> (exists, until). Keyed by user,
    # not token, so a client's fresh token (a reconnect storm's) costs no lookup. A user found is
    # believed for an hour (users are never deleted through the API; the bound only limits how long
    # one removed by hand keeps working); one not found is refused for a few seconds without asking
    # again, so a client retrying such a token in a loop costs a dict lookup, not Redis and SQL.
    SUBJECTS_SIZE = 100_000
    SUBJECT_CONFIRMED_SECONDS = 3600.0
    SUBJECT_ABSENT_SECONDS = 5.0

    def __init__(
        self,
        secret: str,
        ttl_seconds: int,
        *,
        user_exists: Callable[[int], Awaitable[bool]] | None = None,
    ) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._verified: OrderedDict[str, tuple[int, dict[str, object], float]] = OrderedDict()
        self._user_exists = user_exists
        self._subjects: dict[int, tuple[bool, float]] = {}  # (insertion order: oldest evicted first)

    def bind_subjects(self, user_exists: Callable[[int], Awaitable[bool]]) -> None:
        """From now on `authenticate` accepts only tokens whose subject ``user_exists``."""
        self._user_exists = user_exists

    async def authenticate(self, token: str) -> tuple[int, dict[str, object]]:
        """`verify`, and the subject must be an existing user: a correctly signed token of a user
        that does not exist (a database reset under the same secret, a hand-made token) would
        otherwise read empty feeds and write rows of a nonexistent author."""
        user_id, claims = self.verify(token)
        if self._user_exists is None:
            return user_id, claims
        now = time.monotonic()
        known = self._subjects.get(user_id)
        if known is None or known[1] <= now:
            exists = await self._user_exists(user_id)
            known = (exists, now + (self.SUBJECT_CONFIRMED_SECONDS if exists else self.SUBJECT_ABSENT_SECONDS))
            self._subjects.pop(user_id, None)
            self._subjects[user_id] = known
            if len(self._subjects) > self.SUBJECTS_SIZE:
                del self._subjects[next(iter(self._subjects))]
        if not known[0]:
            raise Unauthorized("token subject is not a user")
        return user_id, claims

    def issue(self, user_id: int, *, admin: bool = False, ttl_seconds: int | None = None) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"sub": str(user_id), "iat": now, "exp": now + (ttl_seconds or self._ttl)}
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> tuple[int, dict[str, object]]:
        """The user id and claims of a valid token; Unauthorized with the reason otherwise."""
        hit = self._verified.get(token)
        if hit is not None:
            if hit[2] > time.time():
                return hit[0], hit[1]
            del self._verified[token]
        user_id, claims = self._verify(token)
        self._verified[token] = (user_id, claims, float(claims["exp"]))  # type: ignore[arg-type]
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return user_id, claims

    def _verify(self, token: str) -> tuple[int, dict[str, object]]:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[_ALGORITHM], options={"require": ["sub", "exp", "iat"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid token") from exc
        subject = claims.get("sub")
        user_id = parse_id(subject) if isinstance(subject, str) else None
        if user_id is None:
            raise Unauthorized("invalid token subject")
        return user_id, claims


class PasswordService:
    """argon2id hashing in a small thread pool.

    Hashing costs tens of milliseconds of CPU and 64 MiB by default: on the event loop it would
    stall every other request, and unbounded it would let a burst of logins exhaust memory.
    argon2-cffi releases the GIL, so threads give real parallelism; the pool size bounds it.
    """

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int, concurrency: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hasher.hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def verify(self, password_hash: str, password: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._verify, password_hash, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
