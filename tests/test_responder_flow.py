"""Intake, dedupe, decisions, the worker and the audit, on both stores (real SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from responder.payload import occurrence_id
from responder.store import Store, open_store
from responder.store.work import claim_many
from runbook.loader import load_text
from tests.actions_support import recorder
from tests.test_responder_support import (
    AUTH,
    PAYLOADS,
    alert,
    append_argv,
    body,
    incident,
    kinds,
    load,
    page_sink,
    post,
    responder,
    wait_state,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return open_store(None, tmp_path / "data")
    return open_store(request.getfixturevalue("postgres_dsn"))


def oid(fp: str = "fp1", starts: str = "2026-11-24T07:12:19.279000Z") -> str:
    return occurrence_id(fp, starts)


def auto_rule(out: Path, extra: str = "") -> str:
    argv = json.dumps(append_argv(out))
    return (f"  - name: gauge\n    match: {{alertname: GaugeHigh}}\n    external: true\n"
            f"    mode: auto\n    cooldown: 0s\n    do: [{{exec: {argv}}}]\n{extra}")


async def test_firing_runs_once_across_resends(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    async with page_sink() as (_sink, url), \
            responder(load(auto_rule(out), url), store) as client:
        for _ in range(5):
            response = await post(client, body())
            assert response.status == 200, await response.text()
        data = await wait_state(client, oid(), "acted")
        assert out.read_text() == "host-1\n"
        steps = kinds(data)
        assert steps[:3] == ["received", "matched", "rail"]
        assert steps.count("deduplicated") == 4
        assert steps.count("queued") == 1
        assert steps.count("action_started") == steps.count("action_finished") == 1
        assert data["decision"][0]["outcome"] == "queued"
        assert data["notifications"] == 5
        metrics = await (await client.get("/metrics")).text()
        assert 'runbook_action_runs_total{action="exec",status="ok"} 1.0' in metrics
        assert 'runbook_responder_actions_total{action="exec",status="ok"} 1.0' in metrics


async def test_resolved_closes_and_never_remediates(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    rule = auto_rule(out).replace("mode: auto", "mode: approve")
    async with page_sink() as (_sink, url), responder(load(rule, url), store) as client:
        assert (await post(client, body(alert(status="resolved", fingerprint="early")))).status \
            == 200
        first = await incident(client, oid("early"))
        assert first["state"] == "resolved"
        assert "queued" not in kinds(first)
        assert (await post(client, body())).status == 200
        await wait_state(client, oid(), "awaiting_approval")
        assert (await post(client, body(alert(status="resolved")))).status == 200
        data = await wait_state(client, oid(), "resolved")
        approve = await client.post(f"/incidents/{oid()}/approve", headers=AUTH)
        assert approve.status == 409
        assert "resolved" in (await approve.json())["error"]
        await asyncio.sleep(0.3)
        assert not out.exists()
        assert kinds(data)[-1] == "resolved"


async def test_approve_and_reject(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    rule = auto_rule(out).replace("mode: auto", "mode: approve")
    async with page_sink() as (_sink, url), responder(load(rule, url), store) as client:
        await post(client, body(alert(fingerprint="a"), alert(fingerprint="b")))
        a, b = oid("a"), oid("b")
        await wait_state(client, a, "awaiting_approval")
        assert not out.exists()
        no_auth = await client.post(f"/incidents/{a}/approve")
        assert no_auth.status == 401
        ok = await client.post(f"/incidents/{a}/approve", headers=AUTH,
                               json={"by": "ana", "reason": "go"})
        assert ok.status == 200
        assert (await ok.json())["state"] == "queued"
        await wait_state(client, a, "acted")
        rejected = await client.post(f"/incidents/{b}/reject", headers=AUTH)
        assert (await rejected.json())["state"] == "rejected"
        data = await incident(client, b)
        assert "rejected" in kinds(data)
        assert out.read_text() == "host-1\n"
        missing = await client.post("/incidents/nope/approve", headers=AUTH)
        assert missing.status == 404


async def test_an_approval_track_beside_other_tracks_can_be_answered_once(
        store: Store, tmp_path: Path) -> None:
    ran, asked = tmp_path / "auto.txt", tmp_path / "approved.txt"
    rules = (auto_rule(ran, "    continue: true\n")
             + auto_rule(asked).replace("name: gauge", "name: ask").replace("mode: auto",
                                                                             "mode: approve"))
    async with page_sink() as (_sink, url), responder(load(rules, url), store) as client:
        await post(client, body())
        # The automatic track runs and moves the occurrence's state on; the approval still waits.
        data = await wait_state(client, oid(), "acted")
        assert [d["outcome"] for d in data["decision"]] == ["queued", "awaiting_approval"]
        ok = await client.post(f"/incidents/{oid()}/approve", headers=AUTH, json={"by": "ana"})
        assert ok.status == 200, await ok.text()
        for _ in range(200):
            if asked.exists():
                break
            await asyncio.sleep(0.05)
        assert asked.read_text() == "host-1\n"
        again = await client.post(f"/incidents/{oid()}/reject", headers=AUTH)
        assert again.status == 409
        assert "no approval waiting" in (await again.json())["error"]
        assert ran.read_text() == "host-1\n"

    page_first = (auto_rule(ran).replace("mode: auto", "mode: page").replace(
        "cooldown: 0s\n", "cooldown: 0s\n    continue: true\n")
        + auto_rule(asked).replace("name: gauge", "name: ask").replace("mode: auto",
                                                                        "mode: approve"))
    async with page_sink() as (sink, url), responder(load(page_first, url), store) as client:
        await post(client, body(alert("fp2")))
        await wait_state(client, oid("fp2"), "paged")
        assert len(sink.received) == 1
        no = await client.post(f"/incidents/{oid('fp2')}/reject", headers=AUTH)
        assert no.status == 200, await no.text()
        assert (await no.json())["state"] == "paged"
        assert "rejected" in kinds(await incident(client, oid("fp2")))
        assert (await client.post(f"/incidents/{oid('fp2')}/approve",
                                  headers=AUTH)).status == 409


async def test_unmatched_alert_pages_a_human(store: Store, tmp_path: Path) -> None:
    async with page_sink() as (sink, url), \
            responder(load(auto_rule(tmp_path / "x"), url), store) as client:
        await post(client, body(alert(fingerprint="other", alertname="DiskFull")))
        data = await wait_state(client, oid("other"), "paged")
        assert data["decision"][0]["rule"] == "(no rule)"
        assert "no respond rule matches" in data["decision"][0]["reason"]
        assert len(sink.received) == 1
        # Resolving the occurrence resolves the page it raised.
        await post(client, body(alert(fingerprint="other", alertname="DiskFull",
                                      status="resolved")))
        data = await wait_state(client, oid("other"), "resolved")
        for _ in range(100):
            if "page_resolved" in kinds(await incident(client, oid("other"))):
                break
            await asyncio.sleep(0.05)
        assert "page_resolved" in kinds(await incident(client, oid("other")))


async def test_verify_escalates_then_pages_with_history(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    esc = tmp_path / "escalated.txt"
    argv = json.dumps(append_argv(esc))
    rule = auto_rule(out, f"    verify_after: 1s\n    escalate: [{{exec: {argv}}}]\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        await post(client, body())
        await wait_state(client, oid(), "verifying")
        data = await wait_state(client, oid(), "escalated", within=20)
        assert esc.read_text() == "host-1\n"
        assert out.read_text() == "host-1\n"
        steps = kinds(data)
        assert steps.index("verifying") < steps.index("escalated") < steps.index("paged")
        assert len(sink.received) == 1


async def test_verify_heals_when_resolved(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    rule = auto_rule(out, "    verify_after: 1s\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        await post(client, body())
        await wait_state(client, oid(), "verifying")
        await post(client, body(alert(status="resolved")))
        data = await wait_state(client, oid(), "healed")
        assert "resolved" in kinds(data)
        await asyncio.sleep(1.3)
        assert "escalated" not in kinds(await incident(client, oid()))
        assert sink.received == []


async def test_failed_action_escalates(store: Store, tmp_path: Path) -> None:
    rule = ("  - name: broken\n    match: {alertname: GaugeHigh}\n    external: true\n"
            "    mode: auto\n    do: [{exec: [/nonexistent/program]}]\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        await post(client, body())
        data = await wait_state(client, oid(), "escalated")
        escalated = next(s for s in data["steps"] if s["kind"] == "escalated")
        assert "exec failed" in escalated["detail"]["reason"]
        assert len(sink.received) == 1


async def test_real_payload_files(store: Store, tmp_path: Path) -> None:
    firing = (PAYLOADS / "firing.json").read_text()
    resolved = (PAYLOADS / "resolved.json").read_text()
    rule = ("  - name: gauge\n    match: {alertname: GaugeHigh}\n    external: true\n"
            "    mode: page\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        assert (await post(client, firing)).status == 200
        the_id = oid("2e93cb24a611194c", "2026-11-24T07:12:19.279000Z")
        await wait_state(client, the_id, "paged")
        assert (await post(client, resolved)).status == 200
        data = await wait_state(client, the_id, "resolved")
        assert data["labels"]["job"] == "gauge"
        assert len(sink.received) >= 1
        listed = await (await client.get("/incidents?active=1", headers=AUTH)).json()
        assert listed["incidents"] == []
        every = await (await client.get("/incidents", headers=AUTH)).json()
        assert [i["id"] for i in every["incidents"]] == [the_id]


async def test_max_attempts_reruns_before_escalating(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    rule = auto_rule(out, "    verify_after: 1s\n    max_attempts: 2\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        await post(client, body())
        data = await wait_state(client, oid(), "escalated", within=20)
        assert out.read_text() == "host-1\nhost-1\n"
        steps = kinds(data)
        assert steps.count("retry") == 1
        assert steps.count("verifying") == 2
        assert steps.index("retry") < steps.index("escalated")
        escalated = next(s for s in data["steps"] if s["kind"] == "escalated")
        assert "after 2 remediation attempt(s)" in escalated["detail"]["reason"]
        assert len(sink.received) == 1
        page = sink.received[0]
        assert page["occurrence_id"] == oid()
        assert [t["action"] for t in page["tried"]] == ["exec", "exec"]
        assert "after 2 remediation attempt(s)" in page["message"]


async def test_alertmanager_paged_alert_is_recorded_not_paged_again(store: Store,
                                                                     tmp_path: Path) -> None:
    async with page_sink() as (sink, url), \
            responder(load(auto_rule(tmp_path / "x"), url), store) as client:
        response = await client.post(
            "/alerts?paged=alertmanager", data=json.dumps(body(alert(
                fingerprint="paged", alertname="DiskFull"))),
            headers={"Content-Type": "application/json", **AUTH})
        assert response.status == 200, await response.text()
        data = await wait_state(client, oid("paged"), "paged")
        steps = data["steps"]
        assert steps[0]["kind"] == "received"
        assert steps[0]["detail"]["paged_by"] == "alertmanager"
        paged = next(s for s in steps if s["kind"] == "paged")
        assert paged["detail"]["by"] == "alertmanager"
        assert "no respond rule matches" in paged["detail"]["reason"]
        await asyncio.sleep(0.5)
        assert sink.received == [], "Alertmanager paged already: no second page"
        await post(client, body(alert(fingerprint="paged", alertname="DiskFull",
                                      status="resolved")))
        data = await wait_state(client, oid("paged"), "resolved")
        await asyncio.sleep(0.3)
        assert "page_resolved" not in kinds(await incident(client, oid("paged")))
        assert sink.received == []


async def test_paged_marker_does_not_silence_a_rail_page(store: Store, tmp_path: Path) -> None:
    # A rail (here the maintenance window) turns an action into the responder's own page: sent
    # even when the notification came through the route that paged.
    window = ("maintenance:\n  - {name: all-day, weekly: {days: [mon, tue, wed, thu, fri, sat, "
              "sun], start: '00:00', end: '00:00'}}\n")
    async with page_sink() as (sink, url), \
            responder(load(auto_rule(tmp_path / "x"), url, extra=window), store) as client:
        response = await client.post(
            "/alerts?paged=alertmanager", data=json.dumps(body()),
            headers={"Content-Type": "application/json", **AUTH})
        assert response.status == 200
        await wait_state(client, oid(), "paged")
        assert len(sink.received) == 1


async def test_unknown_paged_value_is_refused(store: Store, tmp_path: Path) -> None:
    async with page_sink() as (_sink, url), \
            responder(load(auto_rule(tmp_path / "x"), url), store) as client:
        response = await client.post("/alerts?paged=someone", data=json.dumps(body()),
                                     headers={"Content-Type": "application/json", **AUTH})
        assert response.status == 400
        assert "paged" in (await response.json())["error"]


async def test_an_unexpected_claim_failure_does_not_stop_the_worker(store: Store,
                                                                    tmp_path: Path) -> None:
    # A client library error the store did not turn into StoreError (asyncpg's "cannot switch
    # to state" on a connection left mid-operation by a dying server) once ended the worker's
    # loop: nothing queued afterwards ever ran.
    out = tmp_path / "runs.txt"
    real_run = store.run
    failures: list[Any] = []

    async def run_failing_first_claim(op: Any) -> Any:
        if getattr(op, "func", None) is claim_many and not failures:
            failures.append(op)
            raise RuntimeError("cannot switch to state 15; another operation is in progress")
        return await real_run(op)

    store.run = run_failing_first_claim  # type: ignore[method-assign]
    async with page_sink() as (_sink, url), \
            responder(load(auto_rule(out), url), store) as client:
        response = await post(client, body())
        assert response.status == 200, await response.text()
        await wait_state(client, oid(), "acted")
        assert out.read_text() == "host-1\n"
        assert failures, "the claim never failed: the test proved nothing"
        metrics = await (await client.get("/metrics")).text()
        assert 'runbook_responder_store_errors_total{operation="claim"} 1.0' in metrics


async def test_a_page_that_reached_one_receiver_is_resolved_with_the_alert(
        store: Store) -> None:
    async with recorder() as rec:
        rec.status["/slack"] = 500  # Slack is down; PagerDuty takes the page
        text = ("service: shop\nwatch: {host: {}}\n"
                "alerts:\n  memory_usage: {warning: 70%, critical: 85%, for: 5m}\n"
                "page:\n  default:\n"
                f"    - pagerduty: {{routing_key_env: PD_KEY, url: \"{rec.url}/pd\"}}\n"
                "    - slack: {webhook_url_env: SLACK_URL}\n"
                "respond:\n  - name: p\n    match: {alertname: GaugeHigh}\n"
                "    external: true\n    mode: page\n")
        env = {"PD_KEY": "pd-key-0123456789", "SLACK_URL": f"{rec.url}/slack",
               "PATH": os.defpath}
        async with responder(load_text(text, "r.yml"), store, env=env) as client:
            await post(client, body())
            data = await wait_state(client, oid(), "paged")
            paged = next(s for s in data["steps"] if s["kind"] == "paged")
            assert paged["detail"]["missed"] == ["slack#1"]
            await post(client, body(alert(status="resolved")))
            await wait_state(client, oid(), "resolved")
            for _ in range(200):
                if "page_resolved" in kinds(await incident(client, oid())):
                    break
                await asyncio.sleep(0.05)
            actions = [(r.raw_path, r.json().get("event_action")) for r in rec.requests
                       if r.raw_path == "/pd"]
            # Triggered once (a human was told), then resolved with the alert.
            assert actions == [("/pd", "trigger"), ("/pd", "resolve")]


async def test_a_page_never_waits_behind_slow_remediations(store: Store, tmp_path: Path) -> None:
    # One remediation slot, held by a slow action: a page for another alert still goes out.
    slow = ("  - name: slow\n    match: {alertname: GaugeHigh}\n    external: true\n"
            "    mode: auto\n    cooldown: 0s\n    do: [{exec: [/bin/sleep, '4']}]\n")
    async with page_sink() as (sink, url), responder(load(
            slow, url, extra="rails: {max_concurrent: 1}"), store) as client:
        await post(client, body(alert(fingerprint="slow")))
        await wait_state(client, oid("slow"), "running")
        await post(client, body(alert(fingerprint="disk", alertname="DiskFull")))
        await wait_state(client, oid("disk"), "paged")
        assert len(sink.received) == 1
        # Paged while the remediation still held its only slot, not after it.
        assert (await incident(client, oid("slow")))["state"] == "running"


async def test_an_escalation_that_pages_itself_pages_once_and_says_why(store: Store,
                                                                      tmp_path: Path) -> None:
    argv = json.dumps(["/bin/false"])
    rule = (f"  - name: gauge\n    match: {{alertname: GaugeHigh}}\n    external: true\n"
            f"    mode: auto\n    cooldown: 0s\n    do: [{{exec: {argv}}}]\n"
            "    escalate: [{page: {severity: critical, message: 'restart did not help'}}]\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        await post(client, body())
        # "escalated" once the escalation work, every page of it, has run.
        await wait_state(client, oid(), "escalated", within=20)
        assert len(sink.received) == 1, sink.received
        message = sink.received[0]["message"]
        assert message.startswith("restart did not help (the remediation did not succeed")


async def test_a_page_track_leaves_the_state_to_the_remediation_beside_it(
        store: Store, tmp_path: Path) -> None:
    ran = tmp_path / "runs.txt"
    rules = ("  - name: tell\n    match: {alertname: GaugeHigh}\n    external: true\n"
             "    mode: page\n    continue: true\n" + auto_rule(ran))
    async with page_sink() as (sink, url), responder(load(rules, url), store) as client:
        sink.delay = 1.0  # the page ends after the remediation
        await post(client, body())
        data = await wait_state(client, oid(), "acted")
        for _ in range(200):  # the page track finishes on its own
            if "paged" in kinds(await incident(client, oid())):
                break
            await asyncio.sleep(0.05)
        data = await incident(client, oid())
        assert "paged" in kinds(data)
        assert len(sink.received) == 1
        assert data["state"] == "acted"
        await post(client, body(alert(status="resolved")))
        await wait_state(client, oid(), "healed")
        # And when the alert heals while the page is still being sent, it stays healed.
        sink.delay = 2.0
        await post(client, body(alert("fp2")))
        await wait_state(client, oid("fp2"), "acted")
        await post(client, body(alert("fp2", status="resolved")))
        await wait_state(client, oid("fp2"), "healed")
        for _ in range(200):
            if "paged" in kinds(await incident(client, oid("fp2"))):
                break
            await asyncio.sleep(0.05)
        data = await incident(client, oid("fp2"))
        assert "paged" in kinds(data)
        assert data["state"] == "healed"


async def test_an_escalation_paging_another_severity_keeps_the_page_with_the_reason(
        store: Store, tmp_path: Path) -> None:
    argv = json.dumps(["/bin/false"])
    rule = (f"  - name: gauge\n    match: {{alertname: GaugeHigh}}\n    external: true\n"
            f"    mode: auto\n    cooldown: 0s\n    do: [{{exec: {argv}}}]\n"
            "    escalate: [{page: {severity: warning, message: 'FYI: restart failed'}}]\n")
    async with page_sink() as (sink, url), responder(load(rule, url), store) as client:
        await post(client, body())  # a critical alert
        await wait_state(client, oid(), "escalated", within=20)
        messages = [p["message"] for p in sink.received]
        assert messages[0] == "FYI: restart failed"
        assert messages[1].startswith("the remediation did not succeed")
        assert len(messages) == 2
