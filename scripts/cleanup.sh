#!/usr/bin/env bash
# Stop and remove everything scripts/setup.sh started: the containers, the network and the volumes (all data) of
# the Compose project `sn` (deploy/compose/compose.yaml). Kept: deploy/compose/.env (the secrets) and the image
# sn:0.1.0 (`docker image rm sn:0.1.0` removes it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_DIR="$ROOT/deploy/compose"

die() {
    printf 'cleanup: %s\n' "$*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon: is it running, and may $(id -un) use it?"
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "Docker Compose not found: install the compose plugin (\`docker compose version\` must work)"
fi

# `down` reads compose.yaml, which insists on the secrets: without a .env, placeholders do (down uses none of them).
if [[ ! -f "$COMPOSE_DIR/.env" ]]; then
    export POSTGRES_PASSWORD=unused RABBITMQ_PASSWORD=unused SN_JWT_SECRET=unused
fi

"${COMPOSE[@]}" --project-directory "$COMPOSE_DIR" -f "$COMPOSE_DIR/compose.yaml" \
    down --volumes --remove-orphans --timeout 30
echo "cleanup: removed the containers, the network and the volumes of the Compose project sn"
echo "cleanup: kept deploy/compose/.env and the image sn:0.1.0"
