"""Helpers for the action tests: a runbook from text and an ActionContext around it."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from responder.actions.base import ActionContext, AlertView, Outcome
from runbook.loader import LoadedRunbook, load_text
from tests.servers import free_port

STARTS = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)


def book(text: str = "service: shop\n") -> LoadedRunbook:
    """A loaded runbook from YAML text (dedented)."""
    return load_text(textwrap.dedent(text))


def context(
    session: aiohttp.ClientSession,
    runbook: LoadedRunbook | None = None,
    labels: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    dry_run: bool = False,
    history: list[Outcome] | None = None,
    annotations: Mapping[str, str] | None = None,
    fingerprint: str = "0123456789abcdef",
    generator_url: str = "",
) -> ActionContext:
    """An ActionContext for one alert; env defaults to PATH only."""
    alert = AlertView(
        fingerprint=fingerprint,
        starts_at=STARTS,
        labels=dict(labels or {"alertname": "QueueDepthHigh", "severity": "critical"}),
        annotations=dict(annotations or {}),
        generator_url=generator_url,
    )
    return ActionContext(
        alert=alert,
        occurrence_id=f"{fingerprint}-1764057600",
        runbook=runbook or book(),
        session=session,
        env=dict(env) if env is not None else {"PATH": os.environ.get("PATH", os.defpath)},
        dry_run=dry_run,
        history=list(history or []),
        incident_url="http://responder.example/incidents/7",
    )


@dataclass
class Recorded:
    """One request the recording server received."""

    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Recorder:
    """A local HTTP server that records every request and answers with the status set per path."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0
    echo_authorization: bool = False
    """Error bodies quote the request's Authorization header, as some careless receivers do."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append(Recorded(request.method, request.raw_path, headers, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        code = self.status.get(request.path, 200)
        text = "ok" if code < 300 else "invalid_payload"
        if code >= 300 and self.echo_authorization:
            text = f"bad credentials: {request.headers.get('Authorization', '')}"
        return web.Response(status=code, text=text)


@asynccontextmanager
async def recorder() -> AsyncIterator[Recorder]:
    """Start a Recorder on a free loopback port; stop it afterwards."""
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    rec.url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()
