"""A time-scaled render drives real Prometheus and Alertmanager: tiers fire within seconds."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runbook.loader import load_text
from runbook.render.alertmanager import Delivery
from runbook.render.output import Options, render_all, write_all
from runbook.render.timing import Timing
from tests.servers import free_port, wait_for_port

RUNBOOK = """
service: loop
watch:
  redis:
    - name: main
      url: redis://127.0.0.1:1/0
      queues: {bullmq: [scrape]}
alerts:
  queue_depth: {warning: 50, critical: {threshold: 100, for: 10m}, for: 5m}
respond:
  - match: {alertname: QueueDepthHigh, severity: critical}
    mode: auto
    do: [{exec: ["true"]}]
"""


class Fake:
    """An exporter serving one queue depth and a responder recording webhook alerts."""

    def __init__(self) -> None:
        self.depth = 0
        self.received: list[tuple[float, str, str, str | None]] = []
        self.start = time.monotonic()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                body = ('runbook_queue_depth{target="main",kind="bullmq",queue="scrape"} '
                        f"{fake.depth}\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in data["alerts"]:
                    fake.received.append((time.monotonic() - fake.start, alert["status"],
                                          alert["labels"]["severity"],
                                          self.headers.get("Authorization")))
                self.send_response(200)
                self.end_headers()

        return Handler


@pytest.fixture
def servers() -> Iterator[tuple[Fake, int, int]]:
    fake = Fake()
    started = []
    ports = []
    for _ in range(2):
        port = free_port()
        server = ThreadingHTTPServer(("127.0.0.1", port), fake.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        ports.append(port)
    yield fake, ports[0], ports[1]
    for server in started:
        server.shutdown()
        server.server_close()


def test_time_scaled_render_fires_and_resolves_in_seconds(
        tmp_path: Path, prometheus_bin: str, alertmanager_bin: str,
        servers: tuple[Fake, int, int]) -> None:
    fake, exporter_port, responder_port = servers
    prom_port, am_port = free_port(), free_port()
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    options = Options(timing=Timing(0.01),
                      delivery=Delivery(f"http://127.0.0.1:{responder_port}/alerts",
                                        str(tmp_path), str(token)),
                      exporters=[f"127.0.0.1:{exporter_port}"],
                      alertmanager=f"127.0.0.1:{am_port}")
    write_all(render_all([load_text(RUNBOOK)], options), tmp_path)
    procs = [
        subprocess.Popen([prometheus_bin, f"--config.file={tmp_path}/deploy/prometheus.yml",
                          f"--storage.tsdb.path={tmp_path}/prom",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([alertmanager_bin, f"--config.file={tmp_path}/deploy/alertmanager.yml",
                          f"--storage.path={tmp_path}/am",
                          f"--web.listen-address=127.0.0.1:{am_port}",
                          "--cluster.listen-address="],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for_port(prom_port)
        wait_for_port(am_port)
        time.sleep(1)
        fake.depth = 150
        breach = time.monotonic() - fake.start
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                r[1:3] == ("firing", "critical") for r in fake.received):
            time.sleep(0.1)
        fake.depth = 0
        recovered = time.monotonic() - fake.start
        while time.monotonic() < deadline and not any(r[1] == "resolved" for r in fake.received):
            time.sleep(0.1)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    firing = {r[2]: r[0] - breach for r in fake.received if r[1] == "firing"}
    # warning: for 3s, critical: for 6s, plus scrape, evaluation and group_wait of about 1s each.
    assert 3 <= firing["warning"] < 10, fake.received
    assert 6 <= firing["critical"] < 13, fake.received
    resolved = [r[0] - recovered for r in fake.received if r[1] == "resolved"]
    assert resolved
    assert max(resolved) < 8
    assert {r[3] for r in fake.received} == {"Bearer secret-token"}
