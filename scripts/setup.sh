#!/usr/bin/env bash
# Start the whole sn system with Docker Compose (deploy/compose/compose.yaml): a Citus cluster (coordinator,
# two workers, the hot worker), Redis, RabbitMQ, `sn cluster init`, and the app on http://localhost:9000.
#
#   scripts/setup.sh            keep the data of a previous run (containers are recreated)
#   scripts/setup.sh --fresh    remove the previous run's volumes first (scripts/cleanup.sh), start empty
#
# Steps: check Docker and Compose; create deploy/compose/.env with fresh secrets if there is none; clean up the
# previous run's containers; build the image; start everything (Compose starts cluster-init once the database
# nodes are healthy, and the app once cluster-init succeeded); wait until every server is healthy; print the URL.
# Environment: SETUP_TIMEOUT (seconds to wait for health, default 300); APP_HOST_PORT etc. override .env.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_DIR="$ROOT/deploy/compose"
ENV_FILE="$COMPOSE_DIR/.env"
TIMEOUT="${SETUP_TIMEOUT:-300}"
SERVERS=(citus-coordinator citus-worker-1 citus-worker-2 citus-worker-hot redis rabbitmq app)

log() { printf '==> %s\n' "$*"; }
die() {
    printf 'setup: %s\n' "$*" >&2
    exit 1
}

fresh=0
for arg in "$@"; do
    case "$arg" in
        --fresh) fresh=1 ;;
        -h | --help)
            sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

# --- Docker and Compose ------------------------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || die "docker not found: install Docker Engine or Docker Desktop first"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon: is it running, and may $(id -un) use it?"
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "Docker Compose not found: install the compose plugin (\`docker compose version\` must work)"
fi
compose_version="$("${COMPOSE[@]}" version --short 2>/dev/null || true)"
compose_version="${compose_version#v}"
IFS=. read -r compose_major compose_minor _ <<<"$compose_version"
if ! [[ "$compose_major" =~ ^[0-9]+$ && "$compose_minor" =~ ^[0-9]+$ ]] ||
    ((compose_major < 2 || (compose_major == 2 && compose_minor < 24))); then
    die "Docker Compose ${compose_version:-?} is too old: 2.24 or newer is needed"
fi
COMPOSE+=(--project-directory "$COMPOSE_DIR" -f "$COMPOSE_DIR/compose.yaml")
log "using Docker Compose $compose_version, $(docker version --format 'Docker Engine {{.Server.Version}}')"

# --- Settings: deploy/compose/.env --------------------------------------------------------------------------------
random_hex() {
    openssl rand -hex "$1" 2>/dev/null ||
        python3 -c 'import secrets, sys; print(secrets.token_hex(int(sys.argv[1])))' "$1" 2>/dev/null ||
        od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}
env_value() { # KEY DEFAULT: the value in .env (the last one wins, as in Compose)
    local value
    value="$(grep -E "^$1=" "$ENV_FILE" | tail -n 1 | cut -d= -f2- || true)"
    printf '%s' "${value:-$2}"
}

if [[ ! -f "$ENV_FILE" ]]; then
    log "creating deploy/compose/.env from .env.example with fresh secrets"
    umask 077
    awk -v pg="$(random_hex 24)" -v mq="$(random_hex 24)" -v jwt="$(random_hex 32)" '
        /^POSTGRES_PASSWORD=$/ { print "POSTGRES_PASSWORD=" pg; next }
        /^RABBITMQ_PASSWORD=$/ { print "RABBITMQ_PASSWORD=" mq; next }
        /^SN_JWT_SECRET=$/ { print "SN_JWT_SECRET=" jwt; next }
        { print }
    ' "$COMPOSE_DIR/.env.example" >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    umask 022
fi
for key in POSTGRES_PASSWORD RABBITMQ_PASSWORD SN_JWT_SECRET; do
    [[ -n "$(env_value "$key" "")" ]] || die "$key is empty in $ENV_FILE: fill it in, or delete the file to have one generated"
done
(($(printf '%s' "$(env_value SN_JWT_SECRET "")" | wc -c) >= 32)) ||
    die "SN_JWT_SECRET in $ENV_FILE is shorter than 32 bytes"

# --- Clean up the previous run ------------------------------------------------------------------------------------
if ((fresh)); then
    log "removing the previous run's containers, network and volumes"
    "$ROOT/scripts/cleanup.sh"
else
    log "removing the previous run's containers (volumes are kept; --fresh removes them)"
    "${COMPOSE[@]}" down --remove-orphans
fi

# --- Build and start ----------------------------------------------------------------------------------------------
log "building the image sn:0.1.0"
"${COMPOSE[@]}" build
log "starting (Compose waits for the database nodes, runs cluster-init, then starts the app)"
if ! "${COMPOSE[@]}" up --detach --no-build; then
    "${COMPOSE[@]}" ps --all >&2 || true
    "${COMPOSE[@]}" logs --tail 40 cluster-init >&2 || true
    die "start failed (above: the containers and cluster-init's log)"
fi

# --- Wait for health ----------------------------------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
for service in "${SERVERS[@]}"; do
    container="$("${COMPOSE[@]}" ps --quiet "$service")"
    [[ -n "$container" ]] || die "$service has no container"
    while :; do
        status="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container")"
        case "$status" in
            healthy) break ;;
            unhealthy | exited | dead)
                "${COMPOSE[@]}" logs --tail 40 "$service" >&2 || true
                die "$service is $status (its last log lines are above)"
                ;;
        esac
        if ((SECONDS >= deadline)); then
            "${COMPOSE[@]}" logs --tail 40 "$service" >&2 || true
            die "$service is still $status after ${TIMEOUT}s (SETUP_TIMEOUT)"
        fi
        sleep 2
    done
    log "$service is healthy"
done

log "cluster-init said:"
"${COMPOSE[@]}" logs --no-log-prefix cluster-init | sed 's/^/    /'

port="${APP_HOST_PORT:-$(env_value APP_HOST_PORT 9000)}"
mq_port="${RABBITMQ_MGMT_HOST_PORT:-$(env_value RABBITMQ_MGMT_HOST_PORT 15672)}"
pg_port="${CITUS_HOST_PORT:-$(env_value CITUS_HOST_PORT 15432)}"
cat <<EOF

sn is up: http://localhost:$port
  readiness   curl -s http://localhost:$port/ready
  logs        docker compose -f deploy/compose/compose.yaml logs -f app
  admin token docker compose -f deploy/compose/compose.yaml exec app sn admin-token --user-id <a user id>
  RabbitMQ    http://127.0.0.1:$mq_port (user sn, RABBITMQ_PASSWORD from deploy/compose/.env)
  Citus       postgresql://postgres:<POSTGRES_PASSWORD>@127.0.0.1:$pg_port/sn
  stop        make compose-down (scripts/cleanup.sh: removes the containers and the data)
EOF
