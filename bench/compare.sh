#!/usr/bin/env bash
# Before/after on one machine in one run: `bash bench/compare.sh <git ref>` benchmarks the code at
# <ref> (the "before") against this checkout (the "after"), alternating them so both see the same
# background load, and prints after/before ratios (bench/compare.py).
#
#   1. <ref> is checked out as a detached worktree in var/compare/<sha> with its own virtualenv
#      (`make install` there); this checkout's bench scripts drive both, through BENCH_PYTHON: the
#      server is `python -m sn` of the tree under test, the load generators are the same.
#   2. HTTP (bench/run.sh, wrk): after, before, after, before on one seeded database (seeded once,
#      BENCH_SKIP_SEED; the last run drops it), COMPARE_HTTP_ROUNDS rounds of BENCH_DURATION each.
#   3. WebSocket (bench/ws_run.sh, sn only: memory, fan-out to 10k, reconnect storm, isolation):
#      after, before, after, before on one seeded database (the echo/broadcast yardsticks do not
#      depend on sn).
#
# Knobs: COMPARE_PARTS ("http ws"), COMPARE_HTTP_ROUNDS (2), BENCH_DURATION (10s),
# COMPARE_WS_STEPS (memory,fanout,storm,isolation), COMPARE_PAIRS (2: after/before pairs per part).
# Results in bench/results/compare-<time>/ (one directory per run, and summary.txt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REF=${1:?usage: bash bench/compare.sh <git ref of the "before" code>}
SHA=$(git rev-parse --verify "$REF^{commit}")
PARTS=${COMPARE_PARTS:-http ws}
PAIRS=${COMPARE_PAIRS:-2}
OUT=$ROOT/bench/results/compare-$(date +%Y%m%d-%H%M%S)
BEFORE=$ROOT/var/compare/$SHA
mkdir -p "$OUT"
exec > >(tee -i "$OUT/output.txt") 2>&1

echo "compare: before = $REF ($SHA), after = this checkout ($(git rev-parse HEAD)$(git diff --quiet || echo ', with uncommitted changes'))"
if [[ ! -x $BEFORE/.venv/bin/python ]]; then
    rm -rf "$BEFORE"
    git worktree prune
    git worktree add --detach "$BEFORE" "$SHA" >/dev/null
    make -C "$BEFORE" install
fi
AFTER_PY=$ROOT/.venv/bin/python
BEFORE_PY=$BEFORE/.venv/bin/python
[[ -x $AFTER_PY ]] || make install

run_pair_part() { # part index who python skip-seed keep-db
    local part=$1 index=$2 who=$3 py=$4 seed=$5 keep=$6 dir runs
    dir=$OUT/$part-$index-$who
    echo "compare: $part run $index ($who), load $(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ $part == http ]]; then
        BENCH_PYTHON=$py BENCH_KEEP_DB=$keep BENCH_SKIP_SEED=$seed BENCH_ROUNDS=${COMPARE_HTTP_ROUNDS:-2} \
            BENCH_DURATION=${BENCH_DURATION:-10s} bash bench/run.sh >"$dir.log" 2>&1 || true
        runs=(bench/results/2*) # (named by time: the last is this run's)
        mv "${runs[-1]}" "$dir"
    else
        BENCH_PYTHON=$py WSBENCH_KEEP_DB=$keep WSBENCH_SKIP_SEED=$seed WSBENCH_SCENARIOS=sn \
            WSBENCH_SN_STEPS=${COMPARE_WS_STEPS:-memory,fanout,storm,isolation} bash bench/ws_run.sh >"$dir.log" 2>&1 || true
        runs=(bench/results/ws-2*)
        mv "${runs[-1]}" "$dir"
    fi
}

for part in $PARTS; do
    seed=0
    for index in $(seq 1 "$PAIRS"); do
        run_pair_part "$part" "$index" after "$AFTER_PY" "$seed" 1
        seed=1
        # The last run of a part drops its database.
        run_pair_part "$part" "$index" before "$BEFORE_PY" "$seed" "$((index < PAIRS))"
    done
done
"$AFTER_PY" bench/compare.py "$OUT" | tee "$OUT/summary.txt"
echo "compare: results in $OUT"
