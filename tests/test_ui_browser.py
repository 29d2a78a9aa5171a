"""The incidents page in real headless Chromium: see a pending approval, approve, watch it heal."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.servers import find_tool, free_port
from tests.stack import ROOT, Stack, stack

TOKEN = "ui-test-token-0123456789"
ARTIFACTS = Path(os.environ.get("RUNBOOK_TEST_ARTIFACTS", ROOT / "build" / "artifacts"))
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

RUNBOOK = """\
service: shop
watch:
  redis:
    - {{name: main, url: "redis://127.0.0.1:1/0", queues: {{bullmq: [mail]}}}}
alerts:
  queue_depth: {{warning: 50, critical: 100, for: 5m}}
respond:
  - name: restart-mailer
    match: {{alertname: QueueDepthHigh, severity: critical}}
    mode: approve
    verify_after: 2m
    do:
      - exec: [{python}, -c, "import sys; open(sys.argv[1], 'a').write('ran\\\\n')", {marker}]
"""


def _post(url: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback test server
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return int(response.status)


def _notification(status: str) -> dict[str, object]:
    alert = {
        "status": status, "labels": {"alertname": "QueueDepthHigh", "severity": "critical",
                                     "service": "shop", "queue": "mail"},
        "annotations": {"summary": "mail queue is deep"},
        "startsAt": "2026-11-25T10:00:00Z",
        "endsAt": "2026-11-25T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "", "fingerprint": "a1b2c3d4e5f60718",
    }
    return {"version": "4", "status": status, "receiver": "responder", "groupKey": "{}:{}",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "truncatedAlerts": 0, "alerts": [alert]}


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[tuple[str, Path, Stack]]:
    marker = tmp_path / "ran.txt"
    runbook = tmp_path / "rb.yml"
    runbook.write_text(RUNBOOK.format(python=json.dumps(sys.executable),
                                      marker=json.dumps(str(marker))))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with stack() as s:
        s.runbook("responder", ["responder", "--runbook", str(runbook), "--listen",
                                f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
                  f"{url}/health/ready", env={"RUNBOOK_WEBHOOK_TOKEN": TOKEN})
        yield url, marker, s


def test_approve_in_the_browser_runs_the_action_and_heals(
    responder: tuple[str, Path, Stack],
) -> None:
    url, marker, _ = responder
    assert _post(f"{url}/alerts", _notification("firing")) == 200
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_tool("chromium"), args=CHROMIUM_ARGS)
        try:
            page: Page = browser.new_page()
            page.goto(url + "/")
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            pending = page.locator("#pending article.incident")
            expect(pending).to_have_count(1, timeout=10_000)
            expect(pending.first).to_contain_text("QueueDepthHigh")
            expect(pending.first).to_contain_text("awaiting_approval")
            page.screenshot(path=str(ARTIFACTS / "incidents-pending.png"), full_page=True)
            assert not marker.exists(), "nothing runs before a human approves"

            pending.first.locator("button.approve").click()
            expect(page.locator("#pending article.incident")).to_have_count(0, timeout=10_000)
            incident = page.locator("#list article.incident").first
            expect(incident).to_contain_text("action_finished", timeout=15_000)
            assert marker.read_text() == "ran\n"

            assert _post(f"{url}/alerts", _notification("resolved")) == 200
            page.uncheck("#active-only")
            expect(page.locator("#list article.incident").first.locator(".state")).to_have_text(
                "healed", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "incidents-healed.png"), full_page=True)
        finally:
            browser.close()


def test_page_refuses_a_wrong_token_and_escapes_labels(
    responder: tuple[str, Path, Stack],
) -> None:
    url, _, _ = responder
    hostile = _notification("firing")
    alert = hostile["alerts"][0]  # type: ignore[index]
    alert["labels"]["queue"] = "<img src=x onerror=alert(1)>"
    # A name that would read as two more labels if it were shown unquoted.
    alert["labels"]['deployment="web" namespace="staging" region'] = "eu-1"
    alert["fingerprint"] = "ffff000011112222"
    assert _post(f"{url}/alerts", hostile) == 200
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_tool("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url + "/")
            page.fill("#token", "wrong-token")
            page.click("button[type=submit]")
            expect(page.locator("#status")).to_contain_text("401", timeout=10_000)
            # The refused token is forgotten and asked for again, also after a reload.
            expect(page.locator("#login")).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('runbook-token')") is None
            page.reload()
            expect(page.locator("#login")).to_be_visible()
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            expect(page.locator("#list")).to_contain_text("<img src=x onerror=alert(1)>",
                                                          timeout=10_000)
            assert page.locator("#list img").count() == 0
            expect(page.locator("#list")).to_contain_text(
                '"deployment=\\"web\\" namespace=\\"staging\\" region"="eu-1"')
            assert dialogs == []
        finally:
            browser.close()
