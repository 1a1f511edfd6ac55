"""WebSocket connection counts per user and per client address, shared by every worker and pod.

``sn:conn:user:{id}`` and ``sn:conn:addr:{address}`` are hashes: field = a worker incarnation (a
random id each worker draws at start), value = how many of that subject's sockets it holds. A
handshake asks one script to sum the fields and, below the limit, to count itself in; a closed
socket takes itself out again, in batches. A worker that dies without doing so stops refreshing
``sn:conn:alive:{incarnation}`` and its fields are ignored (and removed) once that key expires,
so a crash does not lock its users out for longer than ``ALIVE_TTL_SECONDS``. A new incarnation
per start means a worker restarted under the same name never inherits its predecessor's counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass

from sn.storage.redis_mux import MuxRedis

log = logging.getLogger("sn.realtime.connlimits")

USER_PREFIX = "sn:conn:user:"
ADDRESS_PREFIX = "sn:conn:addr:"
ALIVE_PREFIX = "sn:conn:alive:"
ALIVE_TTL_SECONDS = 30
ALIVE_REFRESH_SECONDS = 10.0
# A subject's hash lives this long after its last handshake: the counts of sockets that outlive it
# are lost (the limit then undercounts them, it never locks anyone out).
SUBJECT_TTL_SECONDS = 86_400
# Addresses come from the TCP peer or a trusted proxy's header: bounded all the same in key names.
MAX_ADDRESS_CHARS = 64

# KEYS: [1] the user's hash, [2] the address's hash; ARGV: [1] incarnation, [2] alive-key prefix,
# [3] user limit, [4] address limit (0: not counted), [5] hash TTL.
# -> {0, 0} counted in; {1, n} the user holds n >= limit; {2, n} the address does.
_ACQUIRE = """
local function live_count(key)
  local total = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local field = fields[i]
    if field == ARGV[1] or redis.call('EXISTS', ARGV[2] .. field) == 1 then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', key, field)
    end
  end
  return total
end
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 2 do
  if limits[i] > 0 then
    local held = live_count(KEYS[i])
    if held >= limits[i] then return {i, held} end
  end
end
for i = 1, 2 do
  if limits[i] > 0 then
    redis.call('HINCRBY', KEYS[i], ARGV[1], 1)
    redis.call('EXPIRE', KEYS[i], ARGV[5])
  end
end
return {0, 0}
"""

# KEYS: the hashes of closed sockets (a key once per socket); ARGV[1]: incarnation.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('HINCRBY', key, ARGV[1], -1) <= 0 then redis.call('HDEL', key, ARGV[1]) end
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    subject: str  # "user" or "address"
    held: int
    limit: int


@dataclass(frozen=True, slots=True)
class Slot:
    """What one accepted socket counted itself into: given back by `ConnectionLimits.release`."""

    keys: tuple[str, ...]


class ConnectionLimits:
    RELEASE_CHUNK = 200

    def __init__(self, redis: MuxRedis, *, per_user: int, per_address: int) -> None:
        self._redis = redis
        self.per_user = per_user
        self.per_address = per_address
        self.incarnation = secrets.token_hex(8)
        self._alive_key = ALIVE_PREFIX + self.incarnation
        self._acquire = redis.script(_ACQUIRE)
        self._release = redis.script(_RELEASE)
        self._pending: list[str] = []
        self._flushing: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.per_user > 0 or self.per_address > 0

    async def acquire(self, user_id: int, address: str) -> Slot | Refusal:
        if not self.enabled:
            return Slot(())
        user_key = f"{USER_PREFIX}{user_id}"
        address_key = ADDRESS_PREFIX + address[:MAX_ADDRESS_CHARS]
        verdict, held = await self._acquire(
            keys=[user_key, address_key],
            args=[
                self.incarnation,
                ALIVE_PREFIX,
                self.per_user,
                self.per_address,
                SUBJECT_TTL_SECONDS,
            ],
        )
        if int(verdict) == 1:
            return Refusal("user", int(held), self.per_user)
        if int(verdict) == 2:
            return Refusal("address", int(held), self.per_address)
        counted = ((user_key,) if self.per_user > 0 else ()) + ((address_key,) if self.per_address > 0 else ())
        return Slot(counted)

    def release(self, slot: Slot) -> None:
        """A counted socket closed (called from ``connection_lost``, so without waiting): its
        counts go back in the next batch."""
        if not slot.keys:
            return
        self._pending.extend(slot.keys)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush(), name="conn-limits-release")

    async def _flush(self) -> None:
        delay = 0.5
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.RELEASE_CHUNK], self._pending[self.RELEASE_CHUNK :]
                try:
                    await self._release(keys=batch, args=[self.incarnation])
                    delay = 0.5
                except (ConnectionError, OSError, TimeoutError) as exc:
                    # Kept, and tried again: a count never given back would hold a slot until the
                    # subject's key expires.
                    self._pending[:0] = batch
                    log.warning("could not release %d connection counts (%r); retrying", len(batch), exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        finally:
            self._flushing = None

    async def heartbeat(self) -> None:
        """Keep this incarnation's counts alive (a supervised loop of the worker)."""
        if not self.enabled:
            await asyncio.Event().wait()  # (nothing to keep alive; a loop that ends reads as stopped)
        while True:
            await self._redis.execute("SET", self._alive_key, 1, "EX", ALIVE_TTL_SECONDS)
            await asyncio.sleep(ALIVE_REFRESH_SECONDS)

    async def close(self) -> None:
        """The worker stops: what is still pending goes back, and the other workers stop counting
        this incarnation at once (its alive key goes)."""
        flushing = self._flushing
        if flushing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(flushing), 2.0)
        if self.enabled:
            await self._redis.execute("DEL", self._alive_key)
