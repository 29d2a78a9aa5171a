"""Shared helpers of the exporter tests: serve the app, scrape it, read samples."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import build_app
from exporter.collectors import Options
from runbook.loader import LoadedRunbook, load_text

NODE_DIR = Path(__file__).parent / "node"
NODE = shutil.which("node") or "node"

Client = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def runbook(yaml_text: str) -> LoadedRunbook:
    """A loaded runbook from YAML text (the service line is added)."""
    return load_text("service: svc\n" + yaml_text, "test.yml")


@contextlib.asynccontextmanager
async def serve(loaded: LoadedRunbook | None, *, collectors: Sequence[str] | None = None,
                options: Options | None = None,
                env: Mapping[str, str] | None = None) -> AsyncIterator[Client]:
    """A test client of the exporter app, started and cleaned up around the block."""
    app = build_app(loaded, collectors=collectors, options=options, env=env or {})
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def scrape_text(client: Client,
                      scrape_timeout: float | None = None) -> str:
    """The /metrics body, with Prometheus' scrape timeout header when given."""
    headers = {} if scrape_timeout is None else {
        "X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout)}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    return await response.text()


def samples(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and label set."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; KeyError listing what there is otherwise."""
    key = (name, frozenset(labels.items()))
    if key not in found:
        near = sorted(str(dict(k[1])) for k in found if k[0] == name)
        raise KeyError(f"{name}{labels} not in scrape; {name} has {near}")
    return found[key]


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers; yields the port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def node(script: str, *args: str, timeout: float = 120) -> str:
    """Run tests/node/<script> with node; its stdout."""
    out = subprocess.run([NODE, str(NODE_DIR / script), *args], check=True, cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=timeout)
    return out.stdout
