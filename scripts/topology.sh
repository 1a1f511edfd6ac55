#!/usr/bin/env bash
# The whole topology as local processes on one machine, without Docker: the shape of deploy/compose and deploy/k8s.
#
#   Citus: the four nodes of scripts/citus-local.sh (coordinator, worker-1, worker-2, worker-hot), `sn cluster init`
#   Redis: a private redis-server on a free port (or TOPOLOGY_REDIS_URL); RabbitMQ: the machine's when it answers
#   two app nodes: `sn serve` with TOPOLOGY_WORKERS (2) workers each, node ids node-a and node-b, on two ports
#   HAProxy in front (deploy/haproxy/haproxy.cfg): round-robin (WebSockets: the node with the fewest), health checks on /ready
#
#   scripts/topology.sh up            start what is not running; print the balancer's URL
#   scripts/topology.sh down          stop everything `up` started (Citus data is kept; `down --purge` deletes it)
#   scripts/topology.sh status        what is running
#   scripts/topology.sh env           the settings as `export` lines: eval "$(scripts/topology.sh env)"
#   scripts/topology.sh kill NODE     SIGKILL app node a or b (the node loss of bench/topology_bench.py)
#   scripts/topology.sh start NODE    start app node a or b again, wait until it is ready
#
# When the citus extension is not installed, `up` says what is missing and runs the rest on plain PostgreSQL
# (TOPOLOGY_PG_URL): two app nodes behind the balancer. TOPOLOGY_DATABASE=postgres asks for that on purpose.
#
# Knobs (environment): TOPOLOGY_DIR (default var/topology; a second topology needs its own), TOPOLOGY_LB_PORT (9080),
# TOPOLOGY_NODE_A_PORT (9081), TOPOLOGY_NODE_B_PORT (9082), TOPOLOGY_WORKERS (2), TOPOLOGY_DATABASE (auto | citus |
# postgres), TOPOLOGY_DB_NAME (sn_topology), TOPOLOGY_PG_URL (postgresql://postgres@127.0.0.1:5432/postgres),
# TOPOLOGY_REDIS_URL, TOPOLOGY_AMQP_URL (default the machine's RabbitMQ on 5672 if it answers; "none": the Redis bus),
# TOPOLOGY_LB_INSTANCES (2 HAProxy processes on one port), TOPOLOGY_LB_MAXCONN (per process; default: what the
# open-files limit allows), TOPOLOGY_LB_LOG (1: a line per request in haproxy-N.log). Any other SN_* variable
# reaches the app nodes as it is.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${TOPOLOGY_DIR:-$ROOT/var/topology}
LB_PORT=${TOPOLOGY_LB_PORT:-9080}
NODE_A_PORT=${TOPOLOGY_NODE_A_PORT:-9081}
NODE_B_PORT=${TOPOLOGY_NODE_B_PORT:-9082}
WORKERS=${TOPOLOGY_WORKERS:-2}
DB_NAME=${TOPOLOGY_DB_NAME:-sn_topology}
PG_URL=${TOPOLOGY_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
LB_INSTANCES=${TOPOLOGY_LB_INSTANCES:-2}
SN=${SN_BIN:-$ROOT/.venv/bin/sn}
PYTHON=${TOPOLOGY_PYTHON:-$ROOT/.venv/bin/python}
HAPROXY_CFG=$ROOT/deploy/haproxy/haproxy.cfg
STATE=$DIR/topology.env

say() { echo "topology: $*"; }
die() {
    echo "topology: $*" >&2
    exit 1
}

port_open() { "$PYTHON" -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $1)) != 0)"; }

free_port() { "$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_port() {
    case $1 in
    a) echo "$NODE_A_PORT" ;;
    b) echo "$NODE_B_PORT" ;;
    *) die "no app node '$1' (a or b)" ;;
    esac
}

# Wait until $1 answers 200 (up to $2 seconds).
wait_ready() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
}

citus_installed() { [[ -f "$(pg_config --pkglibdir 2>/dev/null)/citus.so" ]]; }

# --- storage ---------------------------------------------------------------------------------------------------------

