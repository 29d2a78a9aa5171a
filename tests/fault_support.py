"""Helpers of the fault, hostile-input and load tests: real responder processes, runbooks whose
actions leave a countable side effect, Alertmanager clusters, RSS and figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.servers import PostgresServer
from tests.stack import Proc, Stack, free_port, http_get, wait_ready

TOKEN = "fault-token-8c2f1e7d9a"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FIGURES = Path(tempfile.gettempdir()) / "runbook-fault-figures.jsonl"
# Rails wide open: these tests count runs, so no rail may turn an action into a page.
OPEN_RAILS = "rails: {max_concurrent: 256, rate_limit: {count: 1000000, per: 1s}}\n"
# argv of an exec action that appends one line (its argument) with O_APPEND: counts runs.
APPEND_CODE = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
# argv of an exec action that appends its own argv as one JSON line.
ARGV_CODE = "import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')"


def python_argv(code: str, *args: str) -> list[str]:
    """An exec argv running `code` with the interpreter of this venv, without site-packages."""
    return [sys.executable, "-S", "-c", code, *args]


def runbook_text(rules: str, page_url: str = "http://127.0.0.1:9/page", extra: str = "") -> str:
    """A runbook whose `respond:` holds `rules` (YAML, indented two spaces), rails wide open."""
    return (f"service: faults\nwatch: {{host: {{}}}}\n"
            f"page:\n  default: {{webhook: {{url: \"{page_url}\"}}}}\n"
            f"{OPEN_RAILS}{extra}respond:{chr(10) + rules if rules else ' []' + chr(10)}")


def exec_rule(name: str, alertname: str, argv: Sequence[str], *, timeout: str = "1m",
              patterns: dict[str, str] | None = None, extra: str = "") -> str:
    """One auto respond rule running one exec action."""
    params: dict[str, Any] = {"argv": list(argv), "timeout": timeout}
    if patterns:
        params["label_patterns"] = patterns
    return (f"  - name: {name}\n    match: {{alertname: {alertname}}}\n    external: true\n"
            f"    mode: auto\n    cooldown: 0s\n{extra}"
            f"    do: [{{exec: {json.dumps(params)}}}]\n")


def alert(instance: str, starts: str, alertname: str = "FaultTest", status: str = "firing",
          **labels: str) -> dict[str, Any]:
    """One webhook alert; the fingerprint is derived from the labels like Alertmanager's."""
    all_labels = {"alertname": alertname, "instance": instance, "severity": "critical", **labels}
    return {
        "status": status, "labels": all_labels, "annotations": {"summary": "fault test"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else starts,
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint(all_labels),
    }


def fingerprint(labels: dict[str, str]) -> str:
    """A stable 16-hex-digit fingerprint of a label set."""
    import hashlib

    text = "\xff".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A version 4 webhook body around `alerts`."""
    return {
        "receiver": "responder", "status": alerts[0]["status"], "alerts": list(alerts),
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager", "version": "4",
        "groupKey": "{}:{}", "truncatedAlerts": 0,
    }


def start_responder(s: Stack, name: str, runbook: Path, *args: str,
                    env: dict[str, str] | None = None, port: int | None = None) -> tuple[Proc, str]:
    """A real `runbook responder` process, ready; (its Proc, its URL)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = s.runbook(name, ["responder", "--runbook", str(runbook), "--listen",
                            f"127.0.0.1:{port}", *args], f"{url}/health/ready",
                     env={"RUNBOOK_WEBHOOK_TOKEN": TOKEN, **(env or {})})
    return proc, url


def incidents(url: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every incident a responder lists (raises when it cannot answer)."""
    status, body = http_get(f"{url}/incidents?limit={limit}", timeout=30, token=TOKEN)
    if status != 200:
        raise RuntimeError(f"GET /incidents -> {status}: {body[:300]!r}")
    return list(json.loads(body)["incidents"])


def metric(url: str, pattern: str) -> float:
    """The sum of the responder's samples whose line matches `pattern`."""
    _, text = http_get(f"{url}/metrics", timeout=10)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if re.match(pattern, line))


def until(check: Callable[[], Any], within: float, what: str, every: float = 0.1) -> Any:
    """The first truthy value of check(), or AssertionError naming `what`."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(every)


def lines(path: Path) -> list[str]:
    """The lines of a side-effect file (none when it does not exist)."""
    return path.read_text().splitlines() if path.exists() else []


def kinds(incident: dict[str, Any]) -> list[str]:
    return [str(step["kind"]) for step in incident["steps"]]


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def report(test: str, **figures: Any) -> None:
    """Print a test's figures and append them to the figures file (one JSON line per test)."""
    line = json.dumps({"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures},
                      sort_keys=False)
    print(f"\nFIGURES {line}", flush=True)
    with FIGURES.open("a") as handle:
        handle.write(line + "\n")


async def post_json(session: aiohttp.ClientSession, url: str, payload: Any,
                    limit: float = 10.0) -> int:
    """POST a webhook body; its status, or 0 when the connection failed."""
    data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    try:
        async with session.post(f"{url}/alerts", data=data, headers=AUTH,
                                timeout=aiohttp.ClientTimeout(total=limit)) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0


def post_alerts_to_am(am: str, alerts: Iterable[dict[str, Any]]) -> None:
    """POST alerts to an Alertmanager's v2 API, as Prometheus does."""
    data = json.dumps(list(alerts)).encode()
    request = urllib.request.Request(f"{am}/api/v2/alerts", data=data, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        assert response.status == 200


AM_CONFIG = """\
route:
  receiver: responders
  group_by: [alertname, instance]
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: {repeat_interval}
receivers:
  - name: responders
    webhook_configs:
{webhooks}
"""


def am_config(urls: Sequence[str], group_wait: str = "1s", group_interval: str = "2s",
              repeat_interval: str = "4s") -> str:
    """An Alertmanager config sending every notification to each of `urls` (their /alerts)."""
    webhooks = "".join(
        f"      - url: {u}/alerts\n        send_resolved: true\n"
        f"        http_config: {{authorization: {{type: Bearer, credentials: {TOKEN}}}}}\n"
        for u in urls)
    return AM_CONFIG.format(webhooks=webhooks, group_wait=group_wait,
                            group_interval=group_interval, repeat_interval=repeat_interval)


def am_cluster(s: Stack, config: Path, size: int = 2) -> list[str]:
    """`size` Alertmanagers gossiping on loopback, each peered with the others; their URLs."""
    cluster_ports = [free_port() for _ in range(size)]
    urls = []
    for i, port in enumerate(cluster_ports):
        args = [f"--cluster.listen-address=127.0.0.1:{port}",
                "--cluster.advertise-address=127.0.0.1:" + str(port),
                "--cluster.peer-timeout=1s", "--cluster.gossip-interval=100ms",
                "--cluster.pushpull-interval=2s"]
        args += [f"--cluster.peer=127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i]
        _, url = s.alertmanager(config, cluster=args)
        urls.append(url)
    return urls


def am_peers(url: str) -> int:
    """How many cluster members an Alertmanager sees."""
    status, body = http_get(f"{url}/api/v2/status")
    if status != 200:
        return 0
    return len(json.loads(body).get("cluster", {}).get("peers") or [])


def kill9(proc: Proc) -> None:
    """SIGKILL a process this test started (its whole session), and reap it."""
    assert proc.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.process.pid, signal.SIGKILL)
    proc.process.wait(10)


def children_of(pid: int) -> list[int]:
    """Direct children of a process (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def crash_postgres(pg: PostgresServer) -> None:
    """SIGKILL a PostgreSQL we started: the postmaster and every backend at once (a crash)."""
    pid = int((pg.data / "postmaster.pid").read_text().splitlines()[0])
    victims = [pid, *children_of(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    until(lambda: all(_zombie(v) for v in victims), 10, "postgres to die", 0.02)
    # PID 1 reaps orphans lazily here; a zombie postmaster still "exists" for PostgreSQL's
    # lock-file check, so wait for the reaping, then drop a lock file naming a dead process.
    with contextlib.suppress(AssertionError):
        until(lambda: not Path(f"/proc/{pid}").exists(), 5, "the zombie to be reaped", 0.05)
    with contextlib.suppress(FileNotFoundError):
        (pg.data / "postmaster.pid").unlink()


def _zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
    except OSError:
        return True


def run_async(coro: Any) -> Any:
    """asyncio.run for the synchronous tests."""
    return asyncio.run(coro)


__all__ = ["AUTH", "TOKEN", "Proc", "Stack", "alert", "exec_rule", "incidents", "kill9",
           "metric", "notification", "post_json", "python_argv", "report", "rss_kib",
           "runbook_text", "start_responder", "until", "wait_ready"]
