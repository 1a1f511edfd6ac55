#!/usr/bin/env bash
# The whole topology under load (`make topology-bench`), on one machine, loopback only, bounded to 10 minutes:
#
#   1. two topologies from scripts/topology.sh, side by side: Citus (four local nodes) and plain PostgreSQL, each
#      with two app nodes (2 workers) behind HAProxy and a private Redis; a fresh database each
#   2. `sn seed` into both, same parameters: TOPOBENCH_USERS users (100k), 10 follows and 2 posts per user, one
#      celebrity followed by everybody
#   3. bench/topology_bench.py: the Citus / plain ratio runs (wrk), then on Citus all at once: TOPOBENCH_ONLINE
#      WebSocket clients (10k) through the balancer, a read-heavy mix (~50 reads per write), cross-node probes, the
#      celebrity posting every few seconds, a rising user promoted live, app node A SIGKILLed and restarted
#   4. everything started here is stopped, the databases dropped
#
# Results in bench/results/topology-<time>/ (topology.json, logs); the tables for docs/benchmarks.md on stdout.
# Needs: the citus extension (docs/architecture.md, "Citus"), haproxy and wrk (Debian packages), `make install`.
#
# Knobs: TOPOBENCH_USERS (100000), TOPOBENCH_ONLINE (10000), TOPOBENCH_DURATION (90 s of scenario),
# TOPOBENCH_MIX_RATE (150 requests/s), TOPOBENCH_ARGS (more bench/topology_bench.py options),
# TOPOBENCH_BUDGET (600 s for the whole run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

USERS=${TOPOBENCH_USERS:-100000}
ONLINE=${TOPOBENCH_ONLINE:-10000}
DURATION=${TOPOBENCH_DURATION:-90}
MIX_RATE=${TOPOBENCH_MIX_RATE:-150}
BUDGET=${TOPOBENCH_BUDGET:-600}
RUN_ID=$(date -u +%Y%m%d-%H%M%S)
OUT=$ROOT/bench/results/topology-$RUN_ID
BASE=${TOPOBENCH_DIR:-$ROOT/var/topology-bench}
PY=$ROOT/.venv/bin/python
STARTED=$(date +%s)

die() {
    echo "topology-bench: $*" >&2
    exit 1
}
say() { echo "topology-bench: $*"; }

missing=()
[[ -x $PY ]] || missing+=("the virtualenv (make install)")
command -v haproxy >/dev/null || missing+=("haproxy (apt-get install -y haproxy)")
command -v wrk >/dev/null || missing+=("wrk (apt-get install -y wrk)")
[[ -f "$(pg_config --pkglibdir 2>/dev/null)/citus.so" ]] ||
    missing+=("the citus extension for $(pg_config --version 2>/dev/null || echo PostgreSQL) (build it: docs/architecture.md, Citus)")
