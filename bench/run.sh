#!/usr/bin/env bash
# Benchmark: GET /health vs cached GET /user/get/{id} vs cached GET /post/feed, measured with wrk
# against `sn serve` (2 workers) on a freshly seeded database. Run it with `make bench`.
#
# Steps: create the database (default sn_bench on the local PostgreSQL), seed 100k users x 50
# follows x 5 posts, start the server on a free loopback port against it with Redis db 14
# (flushed), warm the profile cache for a sample of users, log a sample of users in through the
# API (reading each feed once builds its cache), then run wrk on the three endpoints one after
# the other (several rounds) and print req/s and latency percentiles. Everything started here is stopped on exit;
# the database is dropped unless BENCH_KEEP_DB=1.
#
# Knobs (environment):
#   SN_BENCH_DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/sn_bench (name must start
#                          with sn_bench: it is dropped and re-created)
#   SN_BENCH_REDIS_URL     default redis://127.0.0.1:6379/14 (flushed)
#   BENCH_USERS / BENCH_FOLLOWS / BENCH_POSTS      100000 / 50 / 5
#   BENCH_DURATION / BENCH_THREADS / BENCH_CONNECTIONS   15s / 2 / 64
#   BENCH_PROFILES         ids sampled for /user/get (all warmed first), default 10000
#   BENCH_TOKENS           users logged in for /post/feed, default 200
#   BENCH_ROUNDS           rounds of the three measurements, default 3 (medians are reported)
#   BENCH_LIGHT_CONNECTIONS  connections of the extra light feed run, default 8 (0 skips it)
#   BENCH_WORKERS          server workers, default 2
#   BENCH_KEEP_DB=1        keep the database afterwards; BENCH_SKIP_SEED=1 reuses a kept one
#   Any SN_* setting (e.g. SN_ACCESS_LOG=false) is passed through to the server.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${BENCH_USERS:-100000}
FOLLOWS=${BENCH_FOLLOWS:-50}
POSTS=${BENCH_POSTS:-5}
DURATION=${BENCH_DURATION:-15s}
THREADS=${BENCH_THREADS:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
PROFILES=${BENCH_PROFILES:-10000}
TOKENS=${BENCH_TOKENS:-200}
ROUNDS=${BENCH_ROUNDS:-3}
LOW_CONNECTIONS=${BENCH_LIGHT_CONNECTIONS:-8}
WORKERS=${BENCH_WORKERS:-2}
DATABASE_URL=${SN_BENCH_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/sn_bench}
REDIS_URL=${SN_BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}
PASSWORD=bench-password
PY=${BENCH_PYTHON:-.venv/bin/python}

if ! command -v wrk >/dev/null 2>&1; then
    cat >&2 <<'EOF'
bench: wrk is not installed. Install it, then run `make bench` again:
  Debian/Ubuntu:  sudo apt-get install -y wrk
  macOS:          brew install wrk
  from source:    https://github.com/wg/wrk (make; put ./wrk on PATH)
EOF
    exit 1
fi
if [[ ! -x $PY ]]; then
    echo "bench: $PY not found: run \`make install\` first (or set BENCH_PYTHON)" >&2
    exit 1
fi

OUT=bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
exec > >(tee -i "$OUT/run.log") 2>&1
SERVER_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "bench: stopping the server (pid $SERVER_PID)"
        # The server was started as the leader of its own process group (setsid): signalling the
        # group reaches Sanic's worker processes too, and nothing else.
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    if [[ ${BENCH_KEEP_DB:-0} != 1 ]]; then
        "$PY" bench/helpers.py drop-db "$DATABASE_URL" || true
    fi
    "$PY" bench/helpers.py flush-redis "$REDIS_URL" >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench: results in $OUT"
{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cpu(s): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "python: $("$PY" -V 2>&1)"
    echo "postgres: $("$PY" -c 'import asyncio, asyncpg, sys
async def v():
    c = await asyncpg.connect(sys.argv[1]); print(await c.fetchval("show server_version")); await c.close()
asyncio.run(v())' "${DATABASE_URL%/*}/postgres")"
    echo "data: $USERS users x $FOLLOWS follows x $POSTS posts; wrk -t$THREADS -c$CONNECTIONS -d$DURATION x $ROUNDS rounds; $WORKERS workers"
} | tee "$OUT/machine.txt"

# -- data -----------------------------------------------------------------------------------------
if [[ ${BENCH_SKIP_SEED:-0} == 1 ]]; then
    echo "bench: reusing the seeded database (BENCH_SKIP_SEED=1)"
    "$PY" bench/helpers.py dump-ids "$DATABASE_URL" "$OUT/user-ids.txt"
else
    "$PY" bench/helpers.py recreate-db "$DATABASE_URL"
    SN_DATABASE_URL=$DATABASE_URL SN_REDIS_URL=$REDIS_URL \
        "$PY" -m sn seed --users "$USERS" --follows-per-user "$FOLLOWS" --posts-per-user "$POSTS" \
        --password "$PASSWORD" --ids-out "$OUT/user-ids.txt" | tee "$OUT/seed.txt"
fi
"$PY" bench/helpers.py flush-redis "$REDIS_URL"
shuf -n "$PROFILES" "$OUT/user-ids.txt" >"$OUT/profile-ids.txt"
shuf -n "$TOKENS" "$OUT/user-ids.txt" >"$OUT/token-ids.txt"

# -- server ---------------------------------------------------------------------------------------
PORT=$("$PY" bench/helpers.py free-port)
BASE=http://127.0.0.1:$PORT
SN_DATABASE_URL=$DATABASE_URL SN_REDIS_URL=$REDIS_URL SN_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
    SN_HOST=127.0.0.1 SN_PORT=$PORT SN_WORKERS=$WORKERS SN_RATE_LIMIT_AUTH=0 \
    setsid "$PY" -m sn serve >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
"$PY" bench/helpers.py wait-ready "$BASE" "$OUT/server.log" "$WORKERS" 60
echo "bench: server pid $SERVER_PID on $BASE"

# -- warm-up --------------------------------------------------------------------------------------
echo "bench: warming $PROFILES profiles"
"$PY" bench/helpers.py warm-profiles "$BASE" "$OUT/profile-ids.txt"
"$PY" bench/helpers.py tokens "$BASE" "$OUT/token-ids.txt" "$PASSWORD" "$TOKENS" "$OUT/tokens.txt"
# A short unmeasured run settles connection pools and CPU frequency before the first measurement.
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s bench/wrk.lua "$BASE" -- health >/dev/null

# -- measurements ---------------------------------------------------------------------------------
# CPU accounting around each wrk run, so results stay interpretable on a shared machine: the
# server's CPU per request does not depend on how fast the clock ran, and "other" CPU (Redis,
# PostgreSQL, anything else running) shows how much the run was disturbed.
server_ticks() {
    local total=0 pid
    for pid in $(pgrep -g "$SERVER_PID"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

measure() {
    local file=$1 connections=$2 duration=$3 server0 busy0 all0 server1 busy1 all1 wrk_cpu
    shift 3
    server0=$(server_ticks)
    read -r busy0 all0 < <(machine_ticks)
    wrk_cpu=$( { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$connections" -d"$duration" --latency \
        -s bench/wrk.lua "$BASE" -- "$@" >"$file.txt"; } 2>&1 )
    server1=$(server_ticks)
    read -r busy1 all1 < <(machine_ticks)
    # server ticks, machine busy ticks, machine total ticks (all CPUs), ticks/s, wrk user+sys s
    echo "$((server1 - server0)) $((busy1 - busy0)) $((all1 - all0)) $(getconf CLK_TCK) $wrk_cpu" >"$file.cpu"
    awk '/^RESULT/ {printf "%.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors\n", $2, $3, $5, $7}' "$file.txt"
}

run() {
    local name=$1 round=$2
    shift 2
    printf 'bench: round %s %-9s %s: ' "$round" "$name" "$DURATION"
    measure "$OUT/$name-$round" "$CONNECTIONS" "$DURATION" "$@"
    sleep 2
}
# The endpoints take turns, round after round: on a shared machine, background load then hits
# all three alike instead of whichever endpoint happened to run during it.
for round in $(seq 1 "$ROUNDS"); do
    run health "$round" health
    run user_get "$round" user_get "$OUT/profile-ids.txt"
    run feed "$round" feed "$OUT/tokens.txt"
done
# Closed-loop wrk at 64 connections measures mostly queueing (latency ~ connections / req/s); a
# light run shows what one feed request costs when it does not wait behind 63 others.
if [[ $LOW_CONNECTIONS -gt 0 ]]; then
    printf 'bench: feed at %s connections (10s): ' "$LOW_CONNECTIONS"
    measure "$OUT/feed-light" "$LOW_CONNECTIONS" 10s feed "$OUT/tokens.txt"
fi

echo
{
    cat "$OUT/machine.txt"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
} >"$OUT/report.txt"
status=0
"$PY" bench/helpers.py report "$OUT" | tee -a "$OUT/report.txt" || status=$?
echo "bench: full wrk output and server log in $OUT"
exit "$status"
