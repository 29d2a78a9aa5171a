"""The page action and its resolve against a local recording server standing in for
PagerDuty, Slack and a generic webhook: exact bodies, severity routing, secrets kept out."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from responder.actions import ActionMetrics, resolve_page, run_action
from responder.actions.base import ActionContext, Outcome, Status
from responder.actions.notify import resolve
from responder.app import Settings, build_app
from responder.store import open_store
from runbook.actions import PageParams
from tests.actions_support import STARTS, Recorder, book, context, recorder

PD_KEY = "R0UT1NGKEY0123456789abcdef0123456"
SLACK_PATH = "/services/T000/B000/XXXSLACKSECRET"
TOKEN = "hook-t0ken-secret"


def _book(url: str) -> str:
    return f"""
    service: shop
    page:
      critical:
        - {{pagerduty: {{routing_key_env: PD_KEY, url: "{url}/v2/enqueue"}}}}
        - {{slack: {{webhook_url_env: SLACK_URL}}}}
      warning: {{webhook: {{url: "{url}/hook", token_env: HOOK_TOKEN}}}}
      default: {{slack: {{webhook_url_env: SLACK_URL}}}}
    """


HISTORY = [
    Outcome("exec", Status.FAILED, 1.25, "error: deployments.apps \"web\" not found\nmore",
            {"argv": ["kubectl", "scale"], "returncode": 1}),
    Outcome("http", Status.OK, 0.5, "HTTP 200\nok", {"status_code": 200}),
]
LABELS = {"alertname": "QueueDepthHigh", "severity": "critical", "queue": "scrape"}
ANNOTATIONS = {"summary": "scrape has 5200 waiting jobs"}


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    async with recorder() as rec:
        yield rec


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _ctx(session: aiohttp.ClientSession, server: Recorder, **kw: Any) -> ActionContext:
    env = {"PD_KEY": PD_KEY, "SLACK_URL": server.url + SLACK_PATH, "HOOK_TOKEN": TOKEN}
    env.update(kw.pop("env", {}))
    return context(session, book(_book(server.url)), labels=kw.pop("labels", LABELS), env=env,
                   annotations=ANNOTATIONS, history=kw.pop("history", HISTORY), **kw)


def _details() -> dict[str, Any]:
    return {
        "occurrence_id": "0123456789abcdef-1764057600",
        "fingerprint": "0123456789abcdef",
        "starts_at": STARTS.isoformat(),
        "labels": LABELS,
        "annotations": ANNOTATIONS,
        "tried": [o.as_json() for o in HISTORY],
        "message": "workers did not catch up",
        "incident_url": "http://responder.example/incidents/7",
    }


def _by_path(server: Recorder, path: str) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.raw_path == path]


async def test_critical_pages_pagerduty_and_slack(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    params = PageParams(message="workers did not catch up")
    result = await run_action("page", params, _ctx(session, server))
    assert result.status is Status.OK, result.output
    assert result.detail["severity"] == "critical"
    [pd] = _by_path(server, "/v2/enqueue")
    assert pd == {
        "routing_key": PD_KEY,
        "event_action": "trigger",
        "dedup_key": "0123456789abcdef-1764057600",
        "payload": {
            "summary": "[CRITICAL] QueueDepthHigh on shop: scrape has 5200 waiting jobs",
            "source": "shop",
            "severity": "critical",
            "timestamp": "2026-11-25T08:00:00+00:00",
            "group": "QueueDepthHigh",
            "custom_details": _details(),
        },
        "links": [{"href": "http://responder.example/incidents/7", "text": "incident"}],
    }
    [slack] = _by_path(server, SLACK_PATH)
    assert slack == {"text": "\n".join([
        "[CRITICAL] QueueDepthHigh on shop: scrape has 5200 waiting jobs",
        "workers did not catch up",
        "Tried:",
        '- exec: failed (1.2s) error: deployments.apps "web" not found',
        "- http: ok (0.5s) HTTP 200",
        "Incident: http://responder.example/incidents/7",
    ])}
    text = json.dumps(result.as_json())
    assert PD_KEY not in text
    assert "XXXSLACKSECRET" not in text


async def test_severity_param_routes_to_webhook_with_token(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    params = PageParams(severity="warning", message="workers did not catch up")
    result = await run_action("page", params, _ctx(session, server))
    assert result.status is Status.OK, result.output
    [request] = [r for r in server.requests if r.raw_path == "/hook"]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.json() == {
        "event": "trigger", "service": "shop", "severity": "warning",
        "summary": "[WARNING] QueueDepthHigh on shop: scrape has 5200 waiting jobs",
        **_details(),
    }
    assert TOKEN not in json.dumps(result.as_json())


async def test_unknown_severity_falls_back_to_default(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    ctx = _ctx(session, server, labels={**LABELS, "severity": "info"}, history=[])
    result = await run_action("page", PageParams(), ctx)
    assert result.status is Status.OK
    assert result.detail["severity"] == "info"
    [slack] = _by_path(server, SLACK_PATH)
    assert slack["text"].splitlines()[1] == "Nothing was tried automatically."
    assert [r.raw_path for r in server.requests] == [SLACK_PATH]


async def test_no_receiver_fails(session: aiohttp.ClientSession) -> None:
    # Every severity this runbook's rules fire at has a receiver (the loader sees to that); an
    # alert of another rule file may still come at one that has none.
    two = ("service: shop\npage:\n  critical: {slack: {webhook_url_env: S}}\n"
           "  warning: {slack: {webhook_url_env: S}}\n")
    ctx = context(session, book(two), labels={"alertname": "X", "severity": "info"})
    result = await run_action("page", PageParams(), ctx)
    assert result.status is Status.FAILED
    assert "no receiver for severity 'info'" in result.output


async def test_one_failing_receiver_does_not_stop_the_other(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    server.status[SLACK_PATH] = 500
    result = await run_action("page", PageParams(), _ctx(session, server))
    assert result.status is Status.FAILED
    assert result.detail["receivers"] == {"pagerduty#0": "sent (HTTP 200)",
                                          "slack#1": "failed: HTTP 500: invalid_payload"}
    assert len(_by_path(server, "/v2/enqueue")) == 1
    assert "XXXSLACKSECRET" not in json.dumps(result.as_json())


async def test_unreachable_secret_url_is_not_reported(session: aiohttp.ClientSession) -> None:
    secret = "http://127.0.0.1:1/services/T/B/UNREACHABLESECRET"
    ctx = context(session, book("service: shop\npage:\n  default: {slack: {webhook_url_env: S}}\n"),
                  env={"S": secret})
    result = await run_action("page", PageParams(), ctx)
    assert result.status is Status.FAILED
    assert "ClientConnectorError" in result.output
    assert "UNREACHABLESECRET" not in json.dumps(result.as_json())


async def test_missing_env_names_the_variable(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    ctx = _ctx(session, server, env={"PD_KEY": ""})
    result = await run_action("page", PageParams(), ctx)
    assert result.status is Status.FAILED
    assert result.detail["receivers"]["pagerduty#0"] == "failed: env var PD_KEY is not set"
    assert len(_by_path(server, SLACK_PATH)) == 1


async def test_resolve_uses_the_paged_severity(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    paged = await run_action("page", PageParams(severity="critical"),
                             _ctx(session, server, labels={**LABELS, "severity": "warning"}))
    assert paged.status is Status.OK
    server.requests.clear()
    ctx = _ctx(session, server, labels={**LABELS, "severity": "warning"},
               history=[*HISTORY, paged])
    result = await resolve(ctx)
    assert result.status is Status.OK, result.output
    assert _by_path(server, "/v2/enqueue") == [{
        "routing_key": PD_KEY, "event_action": "resolve",
        "dedup_key": "0123456789abcdef-1764057600",
    }]
    assert _by_path(server, SLACK_PATH) == [{"text": "\n".join([
        "Resolved: [CRITICAL] QueueDepthHigh on shop: scrape has 5200 waiting jobs",
        "Incident: http://responder.example/incidents/7",
    ])}]
    assert _by_path(server, "/hook") == []


async def test_resolve_page_scrubs_the_token_a_receiver_echoes(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    # The worker's resolve path: a receiver quoting the Authorization header in its 401 body
    # must not get the token into the audit, and the run is counted like any action's.
    server.echo_authorization = True
    server.status["/hook"] = 401
    paged = Outcome("page", Status.OK, 0.2, "webhook#0: sent (HTTP 200)", {"severity": "warning"})
    registry = CollectorRegistry()
    ctx = _ctx(session, server, history=[*HISTORY, paged])
    result = await resolve_page(ctx, metrics=ActionMetrics(registry))
    assert [r.headers["Authorization"] for r in server.requests] == [f"Bearer {TOKEN}"]
    assert result.action == "page_resolve"
    assert result.status is Status.FAILED
    assert result.output == "webhook#0: failed: HTTP 401: bad credentials: Bearer <secret>"
    assert TOKEN not in json.dumps(result.as_json())
    assert registry.get_sample_value(
        "runbook_action_runs_total", {"action": "page_resolve", "status": "failed"}) == 1
    assert registry.get_sample_value(
        "runbook_action_duration_seconds_count", {"action": "page_resolve"}) == 1


async def test_dry_run_sends_nothing(session: aiohttp.ClientSession, server: Recorder) -> None:
    result = await run_action("page", PageParams(), _ctx(session, server, dry_run=True))
    assert result.status is Status.DRY_RUN
    assert result.detail["receivers"] == ["pagerduty#0", "slack#1"]
    assert server.requests == []


def test_receivers_reading_unset_env_vars_are_named_at_start(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    loaded = book(_book("http://127.0.0.1:9"))
    env = {"PD_KEY": PD_KEY, "SLACK_URL": "", "PATH": "/usr/bin"}
    with caplog.at_level(logging.WARNING, logger="responder"):
        build_app(loaded, open_store(None, tmp_path / "data"), Settings(token="t", env=env))
    unset = sorted(r.getMessage().split("(")[1].split(")")[0] for r in caplog.records)
    assert unset == ["page.critical[1].slack.webhook_url_env: SLACK_URL",
                     "page.default[0].slack.webhook_url_env: SLACK_URL",
                     "page.warning[0].webhook.token_env: HOOK_TOKEN"]
    assert PD_KEY not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="responder"):
        build_app(loaded, open_store(None, tmp_path / "data"),
                  Settings(token="t", env={**env, "SLACK_URL": "https://x", "HOOK_TOKEN": "h"}))
    assert caplog.records == []