start_citus() {
    # Nodes that were running before `up` are not ours to stop on `down`.
    if ! CITUS_LOCAL_DATABASE=$DB_NAME bash "$ROOT/scripts/citus-local.sh" status | grep -q stopped; then
        say "citus: the four nodes were already running"
    else
        touch "$DIR/citus.started"
    fi
    CITUS_LOCAL_DATABASE=$DB_NAME bash "$ROOT/scripts/citus-local.sh" up >"$DIR/citus-local.log" 2>&1 ||
        die "scripts/citus-local.sh up failed: see $DIR/citus-local.log"
    # shellcheck disable=SC1090
    source <(CITUS_LOCAL_DATABASE=$DB_NAME bash "$ROOT/scripts/citus-local.sh" env)
    DATABASE_URL=$SN_DATABASE_URL
    CITUS_WORKERS=$SN_CITUS_WORKERS
    CITUS_HOT=$SN_CITUS_HOT_WORKER
}

start_postgres() {
    DATABASE_URL=$("$PYTHON" - "$PG_URL" "$DB_NAME" <<'EOF'
import asyncio, sys
from urllib.parse import urlsplit, urlunsplit
import asyncpg

admin, name = sys.argv[1], sys.argv[2]

async def main() -> None:
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()

try:
    asyncio.run(main())
except (OSError, asyncpg.PostgresError) as exc:
    sys.exit(f"topology: PostgreSQL at {admin} is not usable: {exc}")
print(urlunsplit(urlsplit(admin)._replace(path="/" + name)))
EOF
    )
    CITUS_WORKERS=""
    CITUS_HOT=""
}

start_redis() {
    if [[ -n ${TOPOLOGY_REDIS_URL:-} ]]; then
        REDIS_URL=$TOPOLOGY_REDIS_URL
        return
    fi
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install -y redis-server) and TOPOLOGY_REDIS_URL is not set"
    local port
    if pid_alive "$DIR/redis.pid"; then
        port=$(cat "$DIR/redis.port")
    else
        # Private, so that nothing else on the machine shares its streams and consumer groups.
        port=$(free_port)
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$DIR" \
            --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid" --maxclients 20000 >/dev/null
        echo "$port" >"$DIR/redis.port"
        for _ in $(seq 50); do
            port_open "$port" && break
            sleep 0.1
        done
    fi
    REDIS_URL=redis://127.0.0.1:$port/0
}

pick_amqp() {
    AMQP_URL=${TOPOLOGY_AMQP_URL:-}
    if [[ $AMQP_URL == none ]]; then
        AMQP_URL=""
    elif [[ -z $AMQP_URL ]] && port_open 5672; then
        AMQP_URL=amqp://guest:guest@127.0.0.1:5672/
    fi
}

write_state() {
    local secret
    secret=$( (grep -s '^SN_JWT_SECRET=' "$STATE" || true) | cut -d= -f2-)
    [[ -n $secret ]] || secret=$("$PYTHON" -c "import secrets; print(secrets.token_hex(32))")
    umask 077
    cat >"$STATE" <<EOF
TOPOLOGY_MODE=$MODE
TOPOLOGY_LB_URL=http://127.0.0.1:$LB_PORT
TOPOLOGY_NODE_A_URL=http://127.0.0.1:$NODE_A_PORT
TOPOLOGY_NODE_B_URL=http://127.0.0.1:$NODE_B_PORT
SN_DATABASE_URL=$DATABASE_URL
SN_REDIS_URL=$REDIS_URL
SN_AMQP_URL=$AMQP_URL
SN_CITUS_WORKERS=$CITUS_WORKERS
SN_CITUS_HOT_WORKER=$CITUS_HOT
SN_JWT_SECRET=$secret
SN_BUS_PREFIX=${SN_BUS_PREFIX:-sntopo}
EOF
    umask 022
}

# --- app nodes and the balancer ---------------------------------------------------------------------------------------

start_node() {
    local name=$1 port
    port=$(node_port "$name")
    if pid_alive "$DIR/node-$name.pid"; then
        say "node-$name already running on 127.0.0.1:$port"
        return
    fi
    port_open "$port" && die "port $port (node-$name) is taken by another process: set TOPOLOGY_NODE_${name^^}_PORT"
    local lines
    lines=$( (cat "$DIR/node-$name.log" 2>/dev/null || true) | wc -l)
    # The state file's values win over the caller's environment: both nodes must share one configuration.
    # SN_PROXIES_COUNT=1: HAProxy adds X-Forwarded-For, as ingress-nginx does in k8s (sn-config.env).
    (
        set -a
        # shellcheck disable=SC1090
        source "$STATE"
        set +a
        export SN_NODE_ID=node-$name SN_HOST=127.0.0.1 SN_PORT=$port SN_WORKERS=$WORKERS
        export SN_PROXIES_COUNT=${SN_PROXIES_COUNT:-1}
        [[ -n $SN_AMQP_URL ]] || unset SN_AMQP_URL
        [[ -n $SN_CITUS_WORKERS ]] || unset SN_CITUS_WORKERS SN_CITUS_HOT_WORKER
        # A session of its own, so that `kill` can SIGKILL the manager and its workers as one group.
        exec setsid "$SN" serve >>"$DIR/node-$name.log" 2>&1 </dev/null
    ) &
    echo $! >"$DIR/node-$name.pid"
    wait_ready "http://127.0.0.1:$port/ready" "${TOPOLOGY_START_TIMEOUT:-60}" ||
        die "node-$name did not become ready: see $DIR/node-$name.log"
    # /ready answers from the first worker up; wait for every worker's "worker ready" line of this start.
    local i
    for i in $(seq 300); do
        (($(tail -n +$((lines + 1)) "$DIR/node-$name.log" | grep -c 'worker ready') >= WORKERS)) && break
        sleep 0.1
    done
    ((i < 300)) || die "node-$name: not all $WORKERS workers started: see $DIR/node-$name.log"
    say "node-$name ready on 127.0.0.1:$port ($WORKERS workers)"
}

