"""`runbook demo`: the whole loop on this machine in about a minute, told step by step.

A BullMQ queue fills up with nobody working it; Prometheus fires the runbook's rule, Alertmanager
calls the responder, the responder starts a worker, the queue drains and the alert resolves.
Everything runs on loopback ports in a temp dir and is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from runbook.loader import load_runbook
from runbook.render.alertmanager import Delivery
from runbook.render.output import Options, render_all, write_all
from runbook.render.timing import Timing

HELP = "watch the loop heal a BullMQ backlog end to end (needs redis, prometheus, node)"
EXAMPLES = (
    "  runbook demo\n"
    "  runbook demo --keep      # keep the temp dir with every log and the rendered configs\n"
)

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
NODE_SCRIPT = NODE_DIR / "e2e_bullmq.mjs"
SCALE = 0.003  # `for: 10m` -> 1.8s; scrape and evaluation every 1s; group_wait 1s
JOBS = 150
QUEUE = "scrape"
ALERT = "QueueDepthHigh"

BOOK = """\
# cinder-js (seed 000): a queue depth above 100 for 10m is critical; "Scale workers".
service: cinder-js
watch:
  host: null
  redis:
    - name: main
      url: {redis}
      queues: {{bullmq: [{queue}]}}
alerts:
  queue_depth:
    critical: {{threshold: 100, for: 10m}}
respond:
  - name: start-worker
    match: {{alertname: {alert}, severity: critical}}
    mode: auto
    do:
      - exec:
          argv: [{node}, {script}, '{command}']
          timeout: 60s
    cooldown: 0s
    verify_after: 4s
    escalate:
      - page: {{message: "queue still backed up after starting a worker"}}
"""


class Missing(Exception):
    """Something the demo needs is not installed."""


@dataclass
class Tools:
    """The programs the demo starts."""

    redis: str
    prometheus: str
    alertmanager: str
    node: str


def find_tools() -> Tools:
    """Every program and package the demo needs; Missing lists all that are not there."""
    found = {name: shutil.which(name) for name in
             ("redis-server", "prometheus", "prometheus-alertmanager", "alertmanager", "node")}
    missing = []
    for names, install in ((("redis-server",), "apt-get install redis-server"),
                           (("prometheus",), "apt-get install prometheus"),
                           (("prometheus-alertmanager", "alertmanager"),
                            "apt-get install prometheus-alertmanager"),
                           (("node",), "apt-get install nodejs npm")):
        if not any(found[n] for n in names):
            missing.append(f"{names[0]} ({install})")
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir() or not NODE_SCRIPT.exists():
        missing.append(f"bullmq for node in {NODE_DIR} (cd {NODE_DIR} && npm install; "
                       "scripts/setup does it)")
    if missing:
        raise Missing("runbook demo needs: " + "; ".join(missing))
    return Tools(str(found["redis-server"]), str(found["prometheus"]),
                 str(found["prometheus-alertmanager"] or found["alertmanager"]),
                 str(found["node"]))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host(url: str) -> str:
    """HOST:PORT of an http:// URL."""
    return url.split("//", 1)[1]


def get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET on loopback; (status, body), never raising on an HTTP error status."""
    request = urllib.request.Request(url)  # noqa: S310 - loopback URLs this demo built
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def get_json(url: str, token: str | None = None) -> Any:
    """GET a JSON document; RuntimeError unless 200."""
    status, body = get(url, token)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status}")
    return json.loads(body)


def epoch(text: str) -> float:
    """RFC 3339 -> epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Cycle:
    """One breach-to-resolve run: epoch time of each step (absent when not reached)."""

    breach: float
    at: dict[str, float] = field(default_factory=dict)
    incident: dict[str, Any] = field(default_factory=dict)

    def since_breach(self, step: str) -> float | None:
        return self.at[step] - self.breach if step in self.at else None


STEPS = ("pending", "firing", "webhook", "action_started", "action_done", "healed", "resolved")
DESCRIBE = {
    "pending": "pending: Prometheus sees the queue above 100",
    "firing": "firing: held for the rule's `for`",
    "webhook": "webhook received: Alertmanager called the responder",
    "action_started": "action started: a worker is started (exec node e2e_bullmq.mjs drain)",
    "action_done": "action done",
    "healed": "healed: the incident is closed",
    "resolved": "resolved notification received: the alert is over",
}


