"""A deliberately small asyncio actor runtime.

One task per actor, one bounded mailbox per actor, messages handled one at a
time in arrival order.  That is the whole concurrency model: an actor's state
is only touched by its own task, so it needs no locks, and a slow actor can
only fill its own mailbox, never stall its senders (``tell`` never awaits).

Crash handling is delegated to a callback (normally a ``Supervisor``) so the
restart policy stays pure and this module stays about scheduling.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

from sn.actors.mailbox import Mailbox
from sn.actors.policy import RestartDecision

__all__ = ["Actor", "ActorRef", "ActorStatus", "AsyncMailbox", "CrashHandler"]

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")


class AsyncMailbox(Generic[T]):
    """``Mailbox`` plus a wake-up signal so the owning task can sleep when idle."""

    __slots__ = ("_box", "_ready")

    def __init__(self, capacity: int) -> None:
        self._box: Mailbox[T] = Mailbox(capacity)
        # An Event, not a Condition or asyncio.Queue: producers are sync
        # (``offer`` must not await) and there is exactly one consumer.
        self._ready = asyncio.Event()

    @property
    def box(self) -> Mailbox[T]:
        """The underlying pure mailbox (capacity, counters, closed state)."""
        return self._box

    def __len__(self) -> int:
        return len(self._box)

    def offer(self, item: T) -> bool:
        if not self._box.offer(item):
            return False
        self._ready.set()
        return True

    async def get_batch(self, max_items: int) -> list[T]:
        """Wait for at least one item; returns ``[]`` only once closed and empty."""
        while not self._box:
            if self._box.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        return self._box.drain(max_items)

    def close(self) -> None:
        self._box.close()
        self._ready.set()  # wake the consumer so it can notice and exit

    def clear(self) -> int:
        return self._box.clear()


class Actor(ABC, Generic[M]):
    """Subclass and implement :meth:`handle`.  Exceptions from it count as crashes."""

    async def on_start(self) -> None:
        """Called in the actor's task before the first message (and after each restart)."""

    @abstractmethod
    async def handle(self, message: M) -> None: ...

    async def on_stop(self) -> None:
        """Called on graceful stop and before a restart; not after a forced cancel."""


class ActorStatus(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


CrashHandler = Callable[["ActorRef[M]", Exception], RestartDecision]


class ActorRef(Generic[M]):
    """Handle to a running actor: its mailbox, its task, its lifecycle.

    Restarts build a fresh instance from ``factory`` (fresh state, as in
    Erlang) but keep the mailbox, so queued messages survive the crash; only
    the message that raised is lost.
    """

    def __init__(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str,
        capacity: int = 1024,
        batch_size: int = 64,
        on_crash: CrashHandler[M] | None = None,
        on_exit: Callable[[ActorRef[M]], None] | None = None,
    ) -> None:
        self.name = name
        self.status = ActorStatus.NEW
        self.error: Exception | None = None  # the crash that made it FAILED
        self.mailbox: AsyncMailbox[M] = AsyncMailbox(capacity)
        self._factory = factory
        self._batch_size = batch_size
        self._on_crash = on_crash
        self._on_exit = on_exit
        self._actor: Actor[M] | None = None
        self._task: asyncio.Task[None] | None = None
        # Set by stop(drain=False): the loop drains its mailbox in batches,
        # so clearing the mailbox alone would not drop an already-taken batch.
        self._discard = False

    def __repr__(self) -> str:
        return f"<ActorRef {self.name!r} {self.status.value} queued={len(self.mailbox)}>"

    @property
    def actor(self) -> Actor[M] | None:
        """The current instance (changes on restart); for tests and introspection."""
        return self._actor

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The actor's task once started (e.g. for ``add_done_callback``)."""
        return self._task

    @property
    def alive(self) -> bool:
        return self.status in (ActorStatus.NEW, ActorStatus.RUNNING)

    def start(self) -> None:
        """Spawn the actor's task; needs a running event loop."""
        if self._task is not None:
            raise RuntimeError(f"actor {self.name!r} already started")
        self.status = ActorStatus.RUNNING
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"actor:{self.name}")

    def tell(self, message: M) -> bool:
        """Enqueue without waiting; False if the mailbox is full or the actor is stopping."""
        return self.mailbox.offer(message)

    async def wait(self) -> None:
        """Until the actor's task has finished (stopped or failed)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def stop(self, *, drain: bool = True, grace_period: float | None = None) -> None:
        """Stop accepting messages, finish (``drain``) or drop the backlog, await the task.

        The in-flight message always completes unless ``grace_period`` seconds
        pass first; then the task is cancelled (and still awaited, so nothing
        leaks).  ``None`` waits as long as it takes.
        """
        if self.alive:
            self.status = ActorStatus.STOPPING
        self.mailbox.close()
        if not drain:
            self._discard = True
            self.mailbox.clear()
        task = self._task
        if task is None:
            self.status = ActorStatus.STOPPED
            return
        if task is asyncio.current_task():
            return  # stopping itself from handle(): awaiting our own task would deadlock
        done, _ = await asyncio.wait({task}, timeout=grace_period)
        if not done:
            task.cancel()
            # asyncio.wait, unlike awaiting the task, does not re-raise the
            # task's CancelledError into us (which would look like *our* cancel).
            await asyncio.wait({task})

    # ------------------------------------------------------------------ task

    async def _run(self) -> None:
        try:
            actor = await self._start_instance()
            while actor is not None:
                batch = await self.mailbox.get_batch(self._batch_size)
                if not batch:
                    await self._stop_instance(actor)
                    self.status = ActorStatus.STOPPED
                    return
                for message in batch:
                    if self._discard:
                        break
                    try:
                        await actor.handle(message)
                    except Exception as exc:
                        actor = await self._recover(exc)
                        if actor is None:
                            return
        except asyncio.CancelledError:
            self.status = ActorStatus.STOPPED
            raise
        finally:
            if self._on_exit is not None:
                self._on_exit(self)

    async def _start_instance(self) -> Actor[M] | None:
        try:
            actor = self._factory()
            await actor.on_start()
        except Exception as exc:
            return await self._recover(exc)
        self._actor = actor
        return actor

    async def _recover(self, exc: Exception) -> Actor[M] | None:
        """Consult the crash handler until an instance starts or we give up."""
        while True:
            log.error("actor %s crashed", self.name, exc_info=exc)
            decision = RestartDecision.GIVE_UP
            if self._on_crash is not None:
                decision = self._on_crash(self, exc)
            if self._actor is not None:
                await self._stop_instance(self._actor)
                self._actor = None
            if decision is RestartDecision.GIVE_UP:
                self.error = exc
                self.status = ActorStatus.FAILED
                self.mailbox.close()
                self.mailbox.clear()
                return None
            try:
                actor = self._factory()
                await actor.on_start()
            except Exception as start_exc:
                exc = start_exc
                continue
            self._actor = actor
            return actor

    async def _stop_instance(self, actor: Actor[M]) -> None:
        try:
            await actor.on_stop()
        except Exception:
            # Already on the way out; a failing cleanup must not mask the
            # original crash or prevent the restart.
            log.exception("actor %s: on_stop failed", self.name)
