"""The transactional outbox and its relay.

Writers call `Outbox.add` inside their own transaction. The relay (one per worker process;
several relays share the table safely through `FOR UPDATE SKIP LOCKED`, and an owner whose
earlier row another relay holds waits for it) publishes pending rows in id order and deletes them
once the bus has confirmed them. A request nudges its worker's
relay after committing, so the usual latency is one relay round trip; a periodic sweep picks up
whatever a crashed process or an unreachable bus left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeGuard

import asyncpg

from sn.ids import id_array
from sn.metrics import observe_post_stage
from sn.pipeline import events
from sn.pipeline.bus import BusUnavailable, FeedBus, Queue
from sn.pipeline.slow_log import PhaseClock, report
from sn.tasks import cancel_and_wait

log = logging.getLogger("sn.pipeline.outbox")

IdSource = Callable[[], int]
Router = Callable[[events.PipelineEvent], Awaitable[Queue]]


class _Pending(NamedTuple):
    owner_id: int
    id: int
    queue: Queue
    payload: bytes
    event: events.PipelineEvent


class Outbox:
    def __init__(self, next_id: IdSource) -> None:
        self._next_id = next_id

    async def add(self, conn: Any, event: events.PipelineEvent) -> None:
        await conn.execute(
            "INSERT INTO outbox (owner_id, id, payload) VALUES ($1, $2, $3)",
            events.owner_of(event),
            self._next_id(),
            events.encode(event),
        )


class OutboxRelay:
    BATCH = 200
    RETRY_SOON_SECONDS = 0.02

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: FeedBus,
        route: Router,
        *,
        sweep_interval: float = 1.0,
        slow_delivery_ms: float = 0.0,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._route = route
        self._sweep_interval = sweep_interval
        self._slow_delivery_ms = slow_delivery_ms
        self._wake = asyncio.Event()
        self._nudged_at: float | None = None  # the first nudge not yet answered by a drain, for the slow log
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.deferred = 0  # rows left for a later drain (an earlier row of their owner was another relay's), each time
        self._retry_soon = False
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def nudge(self) -> None:
        if self._nudged_at is None:
            self._nudged_at = time.perf_counter()
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        backoff = self._sweep_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            try:
                while await self.drain_once() == self.BATCH:
                    pass
                backoff = self._sweep_interval
                self.last_error = None
                if self._retry_soon:
                    # Rows were left behind another drain's earlier ones: come back once it has had
                    # time to publish them, not a whole sweep later (the backoff is for failures).
                    self._retry_soon = False
                    self._wake.set()
                    await asyncio.sleep(self.RETRY_SOON_SECONDS)
            except BusUnavailable as exc:
                # Rows stay in the table; retry with backoff until the bus is back.
                self.failures += 1
                self.last_error = str(exc) or "bus unavailable"
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox relay error: %s", self.last_error)
                backoff = min(backoff * 2, 5.0)

    async def drain_once(self) -> int:
        """Publish one batch; returns how many rows were published (and deleted).

        The batch's queue decisions are made concurrently, then each owner's rows are published
        in id order while different owners' go out together: a batch costs about one confirm
        round trip per row of its busiest owner, not one per row, and the events of one post or
        user (create, edit, delete; follow, unfollow) still reach the bus in order. Confirmed rows
        are deleted; an owner whose publish failed keeps that row and the ones after it, which
        the next round retries, and the failure is raised once the confirmed rows are gone (so
        a partial failure republishes nothing that the bus already confirmed).
        """
        # The slow log's phases start at the nudge this drain answers: waiting for the previous
        # drain to finish is part of a post's delay.
        clock = PhaseClock(self._nudged_at)
        self._nudged_at = None
        clock.mark("waited")
        async with self._pool.acquire() as conn:
            clock.mark("acquire")
            async with conn.transaction():
                confirmed, outcomes = await self._drain(conn, clock)
            clock.mark("commit")
        self.published += len(confirmed)
        posts = [item.event.post_id for item in confirmed if _is_new_post(item.event)]
        report("the outbox relay", posts, self._slow_delivery_ms, clock, f"; {len(confirmed)} rows")
        failures = [error for _, error in outcomes if error is not None]
        if failures:
            # BusUnavailable first: it is the expected failure, retried quietly with backoff.
            raise next((f for f in failures if isinstance(f, BusUnavailable)), failures[0])
        return len(confirmed)

    async def _drain(
        self, conn: Any, clock: PhaseClock
    ) -> tuple[list[_Pending], list[tuple[list[_Pending], Exception | None]]]:
        rows = await conn.fetch(
            "SELECT owner_id, id, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", self.BATCH
        )
        clock.mark("select")
        if not rows:
            return [], []
        rows = await self._without_earlier_rows_elsewhere(conn, rows)
        clock.mark("order")
        if not rows:
            return [], []
        payloads = [bytes(row["payload"]) for row in rows]
        decoded = [events.decode(payload) for payload in payloads]
        queues = await asyncio.gather(*map(self._route, decoded))
        clock.mark("route")
        by_owner: dict[int, list[_Pending]] = defaultdict(list)
        for row, payload, event, queue in zip(rows, payloads, decoded, queues, strict=True):
            by_owner[row["owner_id"]].append(_Pending(row["owner_id"], row["id"], queue, payload, event))
        outcomes = await asyncio.gather(*map(self._publish_in_order, by_owner.values()))
        clock.mark("publish")
        confirmed = [item for done, _ in outcomes for item in done]
        if confirmed:
            await conn.execute(
                "DELETE FROM outbox o USING unnest($1::text[]::bigint[], $2::text[]::bigint[]) AS k(owner_id, id)"
                " WHERE o.owner_id = k.owner_id AND o.id = k.id",
                id_array(item.owner_id for item in confirmed),
                id_array(item.id for item in confirmed),
            )
            clock.mark("delete")
        return confirmed, outcomes

    async def _without_earlier_rows_elsewhere(self, conn: Any, rows: list[Any]) -> list[Any]:
        """The batch, each owner's rows cut where a row of that owner this drain does not hold comes first.

        ``SKIP LOCKED`` lets relays split one owner's rows: relay A locks a post's `post_created`,
        relay B skips it and takes the `post_deleted` after it, and B's publish can reach the bus
        first (the delete applied before the create: a deleted post back in feeds). The gap can be
        in the middle too: B holds r2 (deferred), A's publish of r1 failed and released it, and a
        third drain takes r1 and r3. A row of the owner still visible here, below the batch's last
        one and not in the batch, is one another drain holds (or one committed late): this drain
        keeps the owner's rows before it and leaves the rest, locked until it commits, to a drain
        soon after. One indexed range read per owner (the key is (owner_id, id)).
        """
        last: dict[int, int] = {}
        for row in rows:
            last[row["owner_id"]] = row["id"]  # (rows come in id order)
        gaps = await conn.fetch(
            "SELECT k.owner_id, min(o.id) AS gap"
            " FROM unnest($1::text[]::bigint[], $2::text[]::bigint[]) AS k(owner_id, last_id)"
            " JOIN outbox o ON o.owner_id = k.owner_id AND o.id < k.last_id AND o.id <> ALL($3::text[]::bigint[])"
            " GROUP BY k.owner_id",
            id_array(last),
            id_array(last.values()),
            id_array(row["id"] for row in rows),
        )
        if not gaps:
            return rows
        gap = {row["owner_id"]: row["gap"] for row in gaps}
        kept = [row for row in rows if row["id"] < gap.get(row["owner_id"], row["id"] + 1)]
        self.deferred += len(rows) - len(kept)
        self._retry_soon = True
        return kept

    async def _publish_in_order(self, items: list[_Pending]) -> tuple[list[_Pending], Exception | None]:
        for index, item in enumerate(items):
            try:
                await self._bus.publish(item.queue, item.payload, message_id=str(item.id))
            except Exception as exc:
                return items[:index], exc
            if _is_new_post(item.event):
                observe_post_stage("published", item.event.post_id)
        return items, None

    async def pending(self) -> int:
        return int(await self._pool.fetchval("SELECT count(*) FROM outbox") or 0)


def _is_new_post(event: events.PipelineEvent) -> TypeGuard[events.PostEvent]:
    return isinstance(event, events.PostEvent) and event.type == "post_created"
