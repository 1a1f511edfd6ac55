#!/usr/bin/env bash
# Router query cost: the cache-miss read paths GET /user/get/{id} and GET /post/get/{id} served from
# plain PostgreSQL and from the local Citus cluster, on the same machine, side by side, as a ratio.
# Both caches are off (SN_PROFILE_CACHE_TTL_SECONDS=0, SN_POST_CACHE_TTL_SECONDS=0), so every request
# is database work: /user/get one single-shard SELECT, /post/get two (post_index, then posts).
# Each asyncpg statement-cache size in BENCH_CACHE_SIZES is measured (prepared statements through the
# coordinator were the slow case in a first measurement).
#
# Next to req/s (moved by whatever else runs on the machine) every run records CPU ticks: of the app
# server's processes, and of the PostgreSQL backends serving the benchmark database on every node of
# each setup (the plain server is shared, so its other databases' backends are left out). CPU per
# request is the load-independent view of the router cost.
#
# Needs: wrk; PostgreSQL on 127.0.0.1:5432 (plain); the local Citus cluster (`scripts/citus-local.sh up`);
# Redis on 127.0.0.1:6379 (db 13 is flushed). Both databases are named sn_bench_router, seeded with the
# same sizes by `sn seed`, the Citus one after `sn cluster init`; both are dropped at the end unless
# BENCH_KEEP_DB=1 (BENCH_SKIP_SEED=1 then reuses them).
#
# Knobs: BENCH_USERS (20000) BENCH_POSTS (5) BENCH_FOLLOWS (10) BENCH_DURATION (10s) BENCH_THREADS (2)
#        BENCH_CONNECTIONS (32) BENCH_WORKERS (2) BENCH_ROUNDS (3) BENCH_CACHE_SIZES ("100 0")
#        BENCH_BACKENDS ("plain citus coord")
#        SN_BENCH_PLAIN_URL (postgresql://postgres@127.0.0.1:5432/sn_bench_router) SN_BENCH_REDIS_URL
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${BENCH_USERS:-20000}
POSTS=${BENCH_POSTS:-5}
FOLLOWS=${BENCH_FOLLOWS:-10}
DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WORKERS=${BENCH_WORKERS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
CACHE_SIZES=${BENCH_CACHE_SIZES:-100 0}
# plain: plain PostgreSQL; citus: the app's default on Citus (single-shard reads straight to the
# shard's node); coord: Citus with every query through the coordinator (SN_CITUS_DIRECT_READS=false).
BACKENDS=${BENCH_BACKENDS:-plain citus coord}
PLAIN_URL=${SN_BENCH_PLAIN_URL:-postgresql://postgres@127.0.0.1:5432/sn_bench_router}
REDIS_URL=${SN_BENCH_REDIS_URL:-redis://127.0.0.1:6379/13}
PY=${BENCH_PYTHON:-.venv/bin/python}
H=bench/citus_router.py

command -v wrk >/dev/null 2>&1 || {
    echo "bench: wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)" >&2
    exit 1
}
[[ -x $PY ]] || {
    echo "bench: $PY not found: run \`make install\` first" >&2
    exit 1
}
CITUS_ENV=$(scripts/citus-local.sh env) || {
    echo "bench: no local Citus cluster: run \`scripts/citus-local.sh up\` first" >&2
    exit 1
}
eval "$CITUS_ENV"
CITUS_URL=${SN_DATABASE_URL%/*}/sn_bench_router
CITUS_NODES="${SN_CITUS_WORKERS//,/ } $SN_CITUS_HOT_WORKER"

# CPU accounting: the postmasters of both setups (their backends are their children). Only the
# backends of the benchmark database count, so other users of the shared plain server do not.
port_of_url() { "$PY" -c 'import sys; from urllib.parse import urlsplit; print(urlsplit(sys.argv[1]).port or 5432)' "$1"; }
declare -A DB_ROOTS=()
DB_ROOTS[plain]=$("$PY" "$H" listener-pid "$(port_of_url "$PLAIN_URL")")
DB_ROOTS[citus]=$("$PY" "$H" listener-pid "$(port_of_url "$CITUS_URL")")
for node in $CITUS_NODES; do
    DB_ROOTS[citus]+=" $("$PY" "$H" listener-pid "${node##*:}")"
done
DB_ROOTS[coord]=${DB_ROOTS[citus]}

OUT=bench/results/citus-router-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
PIDS=()

# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        # Each server leads its own process group (setsid): this reaches its workers too.
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP_DB:-0} != 1 ]]; then
        "$PY" "$H" drop "$PLAIN_URL" || true
        # shellcheck disable=SC2086 # one argument per node
        "$PY" "$H" drop "$CITUS_URL" $CITUS_NODES || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cpu(s): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "data: $USERS users x $FOLLOWS follows x $POSTS posts; wrk -t$THREADS -c$CONNECTIONS -d$DURATION x $ROUNDS rounds;"
    echo "      $WORKERS server workers per backend; statement cache sizes: $CACHE_SIZES"
    echo "plain: $PLAIN_URL"
    echo "citus: $CITUS_URL (workers $SN_CITUS_WORKERS, hot $SN_CITUS_HOT_WORKER)"
} | tee "$OUT/machine.txt"

# -- data -------------------------------------------------------------------------------------------
if [[ ${BENCH_SKIP_SEED:-0} != 1 ]]; then
    "$PY" "$H" recreate "$PLAIN_URL"
    # shellcheck disable=SC2086
    "$PY" "$H" recreate "$CITUS_URL" $CITUS_NODES
    SN_DATABASE_URL=$CITUS_URL "$PY" -m sn cluster init >"$OUT/cluster-init.txt"
    for url in "$PLAIN_URL" "$CITUS_URL"; do
        SN_DATABASE_URL=$url "$PY" -m sn seed --users "$USERS" --follows-per-user "$FOLLOWS" \
            --posts-per-user "$POSTS" | tee -a "$OUT/seed.txt"
    done
fi
for backend in plain citus; do
    url=$PLAIN_URL
    [[ $backend == citus ]] && url=$CITUS_URL
    "$PY" "$H" sample "$url" users "$OUT/$backend-user-ids.txt" 10000
    "$PY" "$H" sample "$url" post_index "$OUT/$backend-post-ids.txt" 10000
done

# -- measurements ---------------------------------------------------------------------------------------
start_server() { # backend url cache_size; sets BASE[backend], adds the pid to PIDS (no subshell: globals)
    local backend=$1 url=$2 cache=$3 port direct=true
    [[ $backend == coord ]] && direct=false
    port=$("$PY" "$H" free-port)
    SN_CITUS_DIRECT_READS=$direct SN_DATABASE_URL=$url SN_REDIS_URL=$REDIS_URL SN_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
        SN_HOST=127.0.0.1 SN_PORT=$port SN_WORKERS=$WORKERS SN_ACCESS_LOG=false \
        SN_PROFILE_CACHE_TTL_SECONDS=0 SN_POST_CACHE_TTL_SECONDS=0 SN_DB_STATEMENT_CACHE_SIZE=$cache \
        setsid "$PY" -m sn serve >"$OUT/server-$backend-sc$cache.log" 2>&1 &
    PIDS+=($!)
    SERVER_PID[$backend]=$!
    BASE[$backend]=http://127.0.0.1:$port
    "$PY" "$H" wait-ready "${BASE[$backend]}" "$OUT/server-$backend-sc$cache.log" "$WORKERS"
}

stop_servers() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    PIDS=()
}

declare -A BASE=() SERVER_PID=()
ids_of() { # backend -> the id sample files' backend (both Citus variants read the same database)
    if [[ $1 == plain ]]; then echo plain; else echo citus; fi
}
for cache in $CACHE_SIZES; do
    for backend in $BACKENDS; do
        url=$PLAIN_URL
        [[ $backend != plain ]] && url=$CITUS_URL
        start_server "$backend" "$url" "$cache"
        # Unmeasured warm-up: pools filled, plans cached, pages in shared buffers.
        wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s bench/citus_router.lua "${BASE[$backend]}" -- \
            user_get "$OUT/$(ids_of "$backend")-user-ids.txt" >/dev/null
        wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s bench/citus_router.lua "${BASE[$backend]}" -- \
            post_get "$OUT/$(ids_of "$backend")-post-ids.txt" >/dev/null
    done
    # Both servers stay up; the backends take turns within each round, so background load on
    # this shared machine hits both alike.
    for round in $(seq 1 "$ROUNDS"); do
        for endpoint in user_get post_get; do
            ids=user
            [[ $endpoint == post_get ]] && ids=post
            for backend in $BACKENDS; do
                file=$OUT/sc$cache-$backend-$endpoint-$round.txt
                # shellcheck disable=SC2086 # DB_ROOTS holds several pids
                {
                    app0=$("$PY" "$H" ticks "${SERVER_PID[$backend]}")
                    db0=$("$PY" "$H" ticks --match sn_bench_router ${DB_ROOTS[$backend]})
                    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/citus_router.lua \
                        "${BASE[$backend]}" -- "$endpoint" "$OUT/$(ids_of "$backend")-$ids-ids.txt" >"$file"
                    app1=$("$PY" "$H" ticks "${SERVER_PID[$backend]}")
                    db1=$("$PY" "$H" ticks --match sn_bench_router ${DB_ROOTS[$backend]})
                }
                echo "$((app1 - app0)) $((db1 - db0)) $(getconf CLK_TCK)" >"${file%.txt}.cpu"
                printf 'bench: cache %-3s round %s %-8s %-5s %s, CPU ticks app %s db %s\n' "$cache" "$round" \
                    "$endpoint" "$backend" \
                    "$(awk '/^RESULT/ {printf "%.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors", $2, $3, $5, $7}' "$file")" \
                    "$((app1 - app0))" "$((db1 - db0))"
                sleep 1
            done
        done
    done
    stop_servers
done

echo
{
    cat "$OUT/machine.txt"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
} >"$OUT/report.txt"
status=0
"$PY" "$H" report "$OUT" | tee -a "$OUT/report.txt" || status=$?
echo "bench: wrk output, server logs and report in $OUT"
exit "$status"
