"""The `sn` command: serve, dev, migrate, seed, admin-token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from sn.settings import Settings, SettingsError, load_settings

log = logging.getLogger("sn.cli")


def _serve(settings: Settings) -> None:
    """Run the multi-worker Sanic server; each worker builds its app from the environment."""
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from sn import logs
    from sn.app import create_app
    from sn.sanic_internals import ConnectionProtocol, check_sanic_version, install_manager_patches

    settings.require_secret()
    if not settings.database_url or not settings.redis_url:
        raise SettingsError("SN_DATABASE_URL and SN_REDIS_URL must be set for `sn serve` (or run `sn dev`)")
    logs.configure(settings)
    check_sanic_version()  # (a warning: the private API we patch may have changed)
    _prepare_metrics_dir(settings)
    loader = AppLoader(factory=create_app)
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        backlog=settings.backlog,
        access_log=False,
        single_process=False,
        protocol=ConnectionProtocol,
    )
    log.info("serving on %s:%d with %d workers", settings.host, settings.port, settings.workers)
    install_manager_patches()
    Sanic.serve(primary=app, app_loader=loader)


def _prepare_metrics_dir(settings: Settings) -> None:
    """prometheus-client multiprocess mode: workers write metric files into one shared directory,
    which must exist (and be empty of a previous run's files) before any worker starts."""
    import shutil
    import tempfile

    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="sn-metrics-"))
    if configured and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _publish(settings: Settings) -> None:
    """Make settings decided in this process visible to spawned workers (they re-read the env)."""
    for name, value in (
        ("SN_DATABASE_URL", settings.database_url),
        ("SN_REDIS_URL", settings.redis_url),
        ("SN_JWT_SECRET", settings.jwt_secret),
    ):
        if value:
            os.environ[name] = value


def _dev_secret(data_dir: Path) -> str:
    """A per-checkout secret kept in var/, so dev tokens survive restarts without a default secret."""
    path = data_dir / "jwt-secret"
    if path.is_file():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


@contextlib.contextmanager
def embedded_services(settings: Settings, found: dict[str, str] | None = None) -> Iterator[Settings]:
    """Start embedded PostgreSQL/Redis for whichever URL is unset; stop them on exit. While they
    run, ``<data dir>/dev-servers.json`` tells other commands in this checkout where they are."""
    from sn.connections import remove_dev_servers, write_dev_servers
    from sn.dev.embedded import EmbeddedPostgres, EmbeddedRedis
    from sn.settings import with_overrides

    found = {} if found is None else found
    data_dir = Path(settings.data_dir).resolve()
    with contextlib.ExitStack() as stack:
        changes: dict[str, str] = {}
        if not settings.database_url:
            pg = stack.enter_context(EmbeddedPostgres(data_dir / "pg"))
            changes["database_url"] = pg.url
            found["database_url"] = (
                f"the embedded PostgreSQL `sn dev` started (SN_DATABASE_URL unset; {data_dir / 'pg'})"
            )
            log.info("embedded PostgreSQL at %s (data in %s)", pg.url, data_dir / "pg")
        if not settings.redis_url:
            rd = stack.enter_context(EmbeddedRedis(data_dir / "redis"))
            changes["redis_url"] = rd.url
            found["redis_url"] = f"the embedded Valkey `sn dev` started (SN_REDIS_URL unset; {data_dir / 'redis'})"
            log.info("embedded Redis at %s (data in %s)", rd.url, data_dir / "redis")
        if not settings.jwt_secret:
            changes["jwt_secret"] = _dev_secret(data_dir)
        resolved = with_overrides(settings, **changes)
        assert resolved.database_url is not None
        assert resolved.redis_url is not None
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        written = write_dev_servers(
            data_dir,
            database_url=resolved.database_url,
            redis_url=resolved.redis_url,
            http_url=f"http://{host}:{settings.port}",
        )
        stack.callback(remove_dev_servers, data_dir)
        log.info("dev servers' URLs in %s (sn seed, sn admin-token … read them)", written)
        yield resolved


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting embedded servers and migrations, not after, when the port is taken."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SettingsError(f"cannot listen on {host}:{port} ({exc.strerror}); set SN_PORT to a free port") from exc


def _dev(settings: Settings, found: dict[str, str]) -> None:
    from sn import connections, logs
    from sn.storage.migrations import migrate

    logs.configure(settings)
    _check_port_free(settings.host, settings.port)
    with embedded_services(settings, found) as resolved:
        assert resolved.database_url is not None
        asyncio.run(connections.check(resolved, found, ("database_url", "redis_url")))
        applied = asyncio.run(migrate(resolved.database_url))
        log.info("migrations: %d applied", len(applied))
        _publish(resolved)
        _serve(resolved)


