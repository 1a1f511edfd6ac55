"""The per-worker hub: this worker's sockets by user, its presence heartbeats and its stats.

One hub per worker process (Zulip's per-process event queue, with a presence map in Redis).
The router delivers into it; /stats reads what every worker's hub publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from sn.metrics import metrics
from sn.protocol.connection import State
from sn.protocol.encoding import PayloadCache
from sn.protocol.messages import Event, event_from_json
from sn.protocol.resync import Resync
from sn.realtime.eventlog import EventLog
from sn.realtime.presence import Presence
from sn.realtime.rebalance import CLOSE_REBALANCE, REBALANCE_REASON, RebalancePolicy, Rebalancer
from sn.realtime.socket import SocketActor
from sn.realtime.stats import WorkerStats, cluster_stats, publish, withdraw

log = logging.getLogger("sn.realtime.hub")

STATS_INTERVAL_SECONDS = 1.0
DISTINCT_USERS_INTERVAL_SECONDS = 10.0
KEEPALIVE_SWEEP_SECONDS = 1.0
KEEPALIVE_SLICE = 500
# Presence is refreshed a slice at a time, every tick, so that every user is refreshed once per
# ttl/3: all of a worker's users at once (10k users, ~90 ms of Redis time in a burst) delayed
# every command of every worker queued behind it, and showed up as a spike in delivery latency.
PRESENCE_TICK_SECONDS = 0.5


class Hub:
    def __init__(
        self,
        redis: Redis,
        presence: Presence,
        eventlog: EventLog,
        *,
        node_id: str,
        worker_name: str,
        followed_among: Callable[[int, set[int]], Coroutine[Any, Any, set[int]]],
        replay_limit: int = 100,
        rebalance: RebalancePolicy | None = None,
    ) -> None:
        self._redis = redis
        self._presence = presence
        self._eventlog = eventlog
        self._followed_among = followed_among
        self._replay_limit = replay_limit
        self.node_id = node_id
        self.worker_name = worker_name
        self.stream_key = f"sn:rt:stream:{node_id}:{worker_name}"
        # A list, not a set: most users hold one socket, and a one-element list is a quarter
        # of the memory of a one-element set (10k sockets, 10k of these).
        self._by_user: dict[int, list[SocketActor]] = {}
        self.connections = 0
        self.accepted = 0
        self.delivered = 0
        self._delivered_counted = 0
        self.slow_consumer_closes = 0
        self.started_at = time.time()
        self._rebalancer = None if rebalance is None else Rebalancer(rebalance, time.monotonic())
        self._handing_back: set[SocketActor] = set()  # closed by a rebalance round, not gone yet
        self.rebalance_closes = 0
        # The highest event id the router handed to this worker: a Redis whose counter is below it
        # lost events (see sn.realtime.recovery).
        self.max_event_id = 0
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        self._pending_presence: set[int] = set()
        self._pending_leaves: set[int] = set()
        # Settled when the pending batch is stored, for handshakes waiting on their announcement;
        # then the same for the batch being stored right now.
        self._pending_stored: asyncio.Future[None] | None = None
        self._storing: set[int] = set()
        self._storing_done: asyncio.Future[None] | None = None
        # Cluster-wide counts as of the last heartbeat, for a connection's get_stats reply
        # (the state machine asks synchronously, so this cannot be a Redis call).
        self.cluster: dict[str, Any] = {}
        self._distinct_users = 0
        self._distinct_users_due = 0.0
        self._presence_dirty = asyncio.Event()
        # This refresh cycle: a snapshot of the users, how far the slices have got, when it began.
        self._refresh_cycle: list[int] = []
        self._refresh_position = 0
        self._refresh_cycle_started = 0.0
        self._emptied: asyncio.Event | None = None  # set up by wait_closed (shutdown only)

    # -- connections -----------------------------------------------------------------------

    def add(self, actor: SocketActor) -> None:
        sockets = self._by_user.setdefault(actor.user_id, [])
        sockets.append(actor)
        self.connections += 1
        self.accepted += 1
        metrics().connections.inc()
        if len(sockets) == 1:
            # Announce promptly (a post a moment later must find this user); batched with
            # other new arrivals so a reconnect storm costs few Redis calls.
            self._pending_leaves.discard(actor.user_id)  # (back before their departure was written)
            self._pending_presence.add(actor.user_id)
            self._presence_dirty.set()

    def remove(self, actor: SocketActor) -> None:
        sockets = self._by_user.get(actor.user_id)
        if sockets is None or actor not in sockets:
            return
        sockets.remove(actor)
        self._handing_back.discard(actor)
        self.connections -= 1
        metrics().connections.dec()
        if not self.connections and self._emptied is not None:
            self._emptied.set()
        if not sockets:
            del self._by_user[actor.user_id]
            self._pending_presence.discard(actor.user_id)
            # Written by the presence loop in batches, like arrivals: a storm's departures cost a
            # few calls rather than a task and a call each. Arrivals and departures are written by
            # that one loop in turn, so a user who leaves and comes back is never left absent.
            self._pending_leaves.add(actor.user_id)
            self._presence_dirty.set()

    async def announce(self, user_id: int) -> None:
        """Wait until this user's presence is stored (a user already present returns at once).

        Handshakes do not each call Redis: they join the presence loop's next batch, so a
        reconnect storm of thousands of sockets costs a few calls, not one per socket.
        """
        if user_id in self._pending_presence:
            if self._pending_stored is None:
                self._pending_stored = _settled_future()
                self._presence_dirty.set()
            await asyncio.shield(self._pending_stored)
        elif user_id in self._storing and self._storing_done is not None:
            await asyncio.shield(self._storing_done)

    def count_delivered(self, frames: int) -> None:
        self.delivered += frames  # the Prometheus counter follows once a second

    def slow_consumer_closed(self) -> None:
        self.slow_consumer_closes += 1
        metrics().slow_consumer_closes.inc()

    @property
    def users(self) -> int:
        return len(self._by_user)

    def all_sockets(self) -> list[SocketActor]:
        return [actor for sockets in self._by_user.values() for actor in sockets]

    # -- delivery ----------------------------------------------------------------------------

    def deliver(self, event: Event, recipients: Sequence[int], payloads: PayloadCache) -> int:
        count = 0
        for user_id in recipients:
            # No copy: a delivery never removes a socket synchronously (only connection_lost does).
            for actor in self._by_user.get(user_id, ()):
                actor.deliver(event, payloads)
                count += 1
        return count

    async def missed_events(self, user_id: int, since: int) -> list[Event] | Resync:
        async def authors(candidates: set[int]) -> set[int]:
            return await self._followed_among(user_id, candidates)

        replay = await self._eventlog.replay(since, authors, limit=self._replay_limit, user_id=user_id)
        if replay.gap:
            return Resync(since, replay.oldest_available)
        seen: set[tuple[str, str]] = set()
        events: list[Event] = []
        for event_id, body in replay.events:
            event = msgspec.structs.replace(event_from_json(body), event_id=event_id)
            # A celebrity post is logged once per notification batch: replay it once.
            key = (event.type, event.post_id)
            if key not in seen:
                seen.add(key)
                events.append(event)
        return events

    async def reregister(self) -> None:
        """Write every user this worker holds again (Redis lost them): presence, online set, the
        registry of streams; then the stats."""
        users = list(self._by_user)
        for start in range(0, len(users), 1000):
            # Users who left since the snapshot are left out (their departure may be written already).
            chunk = [user for user in users[start : start + 1000] if user in self._by_user]
            await self._presence.refresh(chunk, self.stream_key)
        await self.publish_stats()

    def resync_all(self, message: str) -> int:
        """Tell every open socket to refetch its feed (what was logged for it is gone)."""
        sockets = self.all_sockets()
        for actor in sockets:
            actor.resync(message)
        return len(sockets)

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every socket of this worker is gone (closing handshakes done); False on timeout."""
        if self.connections:
            self._emptied = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout)
        return not self.connections

    # -- keepalive ---------------------------------------------------------------------------

    async def keepalive_loop(self, interval: float, timeout: float) -> None:
        """One sweep a second over this worker's sockets instead of a sleeping task per socket.

        Each socket is pinged once it has been quiet for ``interval`` and dropped if nothing
        comes back within ``timeout``. Sockets that connected together fall due together, and
        their pongs would then arrive together and hold the loop: each sweep pings at most its
        share of the sockets (all of them over half an interval), and yields between slices.
        """
        while True:
            await asyncio.sleep(KEEPALIVE_SWEEP_SECONDS)
            sockets = self.all_sockets()
            budget = max(KEEPALIVE_SLICE, math.ceil(len(sockets) * KEEPALIVE_SWEEP_SECONDS / (interval / 2)))
            for start in range(0, len(sockets), KEEPALIVE_SLICE):
                now = time.monotonic()
                for actor in sockets[start : start + KEEPALIVE_SLICE]:
                    if actor.keepalive(now, interval, timeout, may_ping=budget > 0):
                        budget -= 1
                await asyncio.sleep(0)

    # -- heartbeats --------------------------------------------------------------------------

    async def presence_loop(self) -> None:
        """New users are announced at once; everyone is refreshed once per ttl/3, a slice every
        tick; stats every second."""
        next_tick = next_stats = time.monotonic()
        while True:
            timeout = max(0.0, min(next_tick, next_stats) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._presence_dirty.wait(), timeout=timeout)
            self._presence_dirty.clear()
            now = time.monotonic()
            if self._pending_leaves:
                await self._store_leaves()
            if self._pending_presence or self._pending_stored is not None:  # (waiters whose users left)
                await self._store_presence([u for u in self._pending_presence if u in self._by_user])
            if now >= next_tick:
                users, position = self._next_refresh_slice(now)
                await self._presence.refresh(users, self.stream_key)
                self._refresh_position = position  # (a failed slice is tried again)
                next_tick = now + PRESENCE_TICK_SECONDS
            if now >= next_stats:
                # Counted here, not per frame: a multiprocess Prometheus counter is an mmap write.
                metrics().messages_delivered.inc(self.delivered - self._delivered_counted)
                self._delivered_counted = self.delivered
                await self.publish_stats()
                next_stats = now + STATS_INTERVAL_SECONDS

    def _next_refresh_slice(self, now: float) -> tuple[list[int], int]:
        """The users to refresh this tick and where the cycle will stand after them.

        A cycle refreshes a snapshot of the users taken when it begins, in slices sized by the
        time left until ttl/3 after its start: slow turns (a storm's) make slices bigger, never the
        cycle longer, so an entry written at most two cycles ago has not expired (ttl = 3 cycles).
        Users who left since the snapshot are skipped.
        """
        period = self._presence.ttl / 3
        if self._refresh_position >= len(self._refresh_cycle):
            self._refresh_cycle, self._refresh_position = list(self._by_user), 0
            self._refresh_cycle_started = now
        remaining = len(self._refresh_cycle) - self._refresh_position
        ticks_left = math.floor((self._refresh_cycle_started + period - now) / PRESENCE_TICK_SECONDS)
        size = remaining if ticks_left <= 1 else math.ceil(remaining / ticks_left)
        start, end = self._refresh_position, self._refresh_position + size
        return [user for user in self._refresh_cycle[start:end] if user in self._by_user], end

    async def _store_leaves(self) -> None:
        leaving, self._pending_leaves = self._pending_leaves, set()
        try:
            await self._presence.leave(leaving, self.stream_key)
        except BaseException:
            # Still to be written (unless they came back meanwhile): the restarted loop retries.
            self._pending_leaves |= {user for user in leaving if user not in self._by_user}
            raise

    async def _store_presence(self, users: list[int]) -> None:
        """Store presence for ``users``; whoever announced a pending user learns how it went."""
        self._storing, self._pending_presence = self._pending_presence, set()
        self._storing_done, self._pending_stored = self._pending_stored, None
        done = self._storing_done
        try:
            await self._presence.refresh(users, self.stream_key)
        except BaseException as exc:
            # Still to be stored: the restarted loop tries them again.
            self._pending_presence |= {user for user in self._storing if user in self._by_user}
            if done is not None and not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else ConnectionError("presence update cancelled"))
            raise
        else:
            if done is not None and not done.done():
                done.set_result(None)
        finally:
            self._storing, self._storing_done = set(), None

    def stats(self) -> WorkerStats:
        return WorkerStats(
            worker=self.stream_key,
            node=self.node_id,
            pid=os.getpid(),
            connections=self.connections,
            users=self.users,
            delivered=self.delivered,
            slow_consumer_closes=self.slow_consumer_closes,
            accepted=self.accepted,
            updated_at=time.time(),
            extra=self.extra_stats(),
            started_at=self.started_at,
            rebalance_closes=self.rebalance_closes,
        )

    async def publish_stats(self) -> None:
        await publish(self._redis, self.stats())
        workers = await cluster_stats(self._redis)
        self.rebalance(workers)
        now = time.monotonic()
        if now >= self._distinct_users_due:
            # Distinct users (one with tabs on two workers once), recounted every few heartbeats:
            # the count pages through every online set, too much for each worker every second.
            self._distinct_users = await self._presence.count_online(await self._presence.streams())
            self._distinct_users_due = now + DISTINCT_USERS_INTERVAL_SECONDS
        self.cluster = {
            "total_connections": sum(w.connections for w in workers),
            "active_users": self._distinct_users,
            "workers": len(workers),
        }

    # -- rebalancing -------------------------------------------------------------------------

    def rebalance(self, workers: Sequence[WorkerStats]) -> int:
        """One round (each stats heartbeat): hand back what the `Rebalancer` decides, oldest sockets first.

        A user who reconnected to this worker went to the end of the hub's order, so the sockets
        that just came back are the last to be handed back again. Returns how many were closed.
        """
        if self._rebalancer is None:
            return 0
        staying = self.connections - len(self._handing_back)  # the closing ones are leaving already
        counts = [
            msgspec.structs.replace(w, connections=staying) if w.worker == self.stream_key else w for w in workers
        ]
        wanted = self._rebalancer.decide(self.stream_key, counts, now=time.monotonic(), wall=time.time())
        picked: list[SocketActor] = []
        for sockets in self._by_user.values():
            if len(picked) >= wanted:
                break
            picked.extend(a for a in sockets if a.state.state is State.OPEN and a not in self._handing_back)
        picked = picked[:wanted]
        for actor in picked:
            self._handing_back.add(actor)
            actor.shutdown(CLOSE_REBALANCE, REBALANCE_REASON)
        closed = len(picked)
        if closed:
            self.rebalance_closes += closed
            metrics().rebalance_closes.inc(closed)
            log.info("handed %d socket(s) back to the balancer (%d here, %d workers)", closed, staying, len(counts))
        return closed

    async def withdraw(self) -> None:
        """Leave the cluster (the worker is stopping): every user it still lists (departures not
        yet written, sockets that outlived the shutdown's wait), then its stats. Its online set,
        emptied by those departures, is gone with them. (Not deleted outright: a replacement
        started under the same name may already be filling it.)"""
        try:
            self._pending_leaves |= set(self._by_user)
            if self._pending_leaves:
                await self._store_leaves()
        finally:
            await withdraw(self._redis, self.stream_key)


def _settled_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Handshakes that gave up (their client left) do not await it: a failure is not "never retrieved".
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future
