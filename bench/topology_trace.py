"""Where a post's real-time delivery waits, for bench/topology_bench.py.

Two views, both from what the app itself records:

- the nodes' `sn_post_delivery_stage_seconds` histograms (every new post's age when the bus confirmed it, when a
  fan-out consumer took it, when it was routed into the worker streams, when a router wrote it to the sockets),
  scraped from /metrics before and after the scenario; a node restarted in between starts its counts again, so
  its share is (before the kill - start) + (end);
- each probe post's own route time: the event log entry of the event id its follower received carries the moment
  the fan-out consumer routed it ('t'), which splits POST -> receipt into app-made-it -> routed -> received.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

STAGE_METRIC = "sn_post_delivery_stage_seconds"
STAGES = ("published", "consumed", "routed", "dispatched")
LOG_KEY = "sn:rt:log"


@dataclass
class StageHistograms:
    """Cumulative bucket counts by stage: {stage: {upper bound (seconds): count}}."""

    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> StageHistograms:
        found = cls()
        for family in text_string_to_metric_families(text):
            if family.name != STAGE_METRIC:
                continue
            for sample in family.samples:
                if sample.name == STAGE_METRIC + "_bucket":
                    stage = sample.labels["stage"]
                    found.buckets.setdefault(stage, {})[float(sample.labels["le"])] = sample.value
        return found

    def __add__(self, other: StageHistograms) -> StageHistograms:
        return self._combine(other, 1)

    def __sub__(self, other: StageHistograms) -> StageHistograms:
        return self._combine(other, -1)

    def _combine(self, other: StageHistograms, sign: int) -> StageHistograms:
        out = StageHistograms()
        for stage in self.buckets.keys() | other.buckets.keys():
            mine, theirs = self.buckets.get(stage, {}), other.buckets.get(stage, {})
            out.buckets[stage] = {le: mine.get(le, 0.0) + sign * theirs.get(le, 0.0) for le in mine.keys() | theirs}
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Per stage: posts counted, p50/p90/p99 (ms, interpolated in the bucket as Prometheus does) and the share
        older than 50 ms (the cross-node target)."""
        return {stage: _summarise(self.buckets[stage]) for stage in STAGES if stage in self.buckets}


def _summarise(buckets: Mapping[float, float]) -> dict[str, float]:
    bounds = sorted(buckets)
    total = buckets[math.inf] if math.inf in buckets else (buckets[bounds[-1]] if bounds else 0.0)
    result: dict[str, float] = {"n": total}
    if total <= 0:
        return result
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        result[name] = round(_quantile(bounds, buckets, q * total) * 1000, 1)
    under_50ms = buckets.get(0.05)
    if under_50ms is not None:
        result["over_50ms"] = round(1 - under_50ms / total, 4)
    return result


def _quantile(bounds: list[float], buckets: Mapping[float, float], rank: float) -> float:
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # in the open bucket: all that is known is "over the last bound"
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def node_share(start: StageHistograms, before_kill: StageHistograms | None, end: StageHistograms) -> StageHistograms:
    """A node's counts over the scenario; one that was killed (and restarted from zero) adds its two lives."""
    if before_kill is None:
        return end - start
    return (before_kill - start) + end


@dataclass(frozen=True)
class ProbeTiming:
    post_id: str
    started_s: float  # the POST's start, in seconds since the scenario's start
    via: str
    to: str
    post_response_ms: float
    made_to_routed_ms: float | None  # the id's timestamp -> the fan-out consumer routing it
    routed_to_receipt_ms: float | None  # routed -> the follower's socket read it
    total_ms: float  # POST start -> receipt


def split(made_ms: int, routed_ms: int | None, receipt_wall_s: float) -> tuple[float | None, float | None]:
    """(made -> routed, routed -> receipt) in ms; (None, None) without a route time (trimmed from the log)."""
    if routed_ms is None:
        return None, None
    return float(routed_ms - made_ms), round(receipt_wall_s * 1000 - routed_ms, 1)


def worst(timings: Iterable[ProbeTiming], count: int = 10) -> list[dict[str, object]]:
    return [
        {
            "post_id": t.post_id,
            "t_s": round(t.started_s, 2),
            "via": t.via,
            "to": t.to,
            "total_ms": round(t.total_ms, 1),
            "post_response_ms": round(t.post_response_ms, 1),
            "made_to_routed_ms": t.made_to_routed_ms,
            "routed_to_receipt_ms": t.routed_to_receipt_ms,
        }
        for t in sorted(timings, key=lambda t: -t.total_ms)[:count]
    ]


async def route_times(redis_url: str, event_ids: Iterable[int]) -> dict[int, int]:
    """The route time ('t', ms) of each event id still in the event log."""
    from redis.asyncio import Redis

    ids = sorted(set(event_ids))
    client = Redis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.xrange(LOG_KEY, f"{event_id}-1", f"{event_id}-1", count=1)
            replies = await pipe.execute()
    finally:
        await client.aclose()
    return {event_id: int(entries[0][1][b"t"]) for event_id, entries in zip(ids, replies, strict=True) if entries}
