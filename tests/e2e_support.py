"""The whole loop for end-to-end tests: a runbook rendered time-scaled, `runbook run`, real
Prometheus and Alertmanager, a PagerDuty stand-in, and checks on the chain it produced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from tests.servers import PG_BIN, PostgresServer, _as_postgres, find_tool
from tests.stack import ROOT, RUNBOOK_BIN, Stack, free_port, http_json

NODE_DIR = ROOT / "tests" / "node"
PD_KEY = "e2e-routing-key"
T = TypeVar("T")


@dataclass
class Received:
    """One request the stand-in recorded."""

    at: float
    path: str
    body: Any


@dataclass
class Sink:
    """A local HTTP server standing in for PagerDuty (and Slack): records every JSON POST."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def events(self, action: str | None = None) -> list[Any]:
        """PagerDuty events received (optionally only one event_action), oldest first."""
        with self.lock:
            bodies = [r.body for r in self.received if isinstance(r.body, dict)]
        return [b for b in bodies if action is None or b.get("event_action") == action]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_sink() -> Sink:
    """Start the recording server on a free loopback port, in a thread."""
    holder: list[Sink] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            with holder[0].lock:
                holder[0].received.append(Received(time.time(), self.path, body))
            answer = b'{"status":"success","message":"Event processed"}'
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    holder.append(Sink(server))
    threading.Thread(target=server.serve_forever, name="pd-sink", daemon=True).start()
    return holder[0]


