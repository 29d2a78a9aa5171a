"""The responder's HTTP API: webhook intake, incidents, approvals, metrics, health, OpenAPI."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from responder import ui
from responder.actions.notify import unset_page_env
from responder.bodies import ValidatedBodies
from responder.known import KnownOccurrences
from responder.metrics import Metrics
from responder.openapi import openapi_document
from responder.payload import PLAIN_JSON, Notification, utf8_text
from responder.policy import Policy
from responder.store import Store, StoreError
from responder.store import work as ops
from responder.store.base import is_occurrence_id
from responder.store.intake import IntakeJob
from responder.store.queries import get_incident, list_incidents
from responder.wakeup import Wakeup
from responder.worker import Hooks, Worker, WorkerConfig
from runbook.loader import LoadedRunbook

log = logging.getLogger("responder")

MAX_BODY = 4 * 1024 * 1024
BODY_SECONDS = 10.0
MAX_LIMIT = 1000


@dataclass
class Settings:
    """Everything build_app needs besides the runbook and the store."""

    token: str
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                       f"{uuid.uuid4().hex[:6]}")
    lease: float = 60.0
    poll: float = 0.5
    max_body: int = MAX_BODY
    public_url: str = ""
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    run_worker: bool = True
    hooks: Hooks | None = None
    redis_url: str | None = None
    grace: float = 10.0
    """Seconds running actions get to finish at shutdown before they are cut short."""
    retention: float = 30 * 86400.0
    """Seconds ended incidents and notification bodies are kept; 0 keeps them forever."""


STORE = web.AppKey("store", Store)
POLICY = web.AppKey("policy", Policy)
METRICS = web.AppKey("metrics", Metrics)
SETTINGS = web.AppKey("settings", Settings)
SESSION = web.AppKey("session", aiohttp.ClientSession)
WORKER = web.AppKey("worker", Worker)
WAKEUP = web.AppKey("wakeup", Wakeup)
KNOWN = web.AppKey("known", KnownOccurrences)
BODIES = web.AppKey("bodies", ValidatedBodies)


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    token = request.app[SETTINGS].token
    # Compare bytes of equal meaning in constant time, whatever the header holds.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode())


def _unauthorized() -> web.Response:
    return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def post_alerts(request: web.Request) -> web.Response:
    """Record an Alertmanager notification durably, then answer; work runs afterwards."""
    started = time.perf_counter()
    now = time.time()
    metrics = request.app[METRICS]
    if not _authorized(request):
        metrics.notifications.labels("unknown", "unauthorized").inc()
        return _unauthorized()
    if request.content_type != "application/json":
        metrics.notifications.labels("unknown", "invalid").inc()
        return _error(415, f"content type must be application/json, not "
                           f"{request.content_type or 'missing'}")
    try:
        if request.content.is_eof():  # the whole body is here already: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(BODY_SECONDS):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.notifications.labels("unknown", "invalid").inc()
        return _error(413, f"body larger than {request.app[SETTINGS].max_body} bytes")
    except TimeoutError:
        # A body trickling in would hold a connection and its memory for ever: cut it off.
        metrics.notifications.labels("unknown", "invalid").inc()
        slow = _error(408, f"the body did not arrive within {BODY_SECONDS:g}s")
        slow.force_close()
        return slow
    # Most bodies are copies of one validated before (Alertmanager's resends, see bodies.py).
    text = utf8_text(raw)
    bodies = request.app[BODIES]
    note = bodies.get(text) if text is not None else None
    if note is None or text is None:
        parsed = _validate(raw, text, metrics)
        if isinstance(parsed, web.Response):
            return parsed
        note, body_text = parsed
        if text is not None:
            bodies.add(text, note)
    else:
        body_text = text
    paged_by = request.query.get("paged")
    if paged_by not in (None, "alertmanager"):
        metrics.notifications.labels(note.status, "invalid").inc()
        return _error(400, "the query parameter paged can only be 'alertmanager'")
    policy = request.app[POLICY]
    try:
        known = request.app[KNOWN]
        job = IntakeJob(note, body_text, policy, now, paged_by)
        job.known = known.all_known(job.alerts)
        result = await request.app[STORE].run_intake(job)
        known.add(a.occurrence_id for a in result.alerts)
    except StoreError as exc:
        metrics.store_errors.labels("intake").inc()
        metrics.notifications.labels(note.status, "store_error").inc()
        log.error("cannot record a notification: %s", exc)
        return _error(503, "the notification could not be recorded; retry later")
    if result.work_queued:
        await _wake(request.app, result.queued_kinds)
    metrics.notifications.labels(note.status, "recorded").inc()
    metrics.truncated.inc(note.truncated_alerts)
    for alert in result.alerts:
        metrics.alerts.labels(alert.status).inc()
        for outcome in alert.decisions:
            metrics.decisions.labels(outcome).inc()
        if alert.status == "new":
            # One line per decision, keyed by the occurrence (labels stay in the audit trail).
            log.info("occurrence %s decided: %s", alert.occurrence_id, ", ".join(alert.decisions),
                     extra={"occurrence": alert.occurrence_id, "decision": alert.decisions,
                            "notification": result.notification_id})
    for rail in result.rail_hits:
        metrics.rail_hits.labels(rail).inc()
    metrics.intake_seconds.observe(time.perf_counter() - started)
    answer = result.as_json()
    if note.truncated_alerts:
        answer["truncated_alerts"] = note.truncated_alerts
    return web.json_response(answer)


def _validate(raw: bytes, text: str | None,
              metrics: Metrics) -> tuple[Notification, str] | web.Response:
    """The notification in a body, with the body as UTF-8 JSON text; or the 400 answer."""
    try:
        body = json.loads(raw)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer too long to convert.
    except (ValueError, RecursionError) as exc:
        metrics.notifications.labels("unknown", "invalid").inc()
        return _error(400, f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        metrics.notifications.labels("unknown", "invalid").inc()
        return _error(400, "body must be a JSON object (an Alertmanager webhook, version 4)")
    plain = text is not None and b"\\u" not in raw  # see PLAIN_JSON
    try:
        note = Notification.model_validate(body, context={PLAIN_JSON: plain})
    except ValidationError as exc:
        # Only known values become a label: the body is untrusted (cardinality, encoding).
        status = body.get("status")
        metrics.notifications.labels(status if status in ("firing", "resolved") else "unknown",
                                     "invalid").inc()
        return _error(400, f"not an Alertmanager webhook (version 4): {_validation_reason(exc)}")
    # UTF-16/32 JSON is kept as UTF-8 JSON text.
    return note, text if text is not None else json.dumps(body)


async def _wake(app: web.Application, kinds: Collection[str] | None = None) -> None:
    if WORKER in app:
        app[WORKER].wake(kinds)
    if WAKEUP in app:
        await app[WAKEUP].publish()


async def get_incidents(request: web.Request) -> web.Response:
    """Occurrences, newest first; ?active=1 for open ones only; ?limit=N."""
    if not _authorized(request):
        return _unauthorized()
    active = request.query.get("active", "0").lower() in ("1", "true", "yes")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return _error(400, f"limit must be a number, not {request.query['limit']!r}")
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, f"limit must be between 1 and {MAX_LIMIT}")
    try:
        items = await request.app[STORE].run(lambda tx: list_incidents(tx, active, limit))
    except StoreError:
        request.app[METRICS].store_errors.labels("read").inc()
        return _error(503, "the store cannot be read right now")
    return web.json_response({"incidents": items})


async def get_one(request: web.Request) -> web.Response:
    """One occurrence with its audit steps."""
    if not _authorized(request):
        return _unauthorized()
    oid = request.match_info["id"]
    if not is_occurrence_id(oid):
        return _error(404, f"no incident {oid!r}")
    try:
        item = await request.app[STORE].run(lambda tx: get_incident(tx, oid))
    except StoreError:
        request.app[METRICS].store_errors.labels("read").inc()
        return _error(503, "the store cannot be read right now")
    if item is None:
        return _error(404, f"no incident {oid!r}")
    return web.json_response(item)


async def _answer(request: web.Request, approved: bool) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    oid = request.match_info["id"]
    if not is_occurrence_id(oid):
        return _error(404, f"no incident {oid!r}")
    who, reason = "api", ""
    if request.can_read_body:
        try:
            data = await request.json()
        except (ValueError, RecursionError):
            return _error(400, "body must be JSON: {\"by\": \"name\", \"reason\": \"...\"}")
        if not isinstance(data, dict):
            return _error(400, "body must be a JSON object")
        who = str(data.get("by", who))[:200]
        reason = str(data.get("reason", ""))[:2000]
    now = time.time()
    try:
        status, state = await request.app[STORE].run(
            lambda tx: ops.approve(tx, oid, approved, who, reason, now))
    except StoreError:
        request.app[METRICS].store_errors.labels("approve").inc()
        return _error(503, "the store cannot record the answer right now")
    if status == "not_found":
        return _error(404, f"no incident {oid!r}")
    if status == "conflict":
        return _error(409, f"incident {oid} has no approval waiting (it is {state})")
    if approved:
        await _wake(request.app)
    request.app[METRICS].decisions.labels("approved" if approved else "rejected").inc()
    return web.json_response({"id": oid, "state": state})


async def approve(request: web.Request) -> web.Response:
    """Let the rule's actions run for an occurrence awaiting approval."""
    return await _answer(request, True)


