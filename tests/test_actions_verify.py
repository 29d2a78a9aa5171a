"""still_firing against a real Prometheus (ALERTS) and a real Alertmanager (/api/v2/alerts)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from responder.verify import prometheus_from_generator, still_firing
from tests.actions_support import context
from tests.servers import free_port
from tests.stack import Stack, http_json, stack

RULES = """
groups:
  - name: verify
    interval: 1s
    rules:
      - alert: TestFiring
        expr: vector(1)
        labels: {severity: critical, queue: scrape}
      - alert: TestQuiet
        expr: vector(0) > 1
      - alert: TestPending
        expr: vector(1)
        for: 1h
"""
PROMETHEUS = """
global: {evaluation_interval: 1s, external_labels: {cluster: eu}}
rule_files: [rules.yml]
"""
ALERTMANAGER = """
route: {receiver: "null", group_wait: 1s}
receivers: [{name: "null"}]
"""


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[Stack, str, str]]:
    with stack() as s:
        (s.dir / "rules.yml").write_text(RULES)
        (s.dir / "prometheus.yml").write_text(PROMETHEUS)
        (s.dir / "alertmanager.yml").write_text(ALERTMANAGER)
        _, prom = s.prometheus(s.dir / "prometheus.yml")
        _, am = s.alertmanager(s.dir / "alertmanager.yml")
        yield s, prom, am


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


FIRING = {"alertname": "TestFiring", "severity": "critical", "queue": "scrape", "cluster": "eu"}


async def _eventually(session: aiohttp.ClientSession, prom: str, labels: dict[str, str]) -> Any:
    for _ in range(100):
        answer = await still_firing(context(session, labels=labels), prometheus_url=prom)
        if answer is True:
            return answer
        await asyncio.sleep(0.1)
    return answer


async def test_prometheus_firing(
    session: aiohttp.ClientSession, running: tuple[Stack, str, str]
) -> None:
    _, prom, _ = running
    assert await _eventually(session, prom, FIRING) is True


@pytest.mark.parametrize(
    "labels",
    [
        {**FIRING, "queue": "crawl"},  # another series of the same rule
        {"alertname": "TestQuiet"},
        {"alertname": "TestPending"},  # pending is not firing
    ],
)
async def test_prometheus_not_firing(
    session: aiohttp.ClientSession, running: tuple[Stack, str, str], labels: dict[str, str]
) -> None:
    _, prom, _ = running
    await _eventually(session, prom, FIRING)
    assert await still_firing(context(session, labels=labels), prometheus_url=prom) is False


async def test_unknown_rule_or_dead_prometheus_cannot_tell(
    session: aiohttp.ClientSession, running: tuple[Stack, str, str]
) -> None:
    _, prom, _ = running
    other = context(session, labels={"alertname": "FromAnotherPrometheus"})
    assert await still_firing(other, prometheus_url=prom) is None
    dead = f"http://127.0.0.1:{free_port()}"
    assert await still_firing(context(session, labels=FIRING), prometheus_url=dead) is None


async def test_prometheus_from_generator_url(
    session: aiohttp.ClientSession, running: tuple[Stack, str, str]
) -> None:
    _, prom, _ = running
    generator = f"{prom}/graph?g0.expr=vector%281%29&g0.tab=1"
    assert prometheus_from_generator(generator) == prom
    await _eventually(session, prom, FIRING)
    ctx = context(session, labels=FIRING, generator_url=generator, env={})
    assert await still_firing(ctx) is True


def _post_alert(am: str, labels: dict[str, str], ends_in: float) -> None:
    now = datetime.now(UTC)
    body = [{"labels": labels, "startsAt": (now - timedelta(minutes=1)).isoformat(),
             "endsAt": (now + timedelta(seconds=ends_in)).isoformat()}]
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{am}/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200


def _fingerprint(am: str, alertname: str) -> str:
    for _ in range(50):
        alerts = http_json(f"{am}/api/v2/alerts")
        found = [a["fingerprint"] for a in alerts if a["labels"]["alertname"] == alertname]
        if found:
            return str(found[0])
    raise AssertionError(f"{alertname} never showed up in Alertmanager")


async def test_alertmanager_by_fingerprint(
    session: aiohttp.ClientSession, running: tuple[Stack, str, str]
) -> None:
    _, prom, am = running
    labels = {"alertname": "AmOnly", "queue": "q1"}
    _post_alert(am, labels, 3600)
    fingerprint = _fingerprint(am, "AmOnly")
    ctx = context(session, labels=labels, fingerprint=fingerprint,
                  env={"RUNBOOK_ALERTMANAGER_URL": am})
    assert await still_firing(ctx) is True
    # Prometheus does not know AmOnly, so Alertmanager answers.
    assert await still_firing(ctx, prometheus_url=prom) is True
    other = context(session, labels=labels, fingerprint="ffffffffffffffff")
    assert await still_firing(other, alertmanager_url=am) is False

    _post_alert(am, labels, -1)  # resolved
    assert await still_firing(ctx) is False


async def test_neither_configured(session: aiohttp.ClientSession) -> None:
    assert await still_firing(context(session, labels=FIRING, env={})) is None


@pytest.mark.parametrize("alertname", ["Disk voll ä", "Queue\tstuck", 'Odd "q" \\ name',
                                       "Backlog 🔥"])
async def test_alertnames_with_any_characters_are_found(
    session: aiohttp.ClientSession, running: tuple[Stack, str, str], alertname: str
) -> None:
    # Alertmanager's filter knows only \\, \" and \n; Prometheus refuses surrogate escapes.
    _, prom, am = running
    labels = {"alertname": alertname, "queue": "q2"}
    _post_alert(am, labels, 3600)
    fingerprint = _fingerprint(am, alertname)
    ctx = context(session, labels=labels, fingerprint=fingerprint, env={})
    assert await still_firing(ctx, alertmanager_url=am) is True
    # Prometheus has no such rule, so it cannot tell; Alertmanager still answers.
    assert await still_firing(ctx, prometheus_url=prom, alertmanager_url=am) is True