@dataclass
class Loop:
    """One running loop: its URLs, token and rendered files."""

    stack: Stack
    prometheus: str
    alertmanager: str
    exporter: str
    responder: str
    token: str
    out: Path

    def incidents(self) -> list[dict[str, Any]]:
        data: dict[str, Any] = http_json(f"{self.responder}/incidents?limit=1000", token=self.token)
        return list(data["incidents"])

    def incidents_of(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [i for i in self.incidents() if i["alertname"] == alertname
                and all(i["labels"].get(k) == v for k, v in labels.items())]

    def alert_states(self, alertname: str) -> list[str]:
        """States of the alert's series in Prometheus (pending/firing), empty when inactive."""
        data = http_json(f"{self.prometheus}/api/v1/alerts")
        return [a["state"] for a in data["data"]["alerts"] if a["labels"]["alertname"] == alertname]

    def query(self, promql: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        data = http_json(f"{self.prometheus}/api/v1/query?query={quote(promql)}")
        return list(data["data"]["result"])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(3000)}" for p in self.stack.procs)

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 30.0,
             every: float = 0.1) -> T:
        """Poll until check() returns something truthy; fail with every process's log."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                     f"{self.logs()}")
            time.sleep(every)


def render(book: Path, out: Path, scale: float, responder: str, exporter: str,
           alertmanager: str, secrets: Path, token_file: Path) -> None:
    """`runbook render` the book time-scaled for this loop's ports."""
    result = subprocess.run(
        [RUNBOOK_BIN, "render", str(book), "--out", str(out), "--time-scale", str(scale),
         "--responder-url", f"{responder}/alerts", "--exporter", exporter.split("//")[1],
         "--alertmanager", alertmanager.split("//")[1], "--secrets-dir", str(secrets),
         "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"runbook render failed:\n{result.stderr}")


def start_loop(s: Stack, book: str, *, scale: float, env: Mapping[str, str] | None = None,
               secrets: Mapping[str, str] | None = None) -> Loop:
    """Render the book, then start `runbook run`, Alertmanager and Prometheus on free ports."""
    path = s.dir / "runbook.yml"
    path.write_text(book)
    eport, rport, aport, pport = (free_port() for _ in range(4))
    exporter, responder = f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{rport}"
    alertmanager, prometheus = f"http://127.0.0.1:{aport}", f"http://127.0.0.1:{pport}"
    token = "e2e-" + os.urandom(12).hex()
    token_file = s.dir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    secret_dir = s.dir / "secrets"
    secret_dir.mkdir()
    for name, value in {"PAGERDUTY_ROUTING_KEY": PD_KEY, **(secrets or {})}.items():
        (secret_dir / name).write_text(value)
    out = s.dir / "out"
    render(path, out, scale, responder, exporter, alertmanager, secret_dir, token_file)
    # Prometheus first: it takes up to ~5s to pick up its scrape targets, so that overlaps
    # with the start of `runbook run`.
    s.alertmanager(out / "deploy" / "alertmanager.yml", aport)
    s.prometheus(out / "deploy" / "prometheus.yml", pport)
    s.runbook("runbook-run", [
        "run", "--runbook", str(path), "--exporter-listen", f"127.0.0.1:{eport}",
        "--responder-listen", f"127.0.0.1:{rport}", "--data-dir", str(s.dir / "data"),
        "--token-file", str(token_file), "--log-level", "INFO",
    ], f"{responder}/health/ready", env={"PAGERDUTY_ROUTING_KEY": PD_KEY, **(env or {})})
    return Loop(s, prometheus, alertmanager, exporter, responder, token, out)


def node(command: dict[str, Any], timeout: float = 60.0) -> Any:
    """Run tests/node/e2e_bullmq.mjs with one JSON command; its JSON answer."""
    argv = [find_tool("node"), str(NODE_DIR / "e2e_bullmq.mjs"), json.dumps(command)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                            cwd=NODE_DIR)
    if result.returncode != 0:
        raise RuntimeError(f"node {command['op']} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def steps(incident: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """The incident's audit steps of one kind."""
    return [s for s in incident["steps"] if s["kind"] == kind]


def assert_healed(loop: Loop, alertname: str, actions: list[str], *,
                  timeout: float = 40.0, **labels: str) -> dict[str, Any]:
    """The whole chain for one alert: recorded once, each action run once and ok, verified,
    resolved in Prometheus and by notification, and the incident closed as healed."""
    found = loop.wait(f"{alertname} recorded", lambda: loop.incidents_of(alertname, **labels),
                      timeout)

    def closed() -> dict[str, Any] | None:
        items = loop.incidents_of(alertname, **labels)
        return items[0] if items and items[0]["resolved_at"] and not items[0]["active"] else None

    incident = loop.wait(f"{alertname} healed and resolved", closed, timeout)
    items = loop.incidents_of(alertname, **labels)
    assert len(items) == 1, f"one occurrence expected: {json.dumps(items, indent=1)}"
    assert found[0]["id"] == incident["id"]
    assert incident["state"] == "healed", json.dumps(incident, indent=1)
    started = [s["detail"]["action"] for s in steps(incident, "action_started")]
    assert started == actions, json.dumps(incident["steps"], indent=1)
    finished = steps(incident, "action_finished")
    assert [f["detail"]["status"] for f in finished] == ["ok"] * len(actions), finished
    healed_by = [s for s in incident["steps"] if s["detail"].get("state") == "healed"]
    assert healed_by, incident["steps"]
    assert healed_by[0]["kind"] in ("verified", "resolved"), incident["steps"]
    assert steps(incident, "resolved"), "the resolved notification was recorded"
    assert not incident["paged"]
    assert loop.alert_states(alertname) == []
    return incident




@dataclass
class SmallPostgres(PostgresServer):
    """A PostgreSQL cluster with few connections, so a handful of sessions fills its pool."""

    max_connections: int = 20

    def start(self) -> None:
        self._pg_ctl(
            "-l", str(self.dir / "postgres.log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                  f"-c max_connections={self.max_connections} -c superuser_reserved_connections=0",
            "start",
        )


@contextlib.contextmanager
def small_postgres(max_connections: int) -> Iterator[SmallPostgres]:
    """initdb and start a SmallPostgres in a temp dir; stop and remove it afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="rbap-e2e-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    server = SmallPostgres(free_port(), directory, max_connections=max_connections)
    try:
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(server.data), "-A", "trust",
                      "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Sleepers:
    """Sessions each running pg_sleep, held open in a thread of their own."""

    dsn: str
    count: int
    seconds: float = 600.0
    errors: list[str] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    async def _hold(self) -> None:
        import asyncpg

        conns = [await asyncpg.connect(self.dsn) for _ in range(self.count)]
        self.connected.set()

        async def sleep(conn: asyncpg.Connection) -> None:
            try:
                await conn.execute(f"SELECT pg_sleep({self.seconds})")
            except (asyncpg.PostgresError, OSError, ConnectionError) as exc:
                self.errors.append(type(exc).__name__)
            finally:
                await conn.close(timeout=2)

        await asyncio.gather(*(sleep(c) for c in conns))

    def start(self) -> Sleepers:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._hold()),
                                       name="pg-sleepers", daemon=True)
        self.thread.start()
        if not self.connected.wait(20):
            raise TimeoutError("the sleeping sessions did not connect")
        return self

    def join(self, timeout: float) -> bool:
        """Whether every session ended within the timeout."""
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()
