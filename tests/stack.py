"""Real Prometheus, Alertmanager and runbook processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import find_tool, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK_BIN = str(Path(sys.executable).with_name("runbook"))


def http_get(url: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, bytes]:
    """GET a URL on loopback; returns (status, body) and never raises on HTTP errors."""
    request = urllib.request.Request(url)  # noqa: S310 - loopback test URLs only
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def http_json(url: str, timeout: float = 5.0, token: str | None = None) -> Any:
    status, body = http_get(url, timeout, token)
    if status != 200:
        raise RuntimeError(f"GET {url} -> {status}: {body[:300]!r}")
    return json.loads(body)


def wait_ready(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:
    """Wait until GET url answers 200, failing early with the log if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready:"
                               f"\n{text}")
        with contextlib.suppress(OSError):
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@dataclass
class Proc:
    """A process this test started, with its log file; stopped only by us."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, close_fds=True, start_new_session=True,
        )
        handle.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Stack:
    """A temp dir holding the processes of one end-to-end test."""

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rbap-stack-")))
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        proc = Proc(name, list(argv), self.dir / f"{name}.log", env, cwd).start()
        self.procs.append(proc)
        return proc

    def prometheus(self, config: Path, port: int | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        data = self.dir / "prom-data"
        url = f"http://127.0.0.1:{port}"
        proc = self.spawn("prometheus", [
            find_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url={url}",
            "--web.enable-lifecycle", "--log.level=warn",
        ])
        wait_ready(f"{url}/-/ready", 30, proc.process, proc.log)
        return proc, url

    def alertmanager(self, config: Path, port: int | None = None,
                     cluster: Sequence[str] = ()) -> tuple[Proc, str]:
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        data = self.dir / f"am-data-{port}"
        argv = [
            find_tool("prometheus-alertmanager", "alertmanager"), f"--config.file={config}",
            f"--storage.path={data}", f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url={url}", "--log.level=debug",
        ]
        argv += list(cluster) if cluster else ["--cluster.listen-address="]
        proc = self.spawn(f"alertmanager-{port}", argv)
        wait_ready(f"{url}/-/ready", 30, proc.process, proc.log)
        return proc, url

    def redis(self) -> tuple[Proc, str]:
        """A redis-server of this stack alone (its INFO stats count only this test's traffic)."""
        port = free_port()
        data = self.dir / f"redis-{port}"
        data.mkdir()
        proc = self.spawn(f"redis-{port}", [
            find_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(data), "--daemonize", "no",
        ])
        wait_for_port(port)
        return proc, f"redis://127.0.0.1:{port}/0"

    def runbook(self, name: str, args: Sequence[str], ready_url: str,
                env: dict[str, str] | None = None) -> Proc:
        full_env = {**os.environ, **(env or {})}
        proc = self.spawn(name, [RUNBOOK_BIN, *args], env=full_env, cwd=self.dir)
        wait_ready(ready_url, 30, proc.process, proc.log)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    """A Stack that stops everything it started and removes its temp dir."""
    s = Stack()
    try:
        yield s
    finally:
        s.close()


__all__ = ["ROOT", "Proc", "Stack", "free_port", "http_get", "http_json", "stack",
           "wait_for_port", "wait_ready"]
