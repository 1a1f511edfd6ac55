"""Prometheus metrics (prometheus-client in multiprocess mode: every worker writes its own files,
/metrics on any worker aggregates them all).

Created on first use inside a worker, never at import: the primary process sets
PROMETHEUS_MULTIPROC_DIR before spawning workers, and metric values are per-process files.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from sn.ids import timestamp_ms

DeliveryStage = Literal["published", "consumed", "routed", "dispatched"]


class Metrics:
    def __init__(self) -> None:
        # registry=None: in multiprocess mode values live in files; the collector reads them.
        self.connections = Gauge(
            "sn_ws_connections", "Open WebSocket connections", registry=None, multiprocess_mode="livesum"
        )
        self.messages_delivered = Counter("sn_ws_messages_delivered", "Event frames written to sockets", registry=None)
        self.slow_consumer_closes = Counter(
            "sn_ws_slow_consumer_closes", "Connections closed because their mailbox was full", registry=None
        )
        self.rebalance_closes = Counter(
            "sn_ws_rebalance_closes",
            "Connections handed back to the balancer (1012) while their worker held more than its share",
            registry=None,
        )
        self.fanout_latency = Histogram(
            "sn_fanout_latency_seconds",
            "Post commit to routing done, per fan-out",
            registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # One histogram for the whole path, so the stage where a slow delivery waited shows as the
        # first stage whose tail is long; each value is measured from the same origin.
        self.delivery_stage = Histogram(
            "sn_post_delivery_stage_seconds",
            "Age of a new post (from its id's timestamp) at each stage of real-time delivery:"
            " published (the bus confirmed its outbox row), consumed (a fan-out consumer took it),"
            " routed (appended to the worker streams), dispatched (a worker's router wrote it to the sockets)",
            ["stage"],
            registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue_lag = Gauge(
            "sn_pipeline_lag_seconds",
            "Age of the last consumed pipeline message",
            registry=None,
            multiprocess_mode="max",
        )
        self.loop_crashes = Counter(
            "sn_loop_crashes",
            "Crashes of a worker's supervised loop (each one restarted or given up)",
            ["loop"],
            registry=None,
        )
        self.loop_failing = Gauge(
            "sn_loop_failing",
            "Workers on which this loop keeps crashing or gave up (they answer /ready 503)",
            ["loop"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.outbox_published = Counter("sn_outbox_published", "Outbox rows published to the bus", registry=None)
        self.loop_lag = Histogram(
            "sn_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer (time it was busy or stalled)",
            registry=None,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.gc_pause = Histogram(
            "sn_gc_pause_seconds",
            "Cyclic garbage collections, by generation",
            ["generation"],
            registry=None,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )


@cache
def metrics() -> Metrics:
    return Metrics()


def observe_post_stage(stage: DeliveryStage, post_id: int) -> float:
    """A new post reached `stage`: its age then, returned, by its id's timestamp (made on this machine's clock)."""
    age = time.time() - timestamp_ms(post_id) / 1000
    metrics().delivery_stage.labels(stage).observe(age)
    return age


def render() -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:  # single process without the env var (tests of pieces): nothing shared to read
        from prometheus_client import REGISTRY

        return generate_latest(REGISTRY)
    return generate_latest(registry)


def worker_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
