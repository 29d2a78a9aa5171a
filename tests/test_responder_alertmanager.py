"""A real Alertmanager delivering to a real responder: resends and repeats are deduplicated, and
a 503 while the store is down is retried by Alertmanager until it is recorded."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from responder.payload import occurrence_id
from tests.servers import start_postgres
from tests.stack import Stack, free_port, http_get, http_json, stack
from tests.test_responder_support import TOKEN, append_argv, runbook

AM_CONFIG = """\
route:
  receiver: responder
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 3s
receivers:
  - name: responder
    webhook_configs:
      - url: {url}/alerts
        send_resolved: true
        http_config:
          authorization: {{type: Bearer, credentials: {token}}}
"""


def post_alert(am: str, starts: str, ends: str) -> None:
    data = json.dumps([{"labels": {"alertname": "GaugeHigh", "instance": "host-1",
                                   "severity": "critical"},
                        "annotations": {"summary": "high"}, "startsAt": starts,
                        "endsAt": ends, "generatorURL": "http://prometheus/graph"}]).encode()
    request = urllib.request.Request(f"{am}/api/v2/alerts", data=data, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        assert response.status == 200


def metric(url: str, pattern: str) -> float:
    _, text = http_get(f"{url}/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def incidents(url: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{url}/incidents", token=TOKEN)
    return list(json.loads(body)["incidents"]) if status == 200 else []


def test_alertmanager_resends_repeats_and_retries(tmp_path: Path, alertmanager_bin: str) -> None:
    del alertmanager_bin  # the fixture checks it is installed; Stack finds it the same way
    runs = tmp_path / "runs.txt"
    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            f"    mode: auto\n    do: [{{exec: {json.dumps(append_argv(runs))}}}]\n")
    (tmp_path / "runbook.yml").write_text(runbook(rule))
    pg = start_postgres()
    try:
        with stack() as s:
            url = _responder(s, tmp_path / "runbook.yml", pg.dsn())
            (tmp_path / "am.yml").write_text(AM_CONFIG.format(url=url, token=TOKEN))
            _, am = s.alertmanager(tmp_path / "am.yml")
            pg.stop("immediate")
            starts = datetime.now(UTC).replace(microsecond=0)
            post_alert(am, starts.isoformat().replace("+00:00", "Z"),
                       (starts + timedelta(hours=1)).isoformat().replace("+00:00", "Z"))
            # Alertmanager retries 5xx: several attempts while the store is down.
            until(lambda: metric(url, r'runbook_responder_notifications_total\{result='
                                      r'"store_error"') >= 2, 20, "retried 503s")
            assert metric(url, r'runbook_responder_notifications_total\{result="recorded"') == 0
            pg.start()
            found = until(lambda: incidents(url), 20, "the notification after the store is back")
            oid = found[0]["id"]
            assert oid == occurrence_id(found[0]["fingerprint"],
                                        starts.strftime("%Y-%m-%dT%H:%M:%S.000000Z"))
            # repeat_interval 3s: more copies arrive, each deduplicated.
            until(lambda: http_json(f"{url}/incidents/{oid}", token=TOKEN)["notifications"] >= 3,
                  20, "repeated notifications")
            ends = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            post_alert(am, starts.isoformat().replace("+00:00", "Z"), ends)
            data = until(lambda: (d := http_json(f"{url}/incidents/{oid}", token=TOKEN))
                         ["state"] in ("healed", "resolved") and d, 20, "resolved notification")
            steps = [x["kind"] for x in data["steps"]]
            assert steps.count("received") == 1
            assert steps.count("queued") == 1
            assert steps.count("action_started") == 1
            assert steps.count("deduplicated") >= 2
            assert steps[-1] == "resolved"
            assert runs.read_text() == "host-1\n"
            assert metric(url, r'runbook_responder_decisions_total\{outcome="queued"') == 1
    finally:
        pg.stop("immediate")
        shutil.rmtree(pg.dir, ignore_errors=True)


def _responder(s: Stack, rb: Path, dsn: str) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s.runbook("responder", ["responder", "--runbook", str(rb), "--listen", f"127.0.0.1:{port}",
                            "--store", dsn], f"{url}/health/ready",
              env={"RUNBOOK_WEBHOOK_TOKEN": TOKEN})
    return url
