"""`sn dev` from a clean var/: embedded servers, migrations, a working API, data kept across restarts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import FAST_HASHING, ROOT, User, free_port, kill_session, port_open, user_payload

pytestmark = pytest.mark.slow


def _start_dev(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SN_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(FAST_HASHING)
    env.update({"SN_PORT": str(port), "SN_HOST": "127.0.0.1", "SN_WORKERS": "2", "PYTHONPATH": str(ROOT)})
    log = (workdir / "dev.log").open("ab")
    # Own session: Sanic escalates with killpg(SIGKILL), which must not reach pytest's group.
    return subprocess.Popen(
        [sys.executable, "-m", "sn", "dev"], cwd=workdir, env=env, stdout=log, stderr=log, start_new_session=True
    )


def _wait_ready(proc: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "dev.log").read_text()
        try:
            # Both workers must be up: a Ctrl-C while a worker is still booting is a different test.
            booted = (workdir / "dev.log").read_text().count("Worker ready") - (workdir / "dev.log").read_text().count(
                "Worker complete"
            )
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200 and booted >= 2:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("sn dev did not become ready:\n" + (workdir / "dev.log").read_text()[-3000:])


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # Never leave a spinning server behind a failed test.
        kill_session(proc)
        raise


def _embedded_ports(workdir: Path) -> list[int]:
    """Ports of the embedded servers, from `sn dev`'s "embedded X at <url>" lines."""
    found = re.findall(r"embedded \w+ at \w+://[^ ]*?:(\d+)/", (workdir / "dev.log").read_text())
    return sorted({int(port) for port in found})


def test_sn_dev_from_clean_var(tmp_path: Path) -> None:
    port = free_port()
    proc = _start_dev(tmp_path, port)
    try:
        _wait_ready(proc, port, tmp_path)
        base = f"http://127.0.0.1:{port}"
        body = user_payload()
        registered = httpx.post(base + "/user/register", json=body, timeout=10)
        assert registered.status_code == 200, registered.text
        user_id = registered.json()["user_id"]
    finally:
        assert _stop(proc) == 0
    assert (tmp_path / "var" / "pg" / "PG_VERSION").is_file()
    assert (tmp_path / "var" / "redis").is_dir()
    ports = _embedded_ports(tmp_path)
    assert len(ports) == 2
    assert not any(port_open("127.0.0.1", p) for p in ports)

    proc = _start_dev(tmp_path, port)
    try:
        _wait_ready(proc, port, tmp_path)
        login = httpx.post(f"http://127.0.0.1:{port}/login", json={"id": user_id, "password": body["password"]})
        assert login.status_code == 200  # data (and the dev secret) survived the restart
        # `sn admin-token` finds the dev secret and the embedded database (it checks the user) by itself.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SN_") and k != "DATABASE_URL"}
        env["PYTHONPATH"] = str(ROOT)
        command = [sys.executable, "-m", "sn", "admin-token", "--user-id"]
        issued = subprocess.run([*command, user_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert issued.returncode == 0, issued.stderr
        admin = {"Authorization": f"Bearer {issued.stdout.strip()}"}
        settings = httpx.post(f"http://127.0.0.1:{port}/celebrity-settings", json={"batch_size": 50}, headers=admin)
        assert settings.status_code == 200, settings.text
        refused = subprocess.run([*command, "999"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2
        assert "no user with id 999" in refused.stderr
    finally:
        assert _stop(proc) == 0


def test_serve_refuses_to_start_without_secret(database_url: str, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SN_") and k != "JWT_SECRET"}
    env.update({"SN_DATABASE_URL": database_url, "SN_REDIS_URL": redis_url, "SN_PORT": str(free_port())})
    result = subprocess.run(
        [sys.executable, "-m", "sn", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "SN_JWT_SECRET" in result.stderr


def _admin_token_command(database_url: str, user_id: str, secret: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SN_JWT_SECRET": secret, "SN_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "sn", "admin-token", "--user-id", user_id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_admin_token_is_signed_with_the_configured_secret(database_url: str, make_user: Callable[..., User]) -> None:
    import jwt

    secret = "s" * 40
    user = make_user()
    result = _admin_token_command(database_url, user.id, secret)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == user.id
    assert claims["admin"] is True


def test_admin_token_refuses_a_user_that_does_not_exist(database_url: str) -> None:
    result = _admin_token_command(database_url, "999", "s" * 40)
    assert result.returncode == 2
    assert "no user with id 999" in result.stderr
    assert not result.stdout


def test_dev_refuses_a_busy_port_before_starting_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SN_")}
        env.update({"SN_PORT": str(port), "SN_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)})
        result = subprocess.run(
            [sys.executable, "-m", "sn", "dev"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert "SN_PORT" in result.stderr
    assert not (tmp_path / "var" / "pg").exists()  # nothing was started
