"""Pytest plugin: real redis-server and PostgreSQL on free loopback ports, and tool locators.

Every server is started in its own temp dir on a port that was free a moment before, and is
stopped only by the fixture that started it. Nothing here touches 6379 or 5432.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def find_tool(*names: str) -> str:
    """The path of the first of `names` on PATH (Debian and upstream names differ)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        f"none of {names} is installed (the README's test command installs them)"
    )


@dataclass
class RedisServer:
    """A redis-server this test session started."""

    port: int
    process: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL it (fault tests); start() brings it back on the same port."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def start(self) -> None:
        self.process = _spawn_redis(self.port, self.dir)


def _spawn_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    binary = find_tool("redis-server")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log"), "--daemonize", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    wait_for_port(port)
    return process


def start_redis() -> RedisServer:
    """Start a fresh redis-server on a free port in a temp dir."""
    directory = Path(tempfile.mkdtemp(prefix="rbap-redis-"))
    port = free_port()
    return RedisServer(port, _spawn_redis(port, directory), directory)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster this test session initialised and started."""

    port: int
    dir: Path
    shared_preload_libraries: str = "pg_stat_statements"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args])

    def start(self) -> None:
        preload = f"-c shared_preload_libraries={self.shared_preload_libraries} " \
            if self.shared_preload_libraries else ""
        self._pg_ctl(
            "-l", str(self.dir / "postgres.log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                  f"{preload}-c max_connections=200",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster (fault tests)."""
        pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return out.stdout.strip()


def _as_postgres(argv: list[str]) -> None:
    # initdb and pg_ctl refuse to run as root: drop to the postgres OS user when we are root.
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                   close_fds=True)


def start_postgres(shared_preload_libraries: str = "pg_stat_statements") -> PostgresServer:
    """initdb and start a PostgreSQL 15 cluster on a free port in a temp dir ("" preloads
    nothing: pg_stat_statements can then be created but not read)."""
    if not (PG_BIN / "initdb").exists():
        raise FileNotFoundError(f"{PG_BIN}/initdb is missing (the README's test command installs "
                                "postgresql)")
    # Under /tmp (not /root) so the postgres user can traverse every parent.
    directory = Path(tempfile.mkdtemp(prefix="rbap-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    _as_postgres([str(PG_BIN / "initdb"), "-D", str(directory / "data"), "-A", "trust",
                  "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
    server = PostgresServer(free_port(), directory, shared_preload_libraries)
    server.start()
    if "pg_stat_statements" in shared_preload_libraries:
        server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session (tests use their own db or flush what they write)."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis URL on the session's server, flushed after the test."""
    import redis as redis_sync

    yield redis_server.url
    if redis_server.process.poll() is None:
        client = redis_sync.Redis.from_url(redis_server.url)
        client.flushall()
        client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.dir, ignore_errors=True)


_db_counter = 0


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    global _db_counter
    _db_counter += 1
    name = f"t{os.getpid()}_{_db_counter}"
    postgres_server.psql(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.dsn(name)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            postgres_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return find_tool("prometheus")


@pytest.fixture(scope="session")
def alertmanager_bin() -> str:
    return find_tool("prometheus-alertmanager", "alertmanager")


@pytest.fixture(scope="session")
def amtool() -> str:
    return find_tool("amtool")
