"""One typed settings object, read from ``SN_*`` environment variables.

Every setting has an ``SN_`` name; a few keep the seed's unprefixed names as fallbacks
(``DATABASE_URL``, ``REDIS_URL``, ``RABBITMQ_URL``, ``LOG_LEVEL``, ``CELEBRITY_*``) so existing
compose files and scripts keep working. A ``.env`` file in the working directory is read too;
real environment variables win over it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec


class SettingsError(Exception):
    """A setting is missing or malformed: the process must not start."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Connections. None means "not configured": `sn dev` starts embedded servers for those.
    database_url: str | None = None
    redis_url: str | None = None
    amqp_url: str | None = None
    # Prefix of the bus's exchanges/queues (RabbitMQ) or streams (Redis): several deployments
    # can share one broker.
    bus_prefix: str = "sn"

    # HTTP server.
    host: str = "0.0.0.0"
    port: int = 9000
    workers: int = 2
    backlog: int = 4096
    max_body_bytes: int = 1_048_576
    request_timeout_seconds: float = 30.0
    graceful_shutdown_seconds: float = 10.0
    # Behind a load balancer: how many proxies to trust in X-Forwarded-For, or a header holding
    # the client address. Without these, rate limits would see every client as the proxy.
    proxies_count: int = 0
    real_ip_header: str | None = None

    # Auth. The secret has no default outside dev mode: a forgotten secret must not silently
    # become a well-known one.
    jwt_secret: str | None = None
    jwt_ttl_seconds: int = 86_400
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65_536
    argon2_parallelism: int = 1
    password_hash_concurrency: int = 2

    # Logging.
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True

    # Security at the edge.
    cors_origins: tuple[str, ...] = ("*",)
    rate_limit_window_seconds: int = 60
    rate_limit_auth: int = 30  # register/login per client IP per window; 0 disables
    rate_limit_write: int = 120  # post create and dialog send per user per window; 0 disables
    # Limits and timeouts against resource exhaustion (docs/security.md). 0 disables a limit.
    header_timeout_seconds: float = 10.0  # first byte of a request to its complete head
    keep_alive_timeout_seconds: float = 20.0  # an idle keep-alive connection (or one that sends nothing)
    ws_max_per_user: int = 16  # WebSockets per user, across workers and pods (Redis)
    ws_max_per_address: int = 1000  # WebSockets per client address, across workers and pods (Redis)
    ws_max_per_worker: int = 20_000  # WebSockets per worker process
    ws_connect_rate: int = 300  # WebSocket upgrades per client address per rate-limit window
    # /metrics, /stats, /celebrity-stats: open to anyone, admin token only, or open on a separate
    # listener (SN_MONITORING_LISTEN, host:port) and admin token only on the main port.
    monitoring_access: Literal["open", "admin", "listen"] = "open"
    monitoring_listen: str | None = None

    # Storage.
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_statement_cache_size: int = 100
    feed_cache_size: int = 1000
    feed_cache_ttl_seconds: int = 7 * 86_400
    post_cache_ttl_seconds: int = 86_400
    profile_cache_ttl_seconds: int = 3_600
    profile_local_cache_size: int = 20_000  # per worker; 0 disables the in-memory layer
    # Profiles cannot change through the API, so a worker's copy is never stale today; the bound
    # only limits memory churn. An edit endpoint would add pub/sub invalidation, not a short TTL.
    profile_local_cache_seconds: float = 300.0
    post_max_chars: int = 10_000
    # Follows (and unfollows) of one user written at once per worker; more wait their turn (see
    # sn.keyed_limit). 0: no limit.
    follow_concurrency_per_user: int = 1
    # ...and started at most this many times a second per worker (a burst is paced); 0: no pacing.
    follow_rate_per_user: float = 10.0
    # Followers' feeds rebuilt ahead of their next read after a follow change, per worker and
    # second, in the background (sn.fanout.warmer). 0: no warm-ups (reads rebuild).
    feed_warm_rate: float = 2.0
    # A pipeline step (outbox drain, fan-out) that carries a new post older than this logs where
    # its time went (logger sn.delivery.slow, sn.pipeline.slow_log). 0: never.
    slow_delivery_ms: float = 250.0
    dialog_max_chars: int = 4_096

    # Real-time feed (the seed's names are accepted too, see _FALLBACKS).
    celebrity_threshold: int = 1000
    celebrity_batch_size: int = 100
    celebrity_batch_delay: float = 0.1
    node_id: str | None = None
    # WebSocket keepalive: a socket quiet for this long is pinged, and dropped (1011) when the
    # pong does not come within the timeout. One sweep per worker does it, not a task per socket.
    ws_ping_interval_seconds: float = 20.0
    ws_ping_timeout_seconds: float = 20.0
    # Rebalancing (sn.realtime.rebalance): a worker holding more than the mean of the workers by
    # over the slack (and by at least the minimum) hands this many sockets a second back to the
    # balancer (1012, reconnect with since); a worker counts once it has run for the warm-up
    # (its node in the balancer's rotation). Rate 0: off. Gentle on purpose: each socket handed back is
    # a handshake and a replay on the node it reaches; in the topology run 100 a second per worker
    # (~2 % of a node's sockets each second) put requests and cross-node deliveries near 1 s.
    ws_rebalance_rate: float = 25.0
    ws_rebalance_slack: float = 0.25
    ws_rebalance_min_excess: int = 100
    ws_rebalance_warmup_seconds: float = 5.0
    # A worker's event loop stuck at least this long is logged (with the GC's share of it).
    loop_stall_warning_ms: float = 100.0
    # A worker loop that crashes (not for an outage) more than this many times within the window
    # gives up; a critical one then ends the worker, which the manager replaces.
    loop_max_restarts: int = 10
    loop_restart_window_seconds: float = 60.0

    # Citus (`sn cluster init`): comma-separated host:port of the regular workers, and the hot
    # worker that holds only hot users' shards. Unused on single-node PostgreSQL.
    citus_workers: str | None = None
    citus_hot_worker: str | None = None
    # On Citus, send single-shard reads straight to the node holding the shard (see shard_reads).
    citus_direct_reads: bool = True

    # Where `sn dev` keeps embedded servers' data.
    data_dir: str = "var"
    dev_mode: bool = False

    def resolved_node_id(self) -> str:
        """This server's name in stream and presence keys: SN_NODE_ID (the pod name in Kubernetes),
        else host:port, so two servers on one host never read each other's streams."""
        import socket

        return self.node_id or f"{socket.gethostname()}:{self.port}"

    def monitoring_address(self) -> tuple[str, int]:
        """SN_MONITORING_LISTEN as (host, port); ValueError naming the setting when malformed."""
        host, _, port = (self.monitoring_listen or "").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("SN_MONITORING_ACCESS=listen needs SN_MONITORING_LISTEN=host:port")
        if int(port) == self.port:
            raise ValueError("SN_MONITORING_LISTEN must use another port than SN_PORT")
        return host.strip("[]"), int(port)

    def require_secret(self) -> str:
        if not self.jwt_secret:
            raise SettingsError("SN_JWT_SECRET is not set: refusing to start without a token signing secret")
        if len(self.jwt_secret.encode()) < 32:
            # RFC 7518 3.2: an HS256 key shorter than the hash output is brute-forceable.
            raise SettingsError("SN_JWT_SECRET must be at least 32 bytes (e.g. `openssl rand -hex 32`)")
        return self.jwt_secret


