"""sn/connections.py: where a connection setting came from, start-up errors that say so, and the
running `sn dev`'s URLs found by other commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sn.connections import (
    DEV_SERVERS_FILE,
    masked,
    origins,
    remove_dev_servers,
    running_dev_servers,
    with_dev_servers,
    write_dev_servers,
)
from sn.settings import load_settings
from tests.support import ROOT, free_port


def test_origins_name_the_variable_and_its_source(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SN_DATABASE_URL=postgresql://x@h/db\nREDIS_URL=redis://h:1/0\n")
    found = origins({}, dotenv)
    assert found == {
        "database_url": f"SN_DATABASE_URL from {dotenv.resolve()}",
        "redis_url": f"REDIS_URL from {dotenv.resolve()}",
    }
    found = origins({"SN_DATABASE_URL": "postgresql://y@h/db"}, dotenv)
    assert found["database_url"] == "SN_DATABASE_URL from the environment"
    assert origins({}, tmp_path / "missing") == {}


def test_masked_hides_the_password_only() -> None:
    assert masked("postgresql://sn:hunter2@db:5432/sn") == "postgresql://sn:***@db:5432/sn"
    assert masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_dev_servers_file_is_found_while_its_process_lives(tmp_path: Path) -> None:
    write_dev_servers(tmp_path, database_url="postgresql://p@h:1/sn", redis_url="redis://h:2/0", http_url="http://h:3")
    found = running_dev_servers(tmp_path)
    assert found is not None
    assert (found.pid, found.database_url, found.redis_url, found.http_url) == (
        os.getpid(),
        "postgresql://p@h:1/sn",
        "redis://h:2/0",
        "http://h:3",
    )
    settings = load_settings({"SN_DATA_DIR": str(tmp_path)}, dotenv=None)
    sources: dict[str, str] = {}
    resolved = with_dev_servers(settings, sources)
    assert (resolved.database_url, resolved.redis_url) == ("postgresql://p@h:1/sn", "redis://h:2/0")
    assert "the running `sn dev`" in sources["database_url"]
    # A URL that is set wins over the file.
    own = load_settings({"SN_DATA_DIR": str(tmp_path), "SN_REDIS_URL": "redis://mine:9/0"}, dotenv=None)
    assert with_dev_servers(own, {}).redis_url == "redis://mine:9/0"
    remove_dev_servers(tmp_path)
    assert not (tmp_path / DEV_SERVERS_FILE).exists()


def test_a_dead_dev_servers_file_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    body = {"pid": dead.pid, "database_url": "postgresql://p@h:1/sn", "redis_url": "redis://h:2/0", "http_url": "x"}
    (tmp_path / DEV_SERVERS_FILE).write_text(json.dumps(body))
    assert running_dev_servers(tmp_path) is None


def _sn(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SN_") and k not in ("DATABASE_URL", "REDIS_URL")}
    clean.update({"PYTHONPATH": str(ROOT), **env})
    command = [sys.executable, "-m", "sn", *args]
    # A session of its own: Sanic's manager may killpg(SIGKILL) its workers' group (see tests/support.py).
    return subprocess.run(
        command, cwd=cwd, env=clean, capture_output=True, text=True, timeout=60, check=False, start_new_session=True
    )


def test_connection_error_names_the_setting_and_the_env_file(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    (tmp_path / ".env").write_text(f"SN_DATABASE_URL=postgresql://postgres:s3cret@127.0.0.1:{port}/sn\n")
    result = _sn(tmp_path, "migrate")
    assert result.returncode == 1
    assert f"cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:{port}/sn" in result.stderr
    assert f"SN_DATABASE_URL from {(tmp_path / '.env').resolve()}" in result.stderr
    assert "s3cret" not in result.stderr


def test_connection_error_names_an_environment_variable(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    result = _sn(
        tmp_path, "seed", "--users", "1", SN_DATABASE_URL=database_url, SN_REDIS_URL=f"redis://127.0.0.1:{port}/0"
    )
    assert result.returncode == 1
    assert f"cannot connect to Redis at redis://127.0.0.1:{port}/0" in result.stderr
    assert "SN_REDIS_URL from the environment" in result.stderr


def test_serve_worker_names_the_setting_it_cannot_reach(tmp_path: Path, redis_url: str) -> None:
    # `sn serve` starts its workers without a check of its own (a hung server must not hold the
    # manager); the worker's first connection reports the setting and its source.
    port = free_port()
    result = _sn(
        tmp_path,
        "serve",
        SN_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/sn",
        SN_REDIS_URL=redis_url,
        SN_JWT_SECRET="x" * 32,
        SN_PORT=str(free_port()),
        SN_WORKERS="1",
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:{port}/sn" in output
    assert "SN_DATABASE_URL from the environment" in output
