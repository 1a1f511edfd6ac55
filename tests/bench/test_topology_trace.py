"""bench/topology_trace.py: the delivery-stage histograms as /metrics shows them, and the probes' split."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import topology_trace

BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "+Inf")


def exposition(stage_counts: dict[str, list[int]]) -> str:
    """/metrics text (prometheus-client's format) with cumulative bucket counts per stage, beside another metric."""
    lines = [
        "# HELP sn_ws_connections Open WebSocket connections",
        "# TYPE sn_ws_connections gauge",
        "sn_ws_connections 3.0",
        "# HELP sn_post_delivery_stage_seconds Age of a new post",
        "# TYPE sn_post_delivery_stage_seconds histogram",
    ]
    for stage, counts in stage_counts.items():
        for le, count in zip(BOUNDS, counts, strict=True):
            lines.append(f'sn_post_delivery_stage_seconds_bucket{{le="{le}",stage="{stage}"}} {count}.0')
        lines.append(f'sn_post_delivery_stage_seconds_count{{stage="{stage}"}} {counts[-1]}.0')
        lines.append(f'sn_post_delivery_stage_seconds_sum{{stage="{stage}"}} 1.5')
    return "\n".join(lines) + "\n"


def test_parse_reads_each_stage_and_ignores_other_metrics() -> None:
    parsed = topology_trace.StageHistograms.parse(
        exposition({"published": [1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], "routed": [0] * 12 + [2]})
    )
    assert set(parsed.buckets) == {"published", "routed"}
    assert parsed.buckets["published"][0.005] == 1
    assert parsed.buckets["published"][float("inf")] == 4
    assert parsed.buckets["routed"][30.0] == 0


def test_summary_interpolates_inside_the_bucket_and_gives_the_share_over_50ms() -> None:
    # 100 posts: 90 within 10 ms, 9 between 50 and 100 ms, 1 between 0.5 and 1 s.
    counts = [0, 90, 90, 90, 99, 99, 99, 100, 100, 100, 100, 100, 100]
    summary = topology_trace.StageHistograms.parse(exposition({"dispatched": counts})).summary()["dispatched"]
    assert summary["n"] == 100
    assert summary["p50"] == pytest.approx(5 + 5 * 50 / 90, abs=0.1)  # the 50th of 90 spread over 5..10 ms
    assert summary["p90"] == pytest.approx(10.0)
    assert summary["p99"] == pytest.approx(100.0)
    assert summary["over_50ms"] == pytest.approx(0.10)


def test_a_quantile_in_the_open_bucket_reports_the_last_bound() -> None:
    counts = [0] * 12 + [5]  # all five older than 30 s
    summary = topology_trace.StageHistograms.parse(exposition({"consumed": counts})).summary()["consumed"]
    assert summary["p99"] == 30_000.0


def test_a_killed_node_adds_its_two_lives() -> None:
    def at(n: int) -> topology_trace.StageHistograms:
        return topology_trace.StageHistograms.parse(exposition({"routed": [n] * 13}))

    start, before_kill, after_restart = at(10), at(25), at(7)
    share = topology_trace.node_share(start, before_kill, after_restart)
    assert share.buckets["routed"][float("inf")] == 15 + 7
    assert topology_trace.node_share(start, None, at(40)).buckets["routed"][0.005] == 30


def test_split_and_worst() -> None:
    assert topology_trace.split(1_000, None, 2.0) == (None, None)
    assert topology_trace.split(1_000, 1_030, 1.25) == (30.0, 220.0)
    timings = [
        topology_trace.ProbeTiming(str(i), float(i), "node-a", "node-b", 10.0, 5.0, 5.0, float(total))
        for i, total in enumerate((12, 700, 30, 95))
    ]
    worst = topology_trace.worst(timings, count=2)
    assert [row["post_id"] for row in worst] == ["1", "3"]
    assert worst[0]["total_ms"] == 700.0