def _migrate(settings: Settings) -> None:
    from sn import logs
    from sn.storage.migrations import migrate

    logs.configure(settings)
    if not settings.database_url:
        raise SettingsError("SN_DATABASE_URL is not set")
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(f'{m.version:04d}_{m.name}' for m in applied) or '-'}")


def _admin_token(settings: Settings, user_id: str, ttl: int) -> None:
    from sn.auth import TokenService
    from sn.ids import parse_id
    from sn.settings import with_overrides

    uid = parse_id(user_id)
    if uid is None:
        raise SettingsError(f"not a valid user id: {user_id!r}")
    secret = settings.jwt_secret
    data_dir = Path(settings.data_dir)
    dev_secret = data_dir / "jwt-secret"
    if not secret and dev_secret.is_file():
        secret = dev_secret.read_text().strip()  # the secret `sn dev` generated for this checkout
    signer = TokenService(with_overrides(settings, jwt_secret=secret).require_secret(), settings.jwt_ttl_seconds)
    database_url = settings.database_url  # (or the running `sn dev`'s: see main)
    if not database_url:
        raise SettingsError("SN_DATABASE_URL is not set: an admin token is only issued for an existing user")
    # The server refuses tokens whose subject is no user: a token for one would be useless.
    if not asyncio.run(_user_exists(database_url, uid)):
        raise SettingsError(f"no user with id {uid}: admin tokens are issued for existing users only")
    print(signer.issue(uid, admin=True, ttl_seconds=ttl))


async def _user_exists(database_url: str, user_id: int) -> bool:
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id))
    finally:
        await conn.close()


# Commands that connect to the databases and may use the running `sn dev`'s (connections.py).
_USES_DEV_SERVERS = ("migrate", "seed", "admin-token", "cluster", "hot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sn", description="sn: a social network backend built for high load")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve against the configured SN_DATABASE_URL / SN_REDIS_URL (production)")
    sub.add_parser("dev", help="serve with embedded PostgreSQL/Redis for whatever URL is unset (zero install)")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    seed = sub.add_parser("seed", help="generate realistic data fast (COPY)")
    seed.add_argument("--users", type=int, default=1000)
    seed.add_argument("--follows-per-user", type=int, default=20)
    seed.add_argument("--posts-per-user", type=int, default=2)
    seed.add_argument("--celebrities", type=int, default=0)
    seed.add_argument("--celebrity-followers", type=int, default=0)
    seed.add_argument("--password", default="password123", help="every seeded user's password")
    seed.add_argument("--ids-out", type=Path, help="write the seeded user ids here, one per line")
    token = sub.add_parser("admin-token", help="print an admin token signed with the configured secret")
    token.add_argument("--user-id", required=True, help="an existing user's id (the token's subject)")
    token.add_argument("--ttl", type=int, default=3600)
    from sn.dev import wsclient

    wsclient.add_arguments(sub.add_parser("ws-client", help="try the real-time feed by hand (simple or multi)"))
    from sn.citus import cli as cluster_cli

    cluster_cli.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sn import connections

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(dev_mode=args.command == "dev")
        found = connections.origins()
        if args.command in _USES_DEV_SERVERS:
            # Unset URLs: the databases of the `sn dev` running in this checkout, if there is one.
            before = settings
            settings = connections.with_dev_servers(settings, found)
            taken = [connections.NAMES[f][0] for f in connections.NAMES if getattr(before, f) != getattr(settings, f)]
            if taken:
                source = found["database_url" if "SN_DATABASE_URL" in taken else "redis_url"]
                print(f"sn: {' and '.join(taken)} unset: using {source}", file=sys.stderr)
            needed = ("database_url",) if args.command != "seed" else ("database_url", "redis_url")
            asyncio.run(connections.check(settings, found, needed))
        if args.command == "ws-client" and args.base_url is None:
            dev = connections.running_dev_servers(Path(settings.data_dir))
            args.base_url = dev.http_url if dev is not None else f"http://localhost:{settings.port}"
        if args.command == "serve":
            _serve(settings)
        elif args.command == "dev":
            _dev(settings, found)
        elif args.command == "migrate":
            _migrate(settings)
        elif args.command == "seed":
            from sn.dev.seed import run_seed

            asyncio.run(run_seed(settings, args))
        elif args.command == "admin-token":
            _admin_token(settings, args.user_id, args.ttl)
        elif args.command == "ws-client":
            from sn.dev.wsclient import run

            return run(args)
        elif args.command in ("cluster", "hot"):
            from sn.citus import cli as cluster_cli

            return cluster_cli.run(settings, args)
    except SettingsError as exc:
        print(f"sn: configuration error: {exc}", file=sys.stderr)
        return 2
    except connections.ConnectionFailed as exc:
        print(f"sn: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        # EmbeddedServerError is a RuntimeError; OSError covers ports and unreachable servers.
        print(f"sn: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
