"""The exporter's aiohttp app: /metrics, /health, /health/ready, /health/detail."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import ProcessCollector
from prometheus_client.core import Metric

from exporter.collectors import COLLECTORS, Options, build, check_names
from exporter.collectors.base import Collector
from exporter.collectors.http import buckets_with
from exporter.render import compress, render, wants_gzip, wants_openmetrics
from exporter.resources import Resources, check_env, open_resources
from exporter.scrape import Scraper, deadline_from_header
from runbook.loader import LoadedRunbook
from runbook.schema import Watch
from runbook.signals import Unit


@dataclass
class ExporterState:
    """What the app's cleanup context opened; empty until start-up finished."""

    watch: Watch
    names: list[str]
    options: Options
    env: Mapping[str, str]
    resources: Resources | None = None
    collectors: list[Collector] = field(default_factory=list)
    scraper: Scraper | None = None
    process: ProcessCollector = field(
        default_factory=lambda: ProcessCollector(registry=None))


STATE = web.AppKey("exporter_state", ExporterState)


def latency_thresholds(loaded: LoadedRunbook) -> list[float]:
    """Every threshold in seconds of the runbook's alerts and latency SLOs."""
    out = [t.threshold for a in loaded.alerts if a.unit is Unit.SECONDS for t in a.tiers]
    out.extend(s.sli.latency for s in loaded.runbook.slos if s.sli.latency is not None)
    return out


def build_app(loaded: LoadedRunbook | None, *, collectors: Sequence[str] | None = None,
              options: Options | None = None, env: Mapping[str, str] | None = None,
              app: web.Application | None = None) -> web.Application:
    """The exporter app for this runbook (None: the host and the exporter itself).

    Raises ConfigError at once for an unknown collector name or a missing env var. Pass `app`
    to add the exporter's routes and lifecycle to an existing application.
    """
    watch = loaded.runbook.watch if loaded is not None else Watch()
    names = check_names(list(collectors) if collectors is not None else list(COLLECTORS))
    env = os.environ if env is None else env
    check_env(watch, env)
    options = options or Options()
    if loaded is not None:
        options = Options(**{**options.__dict__,
                             "buckets": buckets_with([*options.buckets,
                                                      *latency_thresholds(loaded)])})
    app = app if app is not None else web.Application()
    app[STATE] = ExporterState(watch, names, options, env)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/detail", detail)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.resources = await open_resources(state.watch, state.env)
    started: list[Collector] = []
    try:
        state.collectors = build(state.names, state.watch, state.resources, state.options)
        for c in state.collectors:
            await c.start()
            started.append(c)
        state.scraper = Scraper(state.collectors)
        yield
    finally:
        state.scraper = None
        for c in reversed(started):
            await c.close()
        await state.resources.close()


async def metrics(request: web.Request) -> web.Response:
    """One scrape: every collector under the deadline Prometheus gave."""
    state = request.app[STATE]
    if state.scraper is None:
        raise web.HTTPServiceUnavailable(text="the exporter is starting\n")
    deadline = deadline_from_header(request.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
    families: list[Metric] = await state.scraper.scrape(deadline)
    families.extend(state.process.collect())
    body, content_type = render(families, wants_openmetrics(request.headers.get("Accept")))
    headers = {"Content-Type": content_type}
    if wants_gzip(request.headers.get("Accept-Encoding")) and len(body) > 1024:
        body = await asyncio.to_thread(compress, body) if len(body) > 1 << 20 else compress(body)
        headers["Content-Encoding"] = "gzip"
    headers["Vary"] = "Accept, Accept-Encoding"
    return web.Response(body=body, headers=headers)


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "healthy"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: start-up finished and collectors are in place."""
    if request.app[STATE].scraper is None:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


async def detail(request: web.Request) -> web.Response:
    """Per collector and target: up, last success, duration, last error."""
    state = request.app[STATE]
    scraper = state.scraper
    if scraper is None:
        return web.json_response({"status": "starting", "collectors": []}, status=503)
    rows = []
    for c in scraper.collectors:
        row = scraper.health[(c.kind, c.target)].as_json()
        row.update(c.detail())
        rows.append(row)
    return web.json_response({"status": "ready", "collectors": rows})