async def reject(request: web.Request) -> web.Response:
    """Refuse the rule's actions for an occurrence awaiting approval."""
    return await _answer(request, False)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """The responder's own metrics in the Prometheus text format."""
    metrics = request.app[METRICS]
    try:
        metrics.pending.set(await request.app[STORE].run(ops.pending))
    except StoreError:
        metrics.store_errors.labels("metrics").inc()
    return web.Response(body=generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    """Alive."""
    del request
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Ready when the store answers."""
    try:
        await request.app[STORE].ping()
    except StoreError as exc:
        return web.json_response({"status": "unavailable", "store": str(exc)}, status=503)
    return web.json_response({"status": "ready", "store": request.app[STORE].dialect})


async def openapi(request: web.Request) -> web.Response:
    """This API described as OpenAPI 3."""
    del request
    return web.json_response(openapi_document())


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/alerts", post_alerts),
    ("GET", "/incidents", get_incidents),
    ("GET", "/incidents/{id}", get_one),
    ("POST", "/incidents/{id}/approve", approve),
    ("POST", "/incidents/{id}/reject", reject),
    ("GET", "/metrics", metrics_endpoint),
    ("GET", "/health", health),
    ("GET", "/health/ready", ready),
    ("GET", "/openapi.json", openapi),
    ("GET", "/", ui.index),
    ("GET", "/ui/app.js", ui.script),
    ("GET", "/ui/style.css", ui.style),
]


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[STORE].open()
    yield
    await app[STORE].close()


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        app[SESSION] = session
        yield


async def _wakeup_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS].redis_url
    if url:
        app[WAKEUP] = Wakeup(url, lambda: None)
    yield
    if WAKEUP in app:
        await app[WAKEUP].close()


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    import asyncio
    import contextlib

    settings = app[SETTINGS]
    worker = Worker(app[STORE], app[POLICY].loaded, app[SESSION], app[METRICS], WorkerConfig(
        owner=settings.owner, lease=settings.lease, poll=settings.poll,
        concurrency=app[POLICY].loaded.runbook.rails.max_concurrent,
        public_url=settings.public_url, env=settings.env, retention=settings.retention),
        settings.hooks)
    app[WORKER] = worker
    # One process per SQLite file: whatever it left claimed was cut short by a stop.
    await worker.recover(everything=app[STORE].dialect == "sqlite")
    tasks = [asyncio.create_task(worker.run(), name="responder-worker")]
    if WAKEUP in app:
        app[WAKEUP].on_wake = worker.wake
        tasks.append(asyncio.create_task(app[WAKEUP].listen(), name="responder-wakeup"))
    yield
    if not await worker.drain(settings.grace):
        log.warning("work still running after %ss: cancelled; it is escalated or resumed at the "
                    "next start", settings.grace)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _private_answers(request: web.Request, response: web.StreamResponse) -> None:
    # Incidents carry labels and action output: no cache (a proxy, a CLI's) may keep a copy,
    # and no browser may read a JSON answer as anything else.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def build_app(loaded: LoadedRunbook, store: Store, settings: Settings,
              metrics: Metrics | None = None) -> web.Application:
    """The responder app; the store is opened and closed with it."""
    if not settings.token:
        raise ValueError("a webhook token is required (RUNBOOK_WEBHOOK_TOKEN or --token-file)")
    for unset in unset_page_env(loaded.runbook.page, settings.env):
        # Not fatal: the main command runs on embedded defaults with no receiver configured.
        # But a page would fail (and be retried, then end page_failed) without a word till then.
        log.warning("a paging receiver reads an env var that is not set (%s): its pages will "
                    "fail until the responder is restarted with it", unset)
    app = web.Application(client_max_size=settings.max_body)
    app.on_response_prepare.append(_private_answers)
    app[STORE] = store
    app[POLICY] = Policy(loaded)
    app[METRICS] = metrics or Metrics()
    app[SETTINGS] = settings
    app[KNOWN] = KnownOccurrences()
    app[BODIES] = ValidatedBodies()
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(_wakeup_ctx)
    if settings.run_worker:
        app.cleanup_ctx.append(_worker_ctx)
    return app
