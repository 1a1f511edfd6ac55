#!/usr/bin/env bash
# A local four-node Citus cluster for development and the `citus` tests: a coordinator, two
# regular workers and the hot worker, each a plain PostgreSQL instance on a free loopback port
# with shared_preload_libraries = 'citus'. No Docker. Needs the citus extension installed for
# the PostgreSQL whose binaries `pg_config` (or $PG_CONFIG) points at.
#
#   scripts/citus-local.sh up       initdb (first time), start the four nodes, create database `sn`
#                                   with the citus extension on each, print the URLs and settings
#   scripts/citus-local.sh env      print them again as `export` lines: eval "$(scripts/citus-local.sh env)"
#   scripts/citus-local.sh status   which nodes are running
#   scripts/citus-local.sh down     stop the four nodes (data is kept; `down --purge` deletes it)
#
# Data lives in $CITUS_LOCAL_DIR (default var/citus in the checkout; var/ is gitignored).
# PostgreSQL refuses to run as root: under root the nodes run as the `postgres` system user
# (override with CITUS_LOCAL_USER), which then owns the data directory.
#
# Then, against the printed coordinator:
#   SN_DATABASE_URL=<coordinator> SN_CITUS_WORKERS=<workers> SN_CITUS_HOT_WORKER=<hot> .venv/bin/sn cluster init
# and for the tests: SN_TEST_CITUS_URL=<coordinator> plus the same two SN_CITUS_* values.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CITUS_LOCAL_DIR:-$ROOT/var/citus}
NODES=(coordinator worker-1 worker-2 worker-hot)
DATABASE=${CITUS_LOCAL_DATABASE:-sn}
PG_CONFIG=${PG_CONFIG:-pg_config}

die() {
    echo "citus-local: $*" >&2
    exit 1
}

command -v "$PG_CONFIG" >/dev/null 2>&1 || die "pg_config not found: install the PostgreSQL server development package or set PG_CONFIG"
BIN=$("$PG_CONFIG" --bindir)
PKGLIB=$("$PG_CONFIG" --pkglibdir)
PG_VERSION=$("$PG_CONFIG" --version)

# Run a PostgreSQL binary as the unprivileged owner when we are root.
if [[ $(id -u) == 0 ]]; then
    RUN_AS=${CITUS_LOCAL_USER:-postgres}
    id "$RUN_AS" >/dev/null 2>&1 || die "running as root needs an unprivileged user to run PostgreSQL: create '$RUN_AS' or set CITUS_LOCAL_USER"
    as_owner() { runuser -u "$RUN_AS" -- "$@"; }
else
    as_owner() { "$@"; }
fi

port_of() { sed -n "s/^port = \([0-9]*\).*/\1/p" "$DIR/$1/postgresql.auto.conf" "$DIR/$1/postgresql.conf" 2>/dev/null | tail -1; }

running() { [[ -f $DIR/$1/postmaster.pid ]] && as_owner "$BIN/pg_ctl" -D "$DIR/$1" status >/dev/null 2>&1; }

