# ruff: noqa: E501  (HAProxy log lines, verbatim)
"""bench/topology_bench.py's readers of what the rehearsal leaves behind: HAProxy's request log and /proc.

The log lines are HAProxy 2.6's `option httplog` format, verbatim from a run of deploy/haproxy/haproxy.cfg with
SN_LB_LOG set (tokens shortened); tests/test_topology.py checks the live log of a real balancer.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import topology_bench

LINES = """\
127.0.0.1:42354 [03/Dec/2026:09:34:59.211] sn sn-app/node-a 0/0/0/1/1 200 287 - - ---- 1/1/0/0/0 0/0 "GET /ready HTTP/1.1"
127.0.0.1:59192 [03/Dec/2026:09:36:17.671] sn sn-app/node-b 0/0/0/17319/17319 200 3072 - - ---- 17/17/16/8/0 0/0 "GET /post/feed HTTP/1.1"
127.0.0.1:59242 [03/Dec/2026:09:36:18.672] sn sn-app/node-a 0/0/0/18/18 200 2991 - - ---- 17/17/16/8/0 0/0 "GET /post/feed?limit=100 HTTP/1.1"
127.0.0.1:40568 [03/Dec/2026:09:36:26.753] sn sn-app/node-a 0/0/0/97/97 200 252 - - ---- 20/20/19/9/0 0/0 "POST /post/create HTTP/1.1"
127.0.0.1:40570 [03/Dec/2026:09:36:27.753] sn sn-app/node-a 0/0/0/-1/3 502 209 - - SH-- 20/20/19/9/0 0/0 "GET /user/get/386812579663597580 HTTP/1.1"
127.5.2.2:34087 [03/Dec/2026:09:36:32.272] sn sn-app/node-a 0/0/3/35/58 101 226 - - CD-- 51/51/31/15/0 0/0 "GET /ws/386812579663597580?token=e30.e30.x&since=1 HTTP/1.1"
127.0.0.1:32930 [03/Dec/2026:09:36:33.436] sn sn/<NOSRV> -1/-1/-1/-1/0 400 0 - - CR-- 1/1/0/0/0 0/0 "<BADREQ>"
127.0.0.1:40999 [03/Dec/2026:09:50:00.000] sn sn-app/node-b 0/0/0/5/5 200 252 - - ---- 20/20/19/9/0 0/0 "GET /post/feed HTTP/1.1"
"""


def at(clock: str) -> float:
    return datetime.datetime.strptime(f"03/Dec/2026:{clock}", "%d/%b/%Y:%H:%M:%S.%f").timestamp()


def test_balancer_view_times_each_endpoint_within_the_window(tmp_path: Path) -> None:
    (tmp_path / "haproxy-1.log").write_text(LINES)
    view = topology_bench.balancer_view(tmp_path, at("09:36:00.000"), at("09:40:00.000"))
    endpoints = view["endpoints"]
    # /ready (health checks), sockets (logged at their close) and lines outside the window are left out; ids and
    # query strings do not split an endpoint.
    assert set(endpoints) == {"GET /post/feed", "POST /post/create", "GET /user/get"}
    assert endpoints["GET /post/feed"]["n"] == 2
    assert endpoints["GET /post/feed"]["max"] == 17319.0
    assert endpoints["GET /post/feed"]["p50"] == 18.0
    assert endpoints["GET /user/get"]["max"] == 3.0  # Ta, the last timer: set even when the response never came
    assert view["abnormal"] == {"GET /user/get: SH-- 502 via sn-app/node-a": 1}


def test_balancer_view_of_no_log_is_empty(tmp_path: Path) -> None:
    assert topology_bench.balancer_view(tmp_path, 0, time.time()) == {"endpoints": {}, "abnormal": {}}


def test_cpu_account_names_this_process_and_counts_its_cpu() -> None:
    account = topology_bench.CpuAccount(node_pids={})
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    report = account.report()
    assert report["cores_by_part"]["bench (main process)"] > 0.0
    assert 0 < report["machine_busy_pct"] <= 100
    assert report["window_s"] > 0


def test_processes_reads_parent_and_command_line() -> None:
    table = topology_bench._processes()
    parent, cmdline, cpu = table[os.getpid()]
    assert parent == os.getppid()
    assert "python" in cmdline
    assert cpu >= 0
