"""The slow-delivery log: where a late post waited, one line per late step of its path.

The delivery histograms (`sn_post_delivery_stage_seconds`) say how many posts are late at each
stage; they cannot say why one post was. A step of the pipeline (an outbox drain, a fan-out) that
carries a post older than the threshold when it finishes logs its phases, so the line that
explains a slow delivery sits beside it in the node's log. Plain code: the callers mark phases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from sn.ids import timestamp_ms

__all__ = ["PhaseClock", "oldest_age_ms", "report"]

log = logging.getLogger("sn.delivery.slow")


class PhaseClock:
    """Times the consecutive phases of one step: `mark(name)` ends the phase running since the last mark."""

    def __init__(self, started: float | None = None) -> None:
        self._last = time.perf_counter() if started is None else started
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases.append((phase, now - self._last))
        self._last = now

    def describe(self) -> str:
        return " ".join(f"{name}={seconds * 1000:.1f}ms" for name, seconds in self.phases)


def oldest_age_ms(post_ids: Iterable[int], now: float | None = None) -> tuple[int, float] | None:
    """The oldest of these posts and its age in ms by its id's timestamp; None for no posts."""
    oldest = min(post_ids, default=None)
    if oldest is None:
        return None
    now_ms = (time.time() if now is None else now) * 1000
    return oldest, now_ms - timestamp_ms(oldest)


def report(step: str, post_ids: Iterable[int], threshold_ms: float, clock: PhaseClock, detail: str = "") -> bool:
    """Log the step's phases if the oldest post it carried is older than `threshold_ms` (0: never)."""
    if threshold_ms <= 0:
        return False
    oldest = oldest_age_ms(post_ids)
    if oldest is None or oldest[1] < threshold_ms:
        return False
    post_id, age = oldest
    log.info("slow delivery: post %d %.0f ms old after %s (%s)%s", post_id, age, step, clock.describe(), detail)
    return True
