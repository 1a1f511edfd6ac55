#!/usr/bin/env bash
# Real-time (WebSocket) benchmarks: idle memory per connection, fan-out to 10k online followers,
# isolation of normal posts from a celebrity fan-out, and a 10k-client reconnect storm, against
# `sn serve` (2 workers) next to two yardsticks: a bare Sanic WebSocket echo app (memory) and a
# websockets server calling websockets.broadcast (fan-out). Run it with `bash bench/ws_run.sh`.
#
# Steps: raise the open-files limit, check the listen backlog limits; create the database
# (default sn_wsbench on the local PostgreSQL), migrate, seed 100,001 users of whom one has
# 100,000 followers and 10,001 more of whom one has 10,000 followers (`sn seed`, COPY); flush Redis
# db 13; then one server at a time on a free loopback port: the Sanic echo app (memory), the
# websockets broadcast server (memory, broadcast), sn (memory, fan-out, storm, isolation). The
# load client is bench/ws_load.py (raw asyncio protocol on uvloop, in WSBENCH_SHARDS processes).
# Tokens are minted locally with the server's secret instead of logging 10k users in. Everything
# started here is stopped on exit; the database is dropped unless WSBENCH_KEEP_DB=1.
#
# Knobs (environment):
#   SN_WSBENCH_DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/sn_wsbench (the name must
#                            start with sn_wsbench: it is dropped and re-created)
#   SN_WSBENCH_REDIS_URL     a Redis database to use (flushed). Unset: a private redis-server on a free
#                            port when `redis-server` is installed (stopped on exit), else
#                            redis://127.0.0.1:6379/13. Why private: servers sharing a Redis database
#                            share the pipeline's streams and consumer groups, so another server on
#                            db 13 consumes (and loses) this run's events; the run refuses a database
#                            in which another live server publishes its stats.
#   WSBENCH_CONNECTIONS      online clients, default 10000
#   WSBENCH_SHARDS           load-client processes, default 2
#   WSBENCH_CONCURRENCY      handshakes in flight per load process while connecting, default 32
#                            (a steady ramp-up; the reconnect storms open everything at once)
#   WSBENCH_SCENARIOS        default "echo broadcast sn"; WSBENCH_SN_STEPS default
#                            "memory,fanout,storm,isolation"
#   WSBENCH_POSTS            fan-out rounds, default 5 (the first on cold caches)
#   WSBENCH_KEEP_DB=1        keep the database; WSBENCH_SKIP_SEED=1 reuses a kept one
#   Any SN_* setting is passed through to the sn server (e.g. SN_ACCESS_LOG=false).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${WSBENCH_CONNECTIONS:-10000}
SHARDS=${WSBENCH_SHARDS:-2}
CONCURRENCY=${WSBENCH_CONCURRENCY:-32}
SCENARIOS=${WSBENCH_SCENARIOS:-echo broadcast sn}
SN_STEPS=${WSBENCH_SN_STEPS:-memory,fanout,storm,isolation}
DATABASE_URL=${SN_WSBENCH_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/sn_wsbench}
REDIS_URL=${SN_WSBENCH_REDIS_URL:-}
BACKLOG=${SN_BACKLOG:-4096}
PY=${BENCH_PYTHON:-.venv/bin/python}
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

if [[ ! -x $PY ]]; then
    echo "ws-bench: $PY not found: run \`make install\` first (or set BENCH_PYTHON)" >&2
    exit 1
fi

# -- limits ---------------------------------------------------------------------------------------
# Every socket is a file descriptor on both ends; the server's workers and the broadcast server
# (one process) each hold up to all of them. Raise the soft limit as far as the hard one allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if ((NOFILE < CONNECTIONS + 1024)); then
    echo "ws-bench: open-files limit $NOFILE is below $CONNECTIONS connections + 1024; raise the hard limit" >&2
    exit 1