free_ports() {
    # Four distinct free ports, chosen by the kernel (bind to port 0), held until all are picked.
    python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

psql_node() {
    local port=$1 db=$2
    shift 2
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

print_env() {
    local prefix=$1 c w1 w2 hot
    c=$(port_of coordinator)
    w1=$(port_of worker-1)
    w2=$(port_of worker-2)
    hot=$(port_of worker-hot)
    echo "${prefix}SN_DATABASE_URL=postgresql://postgres@127.0.0.1:$c/$DATABASE"
    echo "${prefix}SN_CITUS_WORKERS=127.0.0.1:$w1,127.0.0.1:$w2"
    echo "${prefix}SN_CITUS_HOT_WORKER=127.0.0.1:$hot"
    echo "${prefix}SN_TEST_CITUS_URL=postgresql://postgres@127.0.0.1:$c/postgres"
}

up() {
    [[ -f $PKGLIB/citus.so ]] || die "citus is not installed for $PG_VERSION (no $PKGLIB/citus.so); see docs/architecture.md (Citus) for building it"
    mkdir -p "$DIR"
    if [[ $(id -u) == 0 ]]; then
        chown "$RUN_AS" "$DIR"
        as_owner test -w "$DIR" || die "$RUN_AS cannot write $DIR (a parent directory is not traversable?): set CITUS_LOCAL_DIR, e.g. /tmp/sn-citus"
    fi
    local ports i=0 node port
    read -r -a ports <<<"$(free_ports)"
    for node in "${NODES[@]}"; do
        if [[ ! -f $DIR/$node/PG_VERSION ]]; then
            as_owner "$BIN/initdb" -D "$DIR/$node" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$DIR/$node.initdb.log" 2>&1 ||
                die "initdb of $node failed: see $DIR/$node.initdb.log"
            # wal_level = logical: shard moves and tenant isolation copy data with logical
            # replication, so writes continue while a hot user's shards move. Sockets go in the
            # data directory, not /var/run/postgresql, so the system PostgreSQL is not disturbed.
            # Citus decodes with its own output plugin, which recent minor releases (15.20) accept
            # only when listed in output_plugin_libraries; older ones lack the setting, hence the
            # check below.
            cat >>"$DIR/$node/postgresql.conf" <<EOF

# --- scripts/citus-local.sh ($node) ---
port = ${ports[$i]}
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/$node'
shared_preload_libraries = 'citus'
wal_level = logical
max_connections = 300
max_replication_slots = 20
max_wal_senders = 20
citus.node_conninfo = 'sslmode=disable'
EOF
            # (grep reads everything: with pipefail, grep -q would make the pipe fail on SIGPIPE)
            if [[ $(as_owner "$BIN/postgres" --describe-config 2>/dev/null | grep -c '^output_plugin_libraries') != 0 ]]; then
                echo "output_plugin_libraries = 'pgoutput, test_decoding, citus'" >>"$DIR/$node/postgresql.conf"
            fi
        fi
        i=$((i + 1))
    done
    for node in "${NODES[@]}"; do
        port=$(port_of "$node")
        if running "$node"; then
            echo "citus-local: $node already running on 127.0.0.1:$port"
            continue
        fi
        if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)) != 0)"; then
            die "port $port of $node is taken by another process; stop it or remove $DIR/$node to get new ports"
        fi
        as_owner "$BIN/pg_ctl" -D "$DIR/$node" -l "$DIR/$node.log" -w -t 60 start >/dev/null ||
            die "$node did not start: see $DIR/$node.log"
    done
    for node in "${NODES[@]}"; do
        port=$(port_of "$node")
        if [[ -z $(psql_node "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'") ]]; then
            psql_node "$port" postgres -c "CREATE DATABASE \"$DATABASE\""
        fi
        # In `postgres` too: the tests connect there to create their own databases.
        psql_node "$port" "$DATABASE" -c "CREATE EXTENSION IF NOT EXISTS citus" 2>/dev/null
        psql_node "$port" postgres -c "CREATE EXTENSION IF NOT EXISTS citus" 2>/dev/null
    done
    echo "citus-local: 4 nodes up ($PG_VERSION, citus $(psql_node "$(port_of coordinator)" "$DATABASE" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'citus'"), data in $DIR)"
    for node in "${NODES[@]}"; do
        printf '  %-12s 127.0.0.1:%s  log %s\n' "$node" "$(port_of "$node")" "$DIR/$node.log"
    done
    echo
    print_env ""
    echo
    echo "next: register the nodes and distribute the schema (idempotent):"
    echo "  $(print_env "" | head -3 | tr '\n' ' ').venv/bin/sn cluster init"
}

down() {
    local node
    [[ -d $DIR ]] || {
        echo "citus-local: nothing at $DIR"
        return 0
    }
    for node in "${NODES[@]}"; do
        if running "$node"; then
            as_owner "$BIN/pg_ctl" -D "$DIR/$node" -m fast -w -t 60 stop >/dev/null && echo "citus-local: stopped $node"
        fi
    done
    if [[ ${1:-} == --purge ]]; then
        rm -rf "$DIR"
        echo "citus-local: removed $DIR"
    fi
}

status() {
    local node
    for node in "${NODES[@]}"; do
        if running "$node"; then
            printf '%-12s running  127.0.0.1:%s\n' "$node" "$(port_of "$node")"
        else
            printf '%-12s stopped\n' "$node"
        fi
    done
}

case ${1:-} in
up) up ;;
down) down "${2:-}" ;;
env)
    [[ -f $DIR/coordinator/postgresql.conf ]] || die "no cluster at $DIR: run \`scripts/citus-local.sh up\` first"
    print_env "export "
    ;;
status) status ;;
*)
    echo "usage: scripts/citus-local.sh up | down [--purge] | env | status" >&2
    exit 2
    ;;
esac