class DemoLoop:
    """Redis, `runbook run`, Alertmanager and Prometheus on free ports in a temp dir."""

    def __init__(self, tools: Tools, keep: bool = False, scale: float = SCALE) -> None:
        self.tools = tools
        self.keep = keep
        self.timing = Timing(scale)
        self.dir = Path(tempfile.mkdtemp(prefix="runbook-demo-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.token = secrets.token_urlsafe(24)
        ports = [free_port() for _ in range(5)]
        self.redis = f"redis://127.0.0.1:{ports[0]}/0"
        self.exporter, self.responder, self.alertmanager, self.prometheus = (
            f"http://127.0.0.1:{p}" for p in ports[1:])

    @property
    def hold(self) -> float:
        """The rule's `for` at this time scale."""
        return self.timing.hold(600.0)

    @property
    def limit(self) -> float:
        """The loop's own limit: scrape + evaluation interval + `for` + group_wait."""
        return 2 * self.timing.interval + self.hold + self.timing.group_wait()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.dir, close_fds=True,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def _ready(self, url: str, proc: subprocess.Popen[bytes], name: str,
               timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")
            with contextlib.suppress(OSError):
                if get(url, timeout=1.0)[0] == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{name} was not ready at {url} after {timeout:g}s")

    def start(self) -> None:
        """Render the demo runbook and start every process, ready to breach."""
        redis_port = self.redis.rsplit(":", 1)[1].split("/")[0]
        redis = self._spawn("redis", [self.tools.redis, "--port", redis_port, "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"])
        drain = json.dumps({"op": "drain", "url": self.redis, "queue": QUEUE})
        book = self.dir / "runbook.yml"
        book.write_text(BOOK.format(redis=self.redis, queue=QUEUE, alert=ALERT,
                                    node=self.tools.node, script=NODE_SCRIPT, command=drain))
        token_file = self.dir / "webhook_token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.token)
        options = Options(timing=self.timing,
                          delivery=Delivery(f"{self.responder}/alerts", str(self.dir),
                                            str(token_file)),
                          exporters=[host(self.exporter)], alertmanager=host(self.alertmanager))
        write_all(render_all([load_runbook(book)], options), self.dir / "out")
        deploy = self.dir / "out" / "deploy"
        am = self._spawn("alertmanager", [
            self.tools.alertmanager, f"--config.file={deploy / 'alertmanager.yml'}",
            f"--storage.path={self.dir / 'am-data'}",
            f"--web.listen-address={host(self.alertmanager)}",
            f"--web.external-url={self.alertmanager}", "--cluster.listen-address=",
            "--log.level=warn"])
        prom = self._spawn("prometheus", [
            self.tools.prometheus, f"--config.file={deploy / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'prom-data'}",
            f"--web.listen-address={host(self.prometheus)}",
            f"--web.external-url={self.prometheus}", "--log.level=warn"])
        run = self._spawn("runbook-run", [
            sys.executable, "-m", "runbook.cli", "run", "--runbook", str(book),
            "--exporter-listen", host(self.exporter), "--responder-listen", host(self.responder),
            "--data-dir", str(self.dir / "data"), "--token-file", str(token_file),
            "--log-level", "WARNING"])
        if redis.poll() is not None:
            raise RuntimeError("redis-server exited at start")
        self._ready(f"{self.alertmanager}/-/ready", am, "alertmanager")
        self._ready(f"{self.prometheus}/-/ready", prom, "prometheus")
        self._ready(f"{self.responder}/health/ready", run, "runbook-run")
        self.wait("Prometheus' first scrape of the exporter", lambda: self.query(
            f'runbook_queue_depth{{queue="{QUEUE}"}}'), 30)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = get_json(f"{self.prometheus}/api/v1/query?query={quote(promql)}")
        return list(data["data"]["result"])

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll check() until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"no {what} after {timeout:g}s (logs in {self.dir})")

    def node(self, command: dict[str, Any]) -> Any:
        """Run the BullMQ script with one command; its JSON answer."""
        result = subprocess.run([self.tools.node, str(NODE_SCRIPT), json.dumps(command)],
                                capture_output=True, text=True, timeout=60, check=False,
                                cwd=NODE_DIR)
        if result.returncode != 0:
            raise RuntimeError(f"node {command['op']}: {result.stderr[-1500:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def _alert(self) -> dict[str, Any] | None:
        data = get_json(f"{self.prometheus}/api/v1/alerts")
        return next((a for a in data["data"]["alerts"]
                     if a["labels"].get("alertname") == ALERT), None)

    def _incident(self, since: float) -> dict[str, Any] | None:
        data = get_json(f"{self.responder}/incidents?limit=20", self.token)
        for item in data["incidents"]:
            if item["alertname"] == ALERT and epoch(item["first_seen"]) >= since:
                return dict(item)
        return None

    def cycle(self, report: Callable[[str, Cycle], None] | None = None,
              timeout: float = 60.0) -> Cycle:
        """Breach once and follow the loop until the alert resolved; report(step) as it goes."""
        self.wait("quiet loop before the breach", lambda: self._alert() is None, 30)
        filled = self.node({"op": "fill", "url": self.redis, "queue": QUEUE, "n": JOBS})
        cycle = Cycle(breach=float(filled["at"]))
        if report:
            report("breach", cycle)
        deadline = time.monotonic() + timeout
        while "resolved" not in cycle.at:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the loop did not close within {timeout:g}s "
                                   f"(reached {list(cycle.at)}; logs in {self.dir})")
            self._observe(cycle, report)
            time.sleep(0.02)
        return cycle

    def _observe(self, cycle: Cycle, report: Callable[[str, Cycle], None] | None) -> None:
        found: dict[str, float] = {}
        if "firing" not in cycle.at:
            alert = self._alert()
            if alert is not None:
                found["pending"] = epoch(alert["activeAt"])
        incident = self._incident(cycle.breach - 1.0)
        if incident is not None:
            cycle.incident = incident
            found["pending"] = min(found.get("pending", 1e18), cycle.at.get("pending", 1e18))
            found["firing"] = epoch(incident["startsAt"])
            for step in incident["steps"]:
                kind, at = step["kind"], epoch(step["at"])
                if kind == "received":
                    found.setdefault("webhook", at)
                elif kind == "action_started":
                    found.setdefault("action_started", at)
                elif kind == "action_finished":
                    found.setdefault("action_done", at)
                if step["detail"].get("state") == "healed":
                    found.setdefault("healed", at)
                if kind == "resolved" and step["detail"].get("status") == "resolved":
                    found.setdefault("resolved", at)
        for step in STEPS:
            if step in found and step not in cycle.at and found[step] < 1e18:
                cycle.at[step] = found[step]
                if report:
                    report(step, cycle)

    def close(self) -> None:
        """Stop every process this demo started; remove the temp dir unless kept."""
        # A second Ctrl-C or SIGTERM must not cut the stopping short and leave them running.
        with contextlib.suppress(ValueError):  # only the main thread handles signals
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def demo_loop(tools: Tools, keep: bool = False, scale: float = SCALE) -> Iterator[DemoLoop]:
    """A started DemoLoop, stopped afterwards whatever happens."""
    loop = DemoLoop(tools, keep, scale)
    try:
        loop.start()
        yield loop
    finally:
        loop.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (logs, runbook, rendered configs) afterwards")


class Printer:
    """Prints each step once, with the time since the breach and since the previous step."""

    def __init__(self, out: TextIO, loop: DemoLoop) -> None:
        self.out = out
        self.loop = loop
        self.last = 0.0

    def __call__(self, step: str, cycle: Cycle) -> None:
        if step == "breach":
            self.say(f"[ 0.00s] breach: {JOBS} jobs added to queue {QUEUE!r}, no worker running")
            return
        at = cycle.at[step] - cycle.breach
        text = DESCRIBE[step]
        if step == "firing":
            text += f" ({self.loop.hold:g}s at this time scale)"
        if step == "action_done":
            text += self._outcome(cycle)
        if step == "healed":
            how = [s for s in cycle.incident.get("steps", [])
                   if s["detail"].get("state") == "healed"]
            if how and how[0]["kind"] == "verified":
                text += " (verified: Prometheus says it is no longer firing)"
            elif how:
                text += " (the resolved notification arrived after the action)"
        self.say(f"[{at:5.2f}s] {text}  (+{max(at - self.last, 0.0):.2f}s)")
        self.last = max(self.last, at)

    def _outcome(self, cycle: Cycle) -> str:
        done = [s for s in cycle.incident.get("steps", []) if s["kind"] == "action_finished"]
        if not done:
            return ""
        detail = done[0]["detail"]
        first = str(detail.get("output", "")).strip().splitlines()[:1]
        return f": {detail.get('status')} in {float(detail.get('duration_seconds', 0)):.2f}s" + (
            f", worker said {first[0]}" if first else "")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class Stopped(Exception):
    """SIGTERM or SIGHUP: stop as Ctrl-C does, through every cleanup (the children run in
    sessions of their own, so nothing else would stop them)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def run(args: argparse.Namespace) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    try:
        return _run(args)
    except Stopped as stop:
        print(f"runbook demo: stopped by {stop}; everything it started is stopped",
              file=sys.stderr)
        return 128 + stop.signum


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        tools = find_tools()
    except Missing as exc:
        print(exc, file=sys.stderr)
        return 2
    print("runbook demo: a BullMQ queue whose worker is gone, healed by its runbook", file=out)
    started = time.monotonic()
    try:
        with demo_loop(tools, keep=args.keep) as loop:
            print(f"started redis-server, Prometheus, Alertmanager and `runbook run` on "
                  f"loopback in {time.monotonic() - started:.1f}s ({loop.dir})", file=out)
            print(f"rule: {ALERT} (critical) when queue {QUEUE!r} holds more than 100 jobs for "
                  f"10m, {loop.hold:g}s here; scrape and evaluation every "
                  f"{loop.timing.interval:g}s, Alertmanager group_wait "
                  f"{loop.timing.group_wait():g}s", file=out)
            print("respond: start a worker that drains the queue (exec), verify after 4s",
                  file=out, flush=True)
            printer = Printer(out, loop)
            cycle = loop.cycle(printer)
            started_at = cycle.since_breach("action_started")
            state = cycle.incident.get("state")
            print(f"\nincident {cycle.incident.get('id')}: {state}; breach to action started "
                  f"{started_at:.2f}s against the loop's own limit of {loop.limit:g}s "
                  "(scrape + evaluation + for + group_wait)", file=out)
            if args.keep:
                print(f"logs and rendered configs kept in {loop.dir}", file=out)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"runbook demo: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.1f}s; everything it started is stopped",
          file=out)
    return 0 if state == "healed" else 1