# Seed names accepted when the SN_ name is absent.
_FALLBACKS: dict[str, tuple[str, ...]] = {
    "database_url": ("DATABASE_URL",),
    "redis_url": ("REDIS_URL",),
    "amqp_url": ("RABBITMQ_URL", "AMQP_URL"),
    "log_level": ("LOG_LEVEL",),
    "jwt_secret": ("JWT_SECRET",),
    "celebrity_threshold": ("CELEBRITY_THRESHOLD",),
    "celebrity_batch_size": ("CELEBRITY_BATCH_SIZE",),
    "celebrity_batch_delay": ("CELEBRITY_BATCH_DELAY",),
}

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a minimal ``KEY=value`` file (comments, blank lines, optional quotes)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            # Unquoted values may carry a trailing comment, as .env.example's do.
            value = "" if value.startswith("#") else value.split(" #", 1)[0].split("\t#", 1)[0].strip()
        values[key] = value
    return values


def _coerce(name: str, raw: str, annotation: Any) -> Any:
    """Convert one environment string to the field's type, with an error naming the variable."""
    env_name = "SN_" + name.upper()
    try:
        if annotation in (bool,):
            lowered = raw.strip().lower()
            if lowered in _BOOL_TRUE:
                return True
            if lowered in _BOOL_FALSE:
                return False
            raise ValueError(raw)
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if name == "cors_origins":
            return tuple(origin.strip() for origin in raw.split(",") if origin.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{env_name}: cannot parse {raw!r}") from exc


def load_settings(
    environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env"), dev_mode: bool = False
) -> Settings:
    """Build settings from the environment (and ``.env``); validate them; never read at import."""
    env: dict[str, str] = read_dotenv(dotenv) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)
    hints = {field.name: field.type for field in msgspec.structs.fields(Settings)}
    values: dict[str, Any] = {}
    for name, annotation in hints.items():
        candidates = ("SN_" + name.upper(), *_FALLBACKS.get(name, ()))
        raw = next((env[key] for key in candidates if env.get(key) not in (None, "")), None)
        if raw is None:
            continue
        base = annotation
        # Optional[...] fields: the inner type decides the conversion.
        if hasattr(annotation, "__args__") and type(None) in getattr(annotation, "__args__", ()):
            base = next(arg for arg in annotation.__args__ if arg is not type(None))
        values[name] = _coerce(name, raw, base)
    if dev_mode:
        values["dev_mode"] = True
    try:
        settings = msgspec.convert(values, Settings)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    problems = []
    if settings.workers < 1:
        problems.append("SN_WORKERS must be >= 1")
    if not 0 < settings.port < 65536:
        problems.append("SN_PORT must be a TCP port")
    if settings.db_pool_min < 1 or settings.db_pool_max < settings.db_pool_min:
        problems.append("SN_DB_POOL_MIN/SN_DB_POOL_MAX: need 1 <= min <= max")
    if settings.feed_cache_size < 10:
        problems.append("SN_FEED_CACHE_SIZE must be >= 10")
    if settings.celebrity_threshold < 1 or settings.celebrity_batch_size < 1 or settings.celebrity_batch_delay < 0:
        problems.append("CELEBRITY_THRESHOLD and CELEBRITY_BATCH_SIZE must be >= 1, CELEBRITY_BATCH_DELAY >= 0")
    if settings.ws_ping_interval_seconds <= 0 or settings.ws_ping_timeout_seconds <= 0:
        problems.append("SN_WS_PING_INTERVAL_SECONDS and SN_WS_PING_TIMEOUT_SECONDS must be > 0")
    if (
        min(
            settings.ws_rebalance_rate,
            settings.ws_rebalance_slack,
            settings.ws_rebalance_min_excess,
            settings.ws_rebalance_warmup_seconds,
        )
        < 0
    ):
        problems.append(
            "SN_WS_REBALANCE_RATE, SN_WS_REBALANCE_SLACK, SN_WS_REBALANCE_MIN_EXCESS,"
            " SN_WS_REBALANCE_WARMUP_SECONDS must be >= 0"
        )
    if settings.loop_stall_warning_ms <= 0:
        problems.append("SN_LOOP_STALL_WARNING_MS must be > 0")
    if settings.loop_max_restarts < 0 or settings.loop_restart_window_seconds <= 0:
        problems.append("SN_LOOP_MAX_RESTARTS must be >= 0 and SN_LOOP_RESTART_WINDOW_SECONDS > 0")
    if (
        min(
            settings.follow_concurrency_per_user,
            settings.follow_rate_per_user,
            settings.feed_warm_rate,
            settings.slow_delivery_ms,
        )
        < 0
    ):
        problems.append(
            "SN_FOLLOW_CONCURRENCY_PER_USER, SN_FOLLOW_RATE_PER_USER, SN_FEED_WARM_RATE,"
            " SN_SLOW_DELIVERY_MS must be >= 0"
        )
    if settings.password_hash_concurrency < 1:
        problems.append("SN_PASSWORD_HASH_CONCURRENCY must be >= 1")
    if min(settings.ws_max_per_user, settings.ws_max_per_address, settings.ws_max_per_worker) < 0:
        problems.append("SN_WS_MAX_PER_USER/ADDRESS/WORKER must be >= 0 (0 disables)")
    if settings.ws_connect_rate < 0:
        problems.append("SN_WS_CONNECT_RATE must be >= 0 (0 disables)")
    if settings.header_timeout_seconds <= 0 or settings.keep_alive_timeout_seconds <= 0:
        problems.append("SN_HEADER_TIMEOUT_SECONDS and SN_KEEP_ALIVE_TIMEOUT_SECONDS must be > 0")
    if settings.monitoring_access == "listen":
        try:
            settings.monitoring_address()
        except ValueError as exc:
            problems.append(str(exc))
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        problems.append("SN_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if problems:
        raise SettingsError("; ".join(problems))


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, **changes)
