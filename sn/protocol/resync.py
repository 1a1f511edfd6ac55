"""The replay verdict a reconnecting client gets when its missed events cannot be replayed.

A client that reconnects says "I have everything up to event N". The replay path
(`sn/realtime/log_tail.py`, `Hub`) answers with the missed events only when it can prove none
were lost between N and what the event log still holds; otherwise the honest answer is
``Resync`` ("refetch your feed over HTTP"), because silently skipping events leaves a stale feed
on screen with no way for the client to notice.
"""

from __future__ import annotations

import msgspec

__all__ = ["Resync"]


class Resync(msgspec.Struct, frozen=True):
    """Replay is impossible; the client must refetch its feed."""

    since: int
    oldest_available: int | None
    message: str = "missed events are no longer available; refetch the feed"