fi
SOMAXCONN=$(cat /proc/sys/net/core/somaxconn)
SYN_BACKLOG=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)
if ((SOMAXCONN < BACKLOG)); then
    echo "ws-bench: WARNING: net.core.somaxconn=$SOMAXCONN caps SN_BACKLOG=$BACKLOG" \
        "(sysctl -w net.core.somaxconn=$BACKLOG)" >&2
fi

OUT=bench/results/ws-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
SERVER_PID=""
REDIS_PID=""
REDIS_OURS=0 # set once the database is known to be free: only then may the cleanup flush it
# The machine may be shared: a load-average trace next to the results tells a quiet run from a
# disturbed one.
(while sleep 5; do echo "$(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"; done) >"$OUT/loadavg.txt" &
LOADAVG_PID=$!

stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        # Started as the leader of its own process group (setsid): the group is the server and
        # its workers, and nothing else.
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_server
    kill "$LOADAVG_PID" 2>/dev/null || true
    if [[ ${WSBENCH_KEEP_DB:-0} != 1 ]]; then
        "$PY" bench/ws_load.py drop-db "$DATABASE_URL" || true
    fi
    if [[ -n $REDIS_PID ]]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
    elif ((REDIS_OURS)); then
        "$PY" bench/helpers.py flush-redis "$REDIS_URL" >/dev/null 2>&1 || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_log() { # file pattern count timeout: until `pattern` appears `count` times in `file`
    local deadline=$((SECONDS + $4))
    while (($(grep -c -- "$2" "$1" 2>/dev/null || true) < $3)); do
        if ((SECONDS > deadline)) || ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "ws-bench: server did not start (see $1)" >&2
            tail -20 "$1" >&2
            exit 1
        fi
        sleep 0.2
    done
}

if [[ -z $REDIS_URL ]] && command -v redis-server >/dev/null 2>&1; then
    REDIS_PORT=$("$PY" bench/helpers.py free-port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
    for _ in $(seq 1 50); do
        "$PY" bench/helpers.py flush-redis "$REDIS_URL" >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/13}
if ! "$PY" bench/ws_load.py check-redis "$REDIS_URL"; then
    exit 1
fi
REDIS_OURS=1

echo "ws-bench: results in $OUT"
{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cpu(s): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "python: $("$PY" -V 2>&1); $("$PY" -c 'import sanic, websockets, uvloop; print(f"sanic {sanic.__version__}, websockets {websockets.__version__}, uvloop {uvloop.__version__}")')"
    echo "redis: $REDIS_URL$([[ -n $REDIS_PID ]] && echo " (private redis-server, pid $REDIS_PID)")"
    echo "limits: nofile $NOFILE, net.core.somaxconn $SOMAXCONN, tcp_max_syn_backlog $SYN_BACKLOG, SN_BACKLOG $BACKLOG"
    echo "clients: $CONNECTIONS connections over $SHARDS load processes (bench/ws_load.py), $CONCURRENCY handshakes in flight each"
    # The code measured: other people commit to this checkout while benchmarks run.
    echo "code: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), uncommitted changes under sn/:" \
        "$(git --no-optional-locks status --porcelain -- sn 2>/dev/null | wc -l) file(s)"
} | tee "$OUT/machine.txt"

LOAD=("$PY" bench/ws_load.py)
COMMON=(--connections "$CONNECTIONS" --shards "$SHARDS" --concurrency "$CONCURRENCY")

# -- yardstick 1: bare Sanic echo (memory) ----------------------------------------------------------
if [[ " $SCENARIOS " == *" echo "* ]]; then
    PORT=$("$PY" bench/helpers.py free-port)
    setsid "$PY" bench/ws_echo_sanic.py "$PORT" 2 >"$OUT/echo-server.log" 2>&1 &
    SERVER_PID=$!
    wait_log "$OUT/echo-server.log" "Worker ready" 2 30
    "${LOAD[@]}" memory --port "$PORT" --label sanic-echo --log "$OUT/echo-server.log" "${COMMON[@]}" \
        --out "$OUT/echo.json" | tee "$OUT/echo.txt"
    stop_server
fi

