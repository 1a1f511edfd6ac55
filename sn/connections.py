"""Where the connection settings came from, the running `sn dev`'s databases, and start-up checks.

A newcomer who copied .env.example into .env, or whose shell still exports an old URL, used to
see ``ConnectionRefusedError … 9299`` and nothing else. Every command that connects first checks
PostgreSQL and Redis and, when one does not answer, names the setting, its value (password
masked) and where the value came from: the environment, the .env file, the databases of the
`sn dev` running in this checkout (``var/dev-servers.json``), or the embedded servers `sn dev`
started.

`sn dev` writes ``<SN_DATA_DIR>/dev-servers.json`` with its URLs once its databases are up and
removes it on exit; `sn seed`, `sn migrate`, `sn admin-token`, `sn cluster`/`hot` and
`sn ws-client` read it when their own settings leave the URL unset, so seeding the dev server
needs no ports copied out of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sn.settings import Settings, read_dotenv, with_overrides

DEV_SERVERS_FILE = "dev-servers.json"

# The settings this module knows about, with every environment name that can set them.
NAMES: dict[str, tuple[str, ...]] = {
    "database_url": ("SN_DATABASE_URL", "DATABASE_URL"),
    "redis_url": ("SN_REDIS_URL", "REDIS_URL"),
}
_WHAT = {"database_url": "PostgreSQL", "redis_url": "Redis"}
CHECK_TIMEOUT_SECONDS = 10.0


class ConnectionFailed(Exception):
    """A configured server does not answer at start-up; the message says which setting it is."""


def origins(environ: Mapping[str, str] | None = None, dotenv: Path = Path(".env")) -> dict[str, str]:
    """For each connection setting with a value, where the value came from (load_settings' order:
    the environment wins over .env, an SN_ name over the seed's)."""
    env = os.environ if environ is None else environ
    file_values = read_dotenv(dotenv)
    found: dict[str, str] = {}
    for field, names in NAMES.items():
        for name in names:
            if env.get(name):
                found[field] = f"{name} from the environment"
                break
            if file_values.get(name) and not any(env.get(n) for n in names):
                found[field] = f"{name} from {dotenv.resolve()}"
                break
    return found


def masked(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


# -- the running `sn dev` -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevServers:
    pid: int
    database_url: str
    redis_url: str
    http_url: str
    path: Path


def write_dev_servers(data_dir: Path, *, database_url: str, redis_url: str, http_url: str) -> Path:
    path = data_dir / DEV_SERVERS_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    body = {"pid": os.getpid(), "database_url": database_url, "redis_url": redis_url, "http_url": http_url}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)
    return path


def remove_dev_servers(data_dir: Path) -> None:
    path = data_dir / DEV_SERVERS_FILE
    with contextlib.suppress(FileNotFoundError, ValueError, OSError):
        if json.loads(path.read_text()).get("pid") == os.getpid():  # (not another sn dev's)
            path.unlink()


def running_dev_servers(data_dir: Path) -> DevServers | None:
    """The `sn dev` of this data directory, if its file is there and its process alive."""
    path = data_dir / DEV_SERVERS_FILE
    try:
        body = json.loads(path.read_text())
        found = DevServers(
            int(body["pid"]), str(body["database_url"]), str(body["redis_url"]), str(body["http_url"]), path
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return None  # left behind by an `sn dev` that was killed
    except PermissionError:
        pass  # alive, another user's
    return found


def with_dev_servers(settings: Settings, found: dict[str, str]) -> Settings:
    """Fill unset connection URLs from the running `sn dev`, recording that in ``found``."""
    missing = [field for field in NAMES if not getattr(settings, field)]
    if not missing:
        return settings
    dev = running_dev_servers(Path(settings.data_dir))
    if dev is None:
        return settings
    for field in missing:
        found[field] = f"the running `sn dev` (pid {dev.pid}, {dev.path})"
    return with_overrides(settings, **{field: getattr(dev, field) for field in missing})


# -- start-up checks ------------------------------------------------------------------------------


def _failure(field: str, url: str, origin: str, exc: BaseException) -> ConnectionFailed:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ConnectionFailed(
        f"cannot connect to {_WHAT[field]} at {masked(url)}: {detail}\n"
        f"  the URL is {origin}; fix or unset it"
        + (" (under `sn dev`, unset means embedded servers)" if "embedded" not in origin else "")
    )


@contextlib.contextmanager
def startup_connection(field: str, url: str) -> Iterator[None]:
    """Around a worker's first use of a server: a failure to reach it becomes ConnectionFailed,
    naming the setting and where its value came from (the worker reads the same environment and
    .env as the command that started it)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ConnectionFailed) or not _unreachable(exc):
            raise
        raise _failure(field, url, origins().get(field, f"{NAMES[field][0]} (default)"), exc) from exc


def _unreachable(exc: BaseException) -> bool:
    import asyncpg
    import redis.exceptions

    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InvalidAuthorizationSpecificationError
        | asyncpg.exceptions.InvalidPasswordError
        | asyncpg.exceptions.InvalidCatalogNameError
        | redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError,
    )


async def _check_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=CHECK_TIMEOUT_SECONDS)
    await conn.close()


async def _check_redis(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS, socket_timeout=CHECK_TIMEOUT_SECONDS)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def check(settings: Settings, found: Mapping[str, str], fields: Sequence[str]) -> None:
    """Connect once to each configured server among ``fields``; ConnectionFailed names the first
    that does not answer (unset ones are the caller's business)."""
    for field in fields:
        url = getattr(settings, field)
        if not url:
            continue
        probe = _check_postgres if field == "database_url" else _check_redis
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS + 1):
                await probe(url)
        except Exception as exc:  # any failure to connect: refused, DNS, auth, timeout, bad URL
            raise _failure(field, url, found.get(field, f"{NAMES[field][0]} (default)"), exc) from exc
