"""The before/after table of a `bench/compare.sh` run: medians per side, and after ÷ before.

HTTP: each endpoint's req/s and p99 from wrk's RESULT lines, over every round of every run of a
side. WebSocket: every number the sn scenarios reported (bench/ws_load.py's `sn.json`), the median
over a side's runs. A ratio is after ÷ before; whether higher is better depends on the metric
(req/s: higher; milliseconds, bytes, seconds: lower).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

ENDPOINTS = {"health": "GET /health", "user_get": "GET /user/get/{id}", "feed": "GET /post/feed"}


def http_side(runs: list[Path]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name in ENDPOINTS:
            for path in sorted(run.glob(f"{name}-*.txt")):
                lines = [line for line in path.read_text().splitlines() if line.startswith("RESULT ")]
                if lines:
                    fields = lines[-1].split()[1:]
                    values[f"{ENDPOINTS[name]} req/s"].append(float(fields[0]))
                    values[f"{ENDPOINTS[name]} p99 ms"].append(float(fields[3]))
    return {key: median(series) for key, series in values.items()}


def _leaves(prefix: str, value: Any) -> dict[str, float]:
    if isinstance(value, bool):
        return {}
    if isinstance(value, int | float):
        return {prefix: float(value)}
    if isinstance(value, dict):
        found: dict[str, float] = {}
        for key, item in value.items():
            found.update(_leaves(f"{prefix}.{key}" if prefix else str(key), item))
        return found
    return {}  # lists (per-round series) are summarised by the scenario's own medians


def ws_side(runs: list[Path]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        path = run / "sn.json"
        if path.exists():
            for key, number in _leaves("", json.loads(path.read_text())).items():
                values[key].append(number)
    return {key: median(series) for key, series in values.items()}


def table(title: str, before: dict[str, float], after: dict[str, float]) -> list[str]:
    lines = [title, f"{'metric':<64} {'before':>12} {'after':>12} {'after/before':>12}"]
    for key in sorted(before.keys() & after.keys()):
        ratio = after[key] / before[key] if before[key] else float("nan")
        lines.append(f"{key:<64} {before[key]:>12.2f} {after[key]:>12.2f} {ratio:>12.2f}")
    missing = sorted(before.keys() ^ after.keys())
    if missing:
        lines.append(f"(only one side reported: {', '.join(missing)})")
    return [*lines, ""]


def main(out: Path) -> int:
    lines: list[str] = []
    for part, side in (("http", http_side), ("ws", ws_side)):
        before = side(sorted(out.glob(f"{part}-*-before")))
        after = side(sorted(out.glob(f"{part}-*-after")))
        if before or after:
            runs = len(list(out.glob(f"{part}-*-after")))
            lines += table(f"{part}: median over {runs} run(s) a side, alternating", before, after)
    if not lines:
        print(f"compare: no results in {out}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
