"""The http action against a local aiohttp server: quoting, escaping, secrets, expected status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from responder.actions import run_action
from responder.actions.base import Status
from runbook.actions import HttpParams
from tests.actions_support import Recorder, context, recorder


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    async with recorder() as rec:
        yield rec


async def test_pause_endpoint_with_label_and_secret(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    ctx = context(session, labels={"queue": "scrape", "alertname": "QueueDepthHigh"},
                  env={"ADMIN_TOKEN": "Bearer t0ps3cr3t"})
    params = HttpParams.model_validate({
        "url": server.url + "/api/queue/{{ labels.queue }}/pause",
        "headers": {"X-Reason": "{{ labels.alertname }}"},
        "headers_env": {"Authorization": "ADMIN_TOKEN"},
        "json": {"queue": "{{ labels.queue }}", "by": "runbook", "n": 3},
    })
    result = await run_action("http", params, ctx)
    assert result.status is Status.OK, result.output
    [req] = server.requests
    assert req.method == "POST"
    assert req.raw_path == "/api/queue/scrape/pause"
    assert req.headers["Authorization"] == "Bearer t0ps3cr3t"
    assert req.headers["X-Reason"] == "QueueDepthHigh"
    assert req.json() == {"queue": "scrape", "by": "runbook", "n": 3}
    assert "t0ps3cr3t" not in json.dumps(result.as_json())
    assert result.detail["headers"]["Authorization"] == "<from env>"


async def test_values_are_quoted_in_url_and_escaped_in_json(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    value = 'a/b?c=d&e#f "x" ..\\ $(id) ;'
    ctx = context(session, labels={"queue": value})
    params = HttpParams.model_validate({
        "url": server.url + "/api/queue/{{ labels.queue }}/clean?name={{ labels.queue }}",
        "json": {"queue": "{{ labels.queue }}", "nested": ["{{ labels.queue }}"]},
        "label_patterns": {"queue": ".*"},
    })
    result = await run_action("http", params, ctx)
    assert result.status is Status.OK, result.output
    [req] = server.requests
    quoted = "a%2Fb%3Fc%3Dd%26e%23f%20%22x%22%20..%5C%20%24%28id%29%20%3B"
    assert req.raw_path == f"/api/queue/{quoted}/clean?name={quoted}"
    assert req.json() == {"queue": value, "nested": [value]}


async def test_dot_dot_cannot_climb_the_path(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    ctx = context(session, labels={"queue": ".."})
    params = HttpParams(url=server.url + "/api/queue/{{ labels.queue }}/pause",
                        label_patterns={"queue": r"\.+"})
    result = await run_action("http", params, ctx)
    assert result.status is Status.OK
    assert server.requests[0].raw_path == "/api/queue/%2E%2E/pause"


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "q;rm", "$(id)", "../admin", "x" * 300])
async def test_default_pattern_rejects_hostile_values(
    session: aiohttp.ClientSession, server: Recorder, value: str
) -> None:
    ctx = context(session, labels={"queue": value})
    params = HttpParams.model_validate({"url": server.url + "/api/queue/{{ labels.queue }}/pause",
                                        "json": {"q": "{{ labels.queue }}"}})
    result = await run_action("http", params, ctx)
    assert result.status is Status.FAILED
    assert result.detail["label"] == "queue"
    assert server.requests == []


async def test_unexpected_status_fails(session: aiohttp.ClientSession, server: Recorder) -> None:
    server.status["/warm"] = 503
    ctx = context(session)
    result = await run_action("http", HttpParams(url=server.url + "/warm", method="PUT"), ctx)
    assert result.status is Status.FAILED
    assert result.detail["status_code"] == 503
    assert "HTTP 503" in result.output


async def test_expected_status_list(session: aiohttp.ClientSession, server: Recorder) -> None:
    server.status["/rollback"] = 409
    ctx = context(session)
    params = HttpParams(url=server.url + "/rollback", expect_status=[409])
    assert (await run_action("http", params, ctx)).status is Status.OK


async def test_missing_secret_names_the_variable(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    ctx = context(session, env={})
    params = HttpParams(url=server.url + "/x", headers_env={"Authorization": "ADMIN_TOKEN"})
    result = await run_action("http", params, ctx)
    assert result.status is Status.FAILED
    assert "ADMIN_TOKEN is not set" in result.output
    assert server.requests == []


async def test_timeout(session: aiohttp.ClientSession, server: Recorder) -> None:
    server.delay = 2.0
    ctx = context(session)
    result = await run_action("http", HttpParams(url=server.url + "/slow", timeout=0.3), ctx)
    assert result.status is Status.TIMEOUT


async def test_dry_run_sends_nothing(session: aiohttp.ClientSession, server: Recorder) -> None:
    ctx = context(session, labels={"queue": "crawl"}, dry_run=True, env={"T": "secret-value"})
    params = HttpParams.model_validate({"url": server.url + "/api/queue/{{ labels.queue }}/resume",
                                        "headers_env": {"Authorization": "T"},
                                        "json": {"queue": "{{ labels.queue }}"}})
    result = await run_action("http", params, ctx)
    assert result.status is Status.DRY_RUN
    assert result.detail["url"].endswith("/api/queue/crawl/resume")
    assert json.loads(result.detail["body"]) == {"queue": "crawl"}
    assert "secret-value" not in json.dumps(result.as_json())
    assert server.requests == []