kill_node() {
    local name=$1 pid
    node_port "$name" >/dev/null
    pid_alive "$DIR/node-$name.pid" || die "node-$name is not running"
    pid=$(cat "$DIR/node-$name.pid")
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    rm -f "$DIR/node-$name.pid"
    say "node-$name SIGKILLed (process group $pid)"
}

stop_node() {
    local name=$1 pid
    pid_alive "$DIR/node-$name.pid" || return 0
    pid=$(cat "$DIR/node-$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$DIR/node-$name.pid"
    say "stopped node-$name"
}

start_balancer() {
    if ! command -v haproxy >/dev/null; then
        say "haproxy not found (Debian: apt-get install -y haproxy): no balancer; use the app nodes directly"
        return
    fi
    # One HAProxy process holds two descriptors per proxied connection and cannot go past the hard open-files
    # limit (20000 on this machine, not raisable without privileges), so TOPOLOGY_LB_INSTANCES processes share
    # the port (SO_REUSEPORT, HAProxy's default: the kernel spreads new connections over them), as several
    # ingress controller replicas behind one address would.
    local maxconn=${TOPOLOGY_LB_MAXCONN:-$((($(ulimit -Hn) - 200) / 2))} i started=0
    for i in $(seq "$LB_INSTANCES"); do
        if pid_alive "$DIR/haproxy-$i.pid"; then
            continue
        fi
        ((i > 1 || started)) || ! port_open "$LB_PORT" || die "port $LB_PORT (the balancer) is taken by another process: set TOPOLOGY_LB_PORT"
        if [[ ${TOPOLOGY_LB_LOG:-0} == 1 ]]; then
            # A request log: HAProxy logs to stderr only in the foreground, so it runs in a session of its own,
            # in the background, its pid taken from the shell. -c first, so that a bad config still fails here.
            SN_LB_BIND=127.0.0.1:$LB_PORT SN_NODE_A=127.0.0.1:$NODE_A_PORT SN_NODE_B=127.0.0.1:$NODE_B_PORT \
                SN_LB_MAXCONN=$maxconn SN_LB_LOG=stderr haproxy -c -q -f "$HAPROXY_CFG" 2>>"$DIR/haproxy.log" ||
                die "haproxy did not start: see $DIR/haproxy.log"
            SN_LB_BIND=127.0.0.1:$LB_PORT SN_NODE_A=127.0.0.1:$NODE_A_PORT SN_NODE_B=127.0.0.1:$NODE_B_PORT \
                SN_LB_MAXCONN=$maxconn SN_LB_LOG=stderr setsid haproxy -db -f "$HAPROXY_CFG" \
                </dev/null >>"$DIR/haproxy-$i.log" 2>&1 &
            echo $! >"$DIR/haproxy-$i.pid"
        else
            SN_LB_BIND=127.0.0.1:$LB_PORT SN_NODE_A=127.0.0.1:$NODE_A_PORT SN_NODE_B=127.0.0.1:$NODE_B_PORT \
                SN_LB_MAXCONN=$maxconn haproxy -D -p "$DIR/haproxy-$i.pid" -f "$HAPROXY_CFG" 2>>"$DIR/haproxy.log" ||
                die "haproxy did not start: see $DIR/haproxy.log"
        fi
        started=$((started + 1))
    done
    wait_ready "http://127.0.0.1:$LB_PORT/ready" 30 || die "the balancer on 127.0.0.1:$LB_PORT does not reach a ready node"
    say "haproxy on 127.0.0.1:$LB_PORT ($LB_INSTANCES processes, $maxconn connections each) -> node-a, node-b (round-robin, WebSockets leastconn, /ready checks)"
}

stop_balancer() {
    local pidfile
    for pidfile in "$DIR"/haproxy-*.pid; do
        [[ -f $pidfile ]] || continue
        if pid_alive "$pidfile"; then
            kill "$(cat "$pidfile")" && say "stopped haproxy ($(basename "$pidfile" .pid))"
        fi
        rm -f "$pidfile"
    done
}

# --- commands ---------------------------------------------------------------------------------------------------------

up() {
    [[ -x $SN ]] || die "$SN not found: run \`make install\` first"
    mkdir -p "$DIR"
    # 10k WebSockets through the balancer: two descriptors each in HAProxy, one in a node.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local want=${TOPOLOGY_DATABASE:-auto}
    case $want in
    auto | citus)
        if citus_installed; then
            MODE=citus
        else
            echo "topology: the citus extension is not installed for $(pg_config --version 2>/dev/null || echo 'PostgreSQL (no pg_config)')" \
                "(no $(pg_config --pkglibdir 2>/dev/null || echo '<pkglibdir>')/citus.so): build it from source, see docs/architecture.md (Citus)." >&2
            [[ $want == citus ]] && exit 1
            echo "topology: continuing without Citus: two app nodes on plain PostgreSQL ($PG_URL, database $DB_NAME) behind the balancer" >&2
            MODE=postgres
        fi
        ;;
    postgres) MODE=postgres ;;
    *) die "TOPOLOGY_DATABASE must be auto, citus or postgres" ;;
    esac
    if [[ $MODE == citus ]]; then start_citus; else start_postgres; fi
    start_redis
    pick_amqp
    write_state
    (
        set -a
        # shellcheck disable=SC1090
        source "$STATE"
        set +a
        [[ -n $SN_CITUS_WORKERS ]] || unset SN_CITUS_WORKERS SN_CITUS_HOT_WORKER
        "$SN" cluster init
    ) >"$DIR/cluster-init.log" 2>&1 || die "sn cluster init failed: see $DIR/cluster-init.log"
    say "storage: $MODE ($(grep -m1 '^mode:' "$DIR/cluster-init.log")), redis $REDIS_URL, bus $([[ -n $AMQP_URL ]] && echo rabbitmq || echo 'redis streams')"
    start_node a
    start_node b
    start_balancer
    echo
    if command -v haproxy >/dev/null; then
        say "up: http://127.0.0.1:$LB_PORT (logs and state in $DIR)"
    else
        say "up without a balancer: http://127.0.0.1:$NODE_A_PORT and http://127.0.0.1:$NODE_B_PORT"
    fi
}

