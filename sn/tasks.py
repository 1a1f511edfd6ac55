"""Task helpers shared by every long-running loop."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task[None], *, attempts: int = 10) -> None:
    """Cancel a task and wait for it, cancelling again if a cancel was lost.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses around every command) can swallow a
    cancellation that lands just as the inner call completes; a loop around such calls then runs
    on. Re-cancelling until the task is done makes shutdown reliable anyway.
    """
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if task.done() and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()