((${#missing[@]} == 0)) || die "missing: $(printf '%s; ' "${missing[@]}")"

# 10k sockets: one descriptor each in the load client, two in HAProxy, one in an app node.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT" "$BASE"
exec > >(tee "$OUT/output.txt") 2>&1

# The two topologies, on ports of their own; the bench's settings reach every app node.
# The load client opens 10k sockets from a few loopback addresses (through the balancer, which passes them on in
# X-Forwarded-For): the per-address socket and upgrade-rate limits, meant for the internet, are lifted (0 = off).
export SN_RATE_LIMIT_WRITE=0 SN_RATE_LIMIT_AUTH=0 SN_ACCESS_LOG=false SN_LOG_LEVEL=INFO
export SN_WS_MAX_PER_ADDRESS=0 SN_WS_CONNECT_RATE=0
# The slow-delivery log at the cross-node target: the node logs say where each late post waited.
export SN_SLOW_DELIVERY_MS=${SN_SLOW_DELIVERY_MS:-40}
# The balancer logs every request (haproxy-N.log in the results): the node that served it and HAProxy's timers.
export TOPOLOGY_LB_LOG=1
citus_env=(TOPOLOGY_DIR="$BASE/citus" TOPOLOGY_DATABASE=citus TOPOLOGY_DB_NAME="sn_topobench_$RUN_ID"
    TOPOLOGY_LB_PORT=9180 TOPOLOGY_NODE_A_PORT=9181 TOPOLOGY_NODE_B_PORT=9182 SN_BUS_PREFIX=sntopobench)
plain_env=(TOPOLOGY_DIR="$BASE/plain" TOPOLOGY_DATABASE=postgres TOPOLOGY_DB_NAME="sn_topobench_$RUN_ID"
    TOPOLOGY_LB_PORT=9280 TOPOLOGY_NODE_A_PORT=9281 TOPOLOGY_NODE_B_PORT=9282 SN_BUS_PREFIX=sntopobench)
topo() {
    local which=$1
    shift
    if [[ $which == citus ]]; then env "${citus_env[@]}" bash scripts/topology.sh "$@"; else env "${plain_env[@]}" bash scripts/topology.sh "$@"; fi
}

drop_databases() {
    "$PY" - "sn_topobench_$RUN_ID" "$(topo citus env 2>/dev/null | sed -n 's/^export SN_DATABASE_URL=//p')" \
        "$(topo citus env 2>/dev/null | sed -n 's/^export SN_CITUS_WORKERS=//p'),$(topo citus env 2>/dev/null | sed -n 's/^export SN_CITUS_HOT_WORKER=//p')" <<'EOF' || true
import asyncio, sys
import asyncpg

name, coordinator, workers = sys.argv[1], sys.argv[2], [w for w in sys.argv[3].split(",") if w]

async def drop(url: str) -> None:
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError):
        return
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()

async def main() -> None:
    await drop("postgresql://postgres@127.0.0.1:5432/postgres")
    if coordinator:
        base = coordinator.rsplit("/", 1)[0]
        await drop(base + "/postgres")
        for worker in workers:
            await drop(f"postgresql://postgres@{worker}/postgres")

asyncio.run(main())
EOF
}

cleanup() {
    set +e
    for dir in citus plain; do
        [[ -f $BASE/$dir/topology.env ]] || continue
        mkdir -p "$OUT/logs-$dir"
        cp "$BASE/$dir"/*.log "$OUT/logs-$dir/" 2>/dev/null
    done
    topo plain down >/dev/null
    topo citus down >/dev/null
    drop_databases
    say "stopped; results in $OUT"
}
trap cleanup EXIT

say "run $RUN_ID: $USERS users, $ONLINE online clients, ${DURATION}s scenario, mix $MIX_RATE req/s; code $(git rev-parse --short HEAD)"
say "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg), nofile $(ulimit -n)"
topo plain down >/dev/null 2>&1 || true
topo citus down >/dev/null 2>&1 || true
rm -f "$BASE"/citus/*.log "$BASE"/plain/*.log
topo citus up
topo plain up
topo citus env >"$OUT/citus.env"
topo plain env >"$OUT/plain.env"

for which in citus plain; do
    (
        set -a
        # shellcheck disable=SC1090
        source <(sed 's/^export //' "$OUT/$which.env")
        set +a
        [[ -n $SN_AMQP_URL ]] || unset SN_AMQP_URL
        say "seeding $which"
        "$PY" -m sn seed --users "$USERS" --follows-per-user 10 --posts-per-user 2 --celebrities 1 \
            --celebrity-followers $((USERS - 1)) | tail -1
    )
done

left=$((BUDGET - ($(date +%s) - STARTED) - 20))
((left > 60)) || die "no time left for the scenario after the setup ($left s)"
say "bench: $left s left of the ${BUDGET}s budget"
# shellcheck disable=SC2086
timeout --signal=INT "$left" "$PY" bench/topology_bench.py run \
    --citus-env "$OUT/citus.env" --citus-dir "$BASE/citus" --plain-env "$OUT/plain.env" \
    --stop-plain "env ${plain_env[*]} bash scripts/topology.sh down" \
    --out "$OUT" --online "$ONLINE" --duration "$DURATION" --mix-rate "$MIX_RATE" ${TOPOBENCH_ARGS:-}
say "done in $(($(date +%s) - STARTED)) s"
