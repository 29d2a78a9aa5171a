"""Paging on the real loop: a remediation that does not help pages with what was tried and
resolves the page when fixed by hand; a page-mode alert only pages; a maintenance window turns
an automatic action into a page. One loop serves the three, their backlogs filled together."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e_support import Loop, Sink, node, start_loop, start_sink, steps
from tests.stack import stack

SCALE = 0.003

BOOK = """
service: cinder-js
watch:
  host: null
  redis:
    - name: main
      url: {redis}
      queues: {{bullmq: [stuck, reports, imports]}}
alerts:
  queue_depth:
    select: {{queue: stuck}}
    critical: {{threshold: 100, for: 10m}}
  reports_backlog:
    signal: queue_depth
    alertname: ReportsBacklogHigh
    select: {{queue: reports}}
    critical: {{threshold: 100, for: 10m}}
  imports_backlog:
    signal: queue_depth
    alertname: ImportsBacklogHigh
    select: {{queue: imports}}
    critical: {{threshold: 100, for: 10m}}
respond:
  # Resuming a queue that is not paused does not bring its dead worker back.
  - name: resume-queue
    match: {{alertname: QueueDepthHigh}}
    mode: auto
    do:
      - bullmq_resume: {{redis: main, queue: stuck}}
    cooldown: 0s
    verify_after: 3s
  - name: reports-page
    match: {{alertname: ReportsBacklogHigh}}
    mode: page
  - name: imports-worker
    match: {{alertname: ImportsBacklogHigh}}
    mode: auto
    do:
      - exec: [node, --version]
    cooldown: 0s
maintenance:
  - name: imports-migration
    start: "{start}"
    end: "{end}"
    matchers: ['alertname="ImportsBacklogHigh"']
page:
  default:
    pagerduty: {{routing_key_env: PAGERDUTY_ROUTING_KEY, url: "{sink}/v2/enqueue"}}
"""


@pytest.fixture(scope="module")
def loop() -> Iterator[tuple[Loop, Sink, str]]:
    sink = start_sink()
    try:
        with stack() as s:
            _, redis = s.redis()
            now = datetime.now(UTC)
            book = BOOK.format(redis=redis, sink=sink.url,
                               start=(now - timedelta(hours=1)).isoformat(),
                               end=(now + timedelta(hours=1)).isoformat())
            running = start_loop(s, book, scale=SCALE)
            running.wait("the exporter scraped", lambda: running.query(
                'runbook_queue_depth{queue="imports"}'), 20)
            for queue in ("stuck", "reports", "imports"):
                node({"op": "fill", "url": redis, "queue": queue, "n": 150})
            yield running, sink, redis
    finally:
        sink.close()


def _one(loop: Loop, alertname: str, state: str, timeout: float = 30) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        items = loop.incidents_of(alertname)
        return items[0] if items and items[0]["state"] == state else None

    incident = loop.wait(f"{alertname} {state}", reached, timeout)
    assert len(loop.incidents_of(alertname)) == 1
    return incident


def _triggers(sink: Sink, alertname: str) -> list[dict[str, Any]]:
    return [e for e in sink.events("trigger") if alertname in e["payload"]["summary"]]


def test_remediation_that_does_not_help_pages_then_resolves(
        loop: tuple[Loop, Sink, str]) -> None:
    running, sink, redis = loop
    incident = _one(running, "QueueDepthHigh", "escalated")
    assert [s["detail"]["action"] for s in steps(incident, "action_started")] == [
        "bullmq_resume", "page"]
    verified = [s for s in incident["steps"] if s["kind"] == "escalated"]
    assert "still firing 3.0s after 1 remediation attempt" in verified[0]["detail"]["reason"]
    triggers = running.wait("the page", lambda: _triggers(sink, "QueueDepthHigh"), 10)
    assert len(triggers) == 1, triggers
    page = triggers[0]
    assert page["routing_key"] == "e2e-routing-key"
    assert page["dedup_key"] == incident["id"]
    tried = page["payload"]["custom_details"]["tried"]
    assert [t["action"] for t in tried] == ["bullmq_resume"]
    assert tried[0]["status"] == "ok"
    assert "still firing" in page["payload"]["custom_details"]["message"]

    # Fixed by hand: a worker drains the queue; the alert resolves and so does the page.
    node({"op": "drain", "url": redis, "queue": "stuck"})
    resolves = running.wait("the page resolved", lambda: [
        e for e in sink.events("resolve") if e["dedup_key"] == incident["id"]], 30)
    assert len(resolves) == 1
    closed = _one(running, "QueueDepthHigh", "resolved")
    assert closed["paged"]
    assert steps(closed, "page_resolved")


def test_page_mode_alert_pages_without_acting(loop: tuple[Loop, Sink, str]) -> None:
    running, sink, _ = loop
    incident = _one(running, "ReportsBacklogHigh", "paged")
    # The rendered route pages a page-mode alert itself and tells the responder so: nothing
    # runs, not even a second page; the audit says who paged.
    assert steps(incident, "action_started") == []
    assert incident["decision"][0]["outcome"] == "paging"
    assert "says page" in incident["decision"][0]["reason"]
    assert steps(incident, "received")[0]["detail"]["paged_by"] == "alertmanager"
    assert steps(incident, "paged")[0]["detail"]["by"] == "alertmanager"
    running.wait("the page", lambda: _triggers(sink, "ReportsBacklogHigh"), 10)
    # Alertmanager's own PagerDuty page says critical, as the responder's would (its default
    # is "error").
    assert {t["payload"]["severity"] for t in _triggers(sink, "ReportsBacklogHigh")} == \
        {"critical"}


def test_page_mode_alert_pages_the_human_once(loop: tuple[Loop, Sink, str]) -> None:
    """The rendered route sends page-only alerts straight to PagerDuty; the responder, told so,
    does not page a second time: the on-call gets one incident for one alert."""
    running, sink, _ = loop
    _one(running, "ReportsBacklogHigh", "paged")
    running.wait("a page", lambda: _triggers(sink, "ReportsBacklogHigh"), 10)
    time.sleep(1.5)  # a second copy, if any, comes within a group_wait
    sources = [t["payload"]["source"] for t in _triggers(sink, "ReportsBacklogHigh")]
    assert len(sources) == 1, f"paged {len(sources)} times, by {sources}"


def test_maintenance_window_pages_instead_of_acting(loop: tuple[Loop, Sink, str]) -> None:
    running, sink, _ = loop
    incident = _one(running, "ImportsBacklogHigh", "paged")
    assert [s["detail"]["action"] for s in steps(incident, "action_started")] == ["page"]
    decision = incident["decision"][0]
    assert decision["outcome"] == "paging"
    assert "maintenance" in decision["reason"]
    assert "imports-migration" in decision["reason"]
    triggers = running.wait("the page", lambda: _triggers(sink, "ImportsBacklogHigh"), 10)
    assert len(triggers) == 1, triggers
