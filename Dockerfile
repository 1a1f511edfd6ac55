# syntax=docker/dockerfile:1
# The sn image: `sn serve` (multi-worker Sanic, SN_WORKERS processes) on port 9000, as a non-root user.
#
#   docker build -t sn:0.1.0 .
#   docker run --rm -p 9000:9000 -e SN_DATABASE_URL=... -e SN_REDIS_URL=... -e SN_JWT_SECRET=... sn:0.1.0
#
# The same image runs the one-shot commands: `sn migrate`, `sn cluster init`, `sn seed`, `sn admin-token`
# (pass them as the container's arguments). Every setting is an SN_* variable, see .env.example.
# Python matches the version the test suite runs on (3.11); the tag is pinned, bump it deliberately.
ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm

# ---- build: a virtualenv with sn and its runtime dependencies only (no dev, no embedded extras) ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes, not on every code or README edit
# (an empty package and README stand in for the real ones). Every dependency ships manylinux wheels (amd64, arm64):
# no compiler needed.
COPY pyproject.toml ./
RUN mkdir sn && touch sn/__init__.py README.md \
    && pip install --no-cache-dir . \
    && pip uninstall --yes sn \
    && rm -rf sn build ./*.egg-info README.md
COPY README.md ./
COPY sn ./sn
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv/lib

# ---- runtime --------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="sn" \
      org.opencontainers.image.description="Social network backend: Sanic, PostgreSQL/Citus, Redis, RabbitMQ" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 sn \
    && useradd --system --uid 10001 --gid sn --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sn
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SN_HOST=0.0.0.0 \
    SN_PORT=9000
# An empty working directory: `sn` reads ./.env when present, and none is baked in.
WORKDIR /app
USER 10001:10001
EXPOSE 9000
# Liveness only (/health does not touch dependencies); /ready is for load balancers and Kubernetes readiness.
# No curl in a slim image: the interpreter that is already there does the request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SN_PORT', '9000'), timeout=2)"]
# SIGTERM (the default stop signal) makes the server drain: /ready turns 503, WebSockets get 1001 "going away",
# in-flight requests get SN_GRACEFUL_SHUTDOWN_SECONDS (default 10). Give `docker stop` a longer -t than that.
ENTRYPOINT ["sn"]
CMD ["serve"]