down() {
    [[ -d $DIR ]] || {
        say "nothing at $DIR"
        return 0
    }
    stop_balancer
    stop_node a
    stop_node b
    if pid_alive "$DIR/redis.pid"; then
        kill "$(cat "$DIR/redis.pid")" && say "stopped redis"
    fi
    if [[ -f $DIR/citus.started ]]; then
        bash "$ROOT/scripts/citus-local.sh" down ${1:+"$1"}
        rm -f "$DIR/citus.started"
    fi
}

status() {
    local pidfile name
    for pidfile in "$DIR"/haproxy-*.pid "$DIR/node-a.pid" "$DIR/node-b.pid" "$DIR/redis.pid"; do
        name=$(basename "$pidfile" .pid)
        [[ $name != "haproxy-*" ]] || name=haproxy
        if pid_alive "$pidfile"; then
            printf '%-9s running (pid %s)\n' "$name" "$(cat "$pidfile")"
        else
            printf '%-9s stopped\n' "$name"
        fi
    done
    [[ -f $STATE ]] && sed -n 's/^TOPOLOGY_MODE=/storage  /p' "$STATE"
    return 0
}

case ${1:-} in
up) up ;;
down) down "${2:-}" ;;
status) status ;;
env)
    [[ -f $STATE ]] || die "no topology at $DIR: run \`scripts/topology.sh up\` first"
    sed 's/^/export /' "$STATE"
    ;;
kill) kill_node "${2:?usage: scripts/topology.sh kill a|b}" ;;
start)
    [[ -f $STATE ]] || die "no topology at $DIR: run \`scripts/topology.sh up\` first"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    start_node "${2:?usage: scripts/topology.sh start a|b}"
    ;;
*)
    echo "usage: scripts/topology.sh up | down [--purge] | status | env | kill a|b | start a|b" >&2
    exit 2
    ;;
esac
