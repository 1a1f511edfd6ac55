"""Rebalancing decisions as plain code: who hands sockets back to the balancer, how many, when."""

from __future__ import annotations

import pytest

from sn.realtime.rebalance import RebalancePolicy, Rebalancer, shed_count
from sn.realtime.stats import WorkerStats

NOW = 1_000_000.0
POLICY = RebalancePolicy(rate=100, slack=0.25, min_excess=100, warmup=10)


def worker(name: str, connections: int, *, started_ago: float = 3600, updated_ago: float = 0.0) -> WorkerStats:
    return WorkerStats(
        worker=name,
        node=name.split(":")[0],
        pid=1,
        connections=connections,
        users=connections,
        delivered=0,
        slow_consumer_closes=0,
        accepted=connections,
        updated_at=NOW - updated_ago,
        started_at=NOW - started_ago,
    )


def shed(own: str, workers: list[WorkerStats], *, elapsed: float = 1.0, policy: RebalancePolicy = POLICY) -> int:
    return shed_count(own, workers, now=NOW, elapsed=elapsed, policy=policy)


def test_a_node_back_from_a_restart_gets_sockets_paced_by_the_rate() -> None:
    # Node A restarted: every client is on node B's two workers.
    workers = [worker("b:1", 5000), worker("b:2", 5000), worker("a:1", 0), worker("a:2", 0)]
    assert shed("b:1", workers) == 100  # a second's worth of the rate, not the whole 2500 over the mean
    assert shed("b:1", workers, elapsed=0.5) == 50
    assert shed("a:1", workers) == 0  # under the mean: it only receives


def test_no_more_than_the_excess_over_the_mean() -> None:
    workers = [worker("b:1", 1300), worker("a:1", 1000), worker("a:2", 1000), worker("b:2", 900)]
    # Mean 1050; b:1 is 250 over (24 % above the mean, under the 25 % slack): left alone.
    assert shed("b:1", workers) == 0
    workers[0] = worker("b:1", 1500)  # mean 1100, 400 over: 36 %
    assert shed("b:1", workers, elapsed=10) == 400


def test_small_imbalances_are_left_alone() -> None:
    workers = [worker("b:1", 90), worker("a:1", 0)]  # 45 over the mean, under min_excess
    assert shed("b:1", workers) == 0
    assert shed("b:1", workers, policy=RebalancePolicy(rate=100, min_excess=10)) == 45


def test_a_worker_still_warming_up_does_not_count() -> None:
    # a:1 started 3 s ago: its node may not be in the balancer's rotation yet, and sockets handed
    # back now would all come straight back.
    workers = [worker("b:1", 5000), worker("a:1", 0, started_ago=3)]
    assert shed("b:1", workers) == 0
    workers[1] = worker("a:1", 0, started_ago=11)
    assert shed("b:1", workers) == 100


def test_a_worker_whose_stats_stopped_coming_does_not_count() -> None:
    # Node A was SIGKILLed 5 s ago: its last entries (2,500 each) live on until they expire, and every
    # client is on node B now. Counted, they put B over the mean, and B would shed sockets the balancer
    # can only send back to B.
    workers = [
        worker("b:1", 5000),
        worker("b:2", 5000),
        worker("a:1", 2500, updated_ago=5),
        worker("a:2", 2500, updated_ago=5),
    ]
    assert shed("b:1", workers) == 0
    # A heartbeat a moment late (a busy event loop) still counts.
    workers[2:] = [worker("a:1", 2500, updated_ago=2), worker("a:2", 2500, updated_ago=2)]
    assert shed("b:1", workers) == 100


def test_a_lone_worker_an_unknown_worker_and_rate_zero_never_shed() -> None:
    assert shed("b:1", [worker("b:1", 5000)]) == 0
    assert shed("x:9", [worker("b:1", 5000), worker("a:1", 0)]) == 0
    off = RebalancePolicy(rate=0)
    assert shed("b:1", [worker("b:1", 5000), worker("a:1", 0)], policy=off) == 0


@pytest.mark.parametrize("elapsed", [0.001, 0.009])
def test_a_round_too_soon_after_the_last_sheds_nothing(elapsed: float) -> None:
    assert shed("b:1", [worker("b:1", 5000), worker("a:1", 0)], elapsed=elapsed) == 0


def test_an_imbalance_must_last_hold_rounds_before_anything_is_handed_back() -> None:
    rebalancer = Rebalancer(RebalancePolicy(rate=100, min_excess=10, hold=3), now=0.0)
    over = [worker("b:1", 500), worker("a:1", 0)]
    even = [worker("b:1", 250), worker("a:1", 250)]

    def round_at(t: float, workers: list[WorkerStats]) -> int:
        return rebalancer.decide("b:1", workers, now=t, wall=NOW)

    # A passing lead (a connection ramp): over for two heartbeats, then even again. Nothing moves.
    assert [round_at(1, over), round_at(2, over), round_at(3, even)] == [0, 0, 0]
    # A lasting one: the third heartbeat in a row over the line sheds a second's worth.
    assert [round_at(4, over), round_at(5, over), round_at(6, over)] == [0, 0, 100]
    assert round_at(6.5, over) == 50  # the rate's budget is the time since the last round
    assert round_at(30, over) == 200  # ...capped at two seconds' worth after a stall
