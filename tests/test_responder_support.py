"""Helpers for the responder tests: runbooks, webhook bodies, an app on a real port, a page sink."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from responder.app import Settings, build_app
from responder.store import Store, open_store
from runbook.loader import LoadedRunbook, load_text

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
TOKEN = "test-token-5b1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

BASE_RUNBOOK = """\
service: shop
watch: {{host: {{}}}}
alerts:
  memory_usage: {{warning: 70%, critical: 85%, for: 5m}}
page:
  default: {{webhook: {{url: "{page_url}"}}}}
{extra}
respond:
{respond}
"""


def append_argv(path: Path, text: str = "{{ labels.instance }}") -> list[str]:
    """An exec argv that appends one line (the instance label) to a file: counts runs."""
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    return [sys.executable, "-c", code, str(path), text]


def runbook(respond: str, page_url: str = "http://127.0.0.1:9/page", extra: str = "") -> str:
    """Runbook YAML text with the given respond rules."""
    return BASE_RUNBOOK.format(respond=respond, page_url=page_url, extra=extra)


def load(respond: str, page_url: str = "http://127.0.0.1:9/page", extra: str = "",
         tmp: Path | None = None) -> LoadedRunbook:
    text = runbook(respond, page_url, extra)
    if tmp is not None:
        (tmp / "runbook.yml").write_text(text)
    return load_text(text, "runbook.yml")


def alert(fingerprint: str = "fp1", starts: str = "2026-11-24T07:12:19.279Z",
          status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "GaugeHigh", "instance": "host-1", "severity": "critical",
                   **labels},
        "annotations": {"summary": "gauge high"},
        "startsAt": starts,
        "endsAt": "2026-11-24T07:20:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def body(*alerts: dict[str, Any], status: str | None = None, **extra: Any) -> dict[str, Any]:
    alerts = alerts or (alert(),)
    return {
        "receiver": "responder", "status": status or alerts[0]["status"], "alerts": list(alerts),
        "groupLabels": {"alertname": "GaugeHigh"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager", "version": "4",
        "groupKey": '{}:{alertname="GaugeHigh"}', "truncatedAlerts": 0, **extra,
    }


class PageSink:
    """A local HTTP server standing in for the paging webhook; records every body."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0
        """Seconds each answer waits (a slow receiver)."""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status)


@asynccontextmanager
async def page_sink() -> AsyncIterator[tuple[PageSink, str]]:
    sink = PageSink()
    app = web.Application()
    app.router.add_post("/page", sink.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield sink, str(server.make_url("/page"))
    finally:
        await server.close()


@asynccontextmanager
async def responder(loaded: LoadedRunbook, store: Store, **settings: Any
                    ) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The responder app on a real loopback port with a client."""
    settings.setdefault("poll", 0.05)
    app = build_app(loaded, store, Settings(token=TOKEN, **settings))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def store_for(kind: str, tmp: Path, postgres_dsn: Callable[[], str]) -> Store:
    if kind == "sqlite":
        return open_store(None, tmp / "data")
    return open_store(postgres_dsn())


async def post(client: TestClient[web.Request, web.Application], payload: Any,
               headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    return await client.post("/alerts", data=data, headers={
        "Content-Type": "application/json", **AUTH, **(headers or {})})


async def incident(client: TestClient[web.Request, web.Application], oid: str
                   ) -> dict[str, Any]:
    response = await client.get(f"/incidents/{oid}", headers=AUTH)
    assert response.status == 200, await response.text()
    data: dict[str, Any] = await response.json()
    return data


async def wait_state(client: TestClient[web.Request, web.Application], oid: str,
                     *states: str, within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        data = await incident(client, oid)
        if data["state"] in states:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{oid} stayed {data['state']}, not {states}: "
                                 f"{json.dumps(data['steps'], indent=1)[-3000:]}")
        await asyncio.sleep(0.05)


def kinds(data: dict[str, Any]) -> list[str]:
    return [s["kind"] for s in data["steps"]]


class ThreadSink:
    """A paging webhook on a thread, for tests that drive real processes synchronously."""

    def __init__(self) -> None:
        import http.server
        import threading

        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                del args

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/page"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