# -- yardstick 2: websockets.broadcast (memory, fan-out) ---------------------------------------------
if [[ " $SCENARIOS " == *" broadcast "* ]]; then
    PORT=$("$PY" bench/helpers.py free-port)
    setsid "$PY" bench/ws_broadcast_server.py "$PORT" >"$OUT/broadcast-server.log" 2>&1 &
    SERVER_PID=$!
    wait_log "$OUT/broadcast-server.log" "broadcast server ready" 1 30
    "${LOAD[@]}" broadcast --port "$PORT" --pid "$SERVER_PID" "${COMMON[@]}" --out "$OUT/broadcast.json" |
        tee "$OUT/broadcast.txt"
    stop_server
fi

# -- sn ---------------------------------------------------------------------------------------------
if [[ " $SCENARIOS " == *" sn "* ]]; then
    if [[ ${WSBENCH_SKIP_SEED:-0} == 1 ]]; then
        echo "ws-bench: reusing the seeded database (WSBENCH_SKIP_SEED=1)"
    else
        "$PY" bench/ws_load.py recreate-db "$DATABASE_URL"
        export SN_DATABASE_URL=$DATABASE_URL SN_REDIS_URL=$REDIS_URL
        "$PY" -m sn migrate
        # The isolation celebrity (100k followers), then the fan-out author (10k followers) in a
        # second population: users of one seed follow nobody of the other.
        "$PY" -m sn seed --users 100001 --follows-per-user 0 --posts-per-user 0 \
            --celebrities 1 --celebrity-followers 100000 | tee "$OUT/seed.txt"
        "$PY" -m sn seed --users $((CONNECTIONS + 1)) --follows-per-user 0 --posts-per-user 0 \
            --celebrities 1 --celebrity-followers "$CONNECTIONS" | tee -a "$OUT/seed.txt"
    fi
    "$PY" bench/helpers.py flush-redis "$REDIS_URL"
    if command -v redis-cli >/dev/null 2>&1; then
        # What held Redis during the run: commands over 5 ms, and latency events over 10 ms.
        redis-cli -u "$REDIS_URL" config set slowlog-log-slower-than 5000 >/dev/null || true
        redis-cli -u "$REDIS_URL" config set latency-monitor-threshold 10 >/dev/null || true
        redis-cli -u "$REDIS_URL" slowlog reset >/dev/null || true
    fi
    PORT=$("$PY" bench/helpers.py free-port)
    SN_DATABASE_URL=$DATABASE_URL SN_REDIS_URL=$REDIS_URL SN_JWT_SECRET=$SECRET SN_HOST=127.0.0.1 SN_PORT=$PORT \
        SN_WORKERS=2 SN_BACKLOG=$BACKLOG SN_RATE_LIMIT_AUTH=0 SN_RATE_LIMIT_WRITE=0 \
        SN_WS_MAX_PER_ADDRESS=0 SN_WS_CONNECT_RATE=0 SN_WS_MAX_PER_USER=0 \
        setsid "$PY" -m sn serve >"$OUT/sn-server.log" 2>&1 &
    SERVER_PID=$!
    wait_log "$OUT/sn-server.log" "worker ready" 2 60
    "${LOAD[@]}" sn --port "$PORT" --log "$OUT/sn-server.log" --db "$DATABASE_URL" --secret "$SECRET" \
        --steps "$SN_STEPS" --posts "${WSBENCH_POSTS:-5}" "${COMMON[@]}" --out "$OUT/sn.json" | tee "$OUT/sn.txt"
    if command -v redis-cli >/dev/null 2>&1; then
        {
            echo "# SLOWLOG GET 64 (id, unix time, microseconds, command)"
            redis-cli -u "$REDIS_URL" slowlog get 64 || true
            echo "# LATENCY LATEST (event, unix time, latest ms, max ms)"
            redis-cli -u "$REDIS_URL" latency latest || true
        } >"$OUT/redis-diagnostics.txt" 2>&1
    fi
    stop_server
fi

echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
status=0
"$PY" bench/ws_load.py report "$OUT" || status=$?
echo "ws-bench: full output, JSON results and server logs in $OUT"
exit "$status"
