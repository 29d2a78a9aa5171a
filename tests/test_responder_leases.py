"""Leases: work taken over after its lease ran out is finished by nobody twice, and work a
process left claimed after a store failure is recovered by that same process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from responder.payload import Notification
from responder.policy import Policy
from responder.store import Store, open_store
from responder.store import work as ops
from responder.store.intake import intake
from tests.test_responder_support import (
    alert,
    append_argv,
    body,
    incident,
    kinds,
    load,
    page_sink,
    post,
    responder,
)


def rule(out: Path, extra: str = "") -> str:
    return (f"  - name: gauge\n    match: {{alertname: GaugeHigh}}\n    external: true\n"
            f"    mode: auto\n    cooldown: 0s\n    do: [{{exec: {json.dumps(append_argv(out))}}}]"
            f"\n{extra}")


async def test_work_taken_over_is_not_completed_by_its_old_owner(store: Store,
                                                                 tmp_path: Path) -> None:
    policy = Policy(load(rule(tmp_path / "o", "    verify_after: 60s\n")))
    note = Notification.model_validate(body(alert("lease-1")))
    now = time.time()
    await store.run(lambda tx: intake(tx, note, "{}", policy, now))
    item = await store.run(lambda tx: ops.claim(tx, "A", now, 60.0))
    assert item is not None
    assert item.step_started
    # A's lease runs out (its renewals failed); B recovers the work: exec may have half-run.
    found = await store.run(lambda tx: ops.recover(tx, "B", now + 61, False, frozenset()))
    assert [f["result"] for f in found] == ["escalated"]
    # A's action ends after that, before A learns of it from a renewal.
    done = {"action": "exec", "status": "ok", "duration_seconds": 0.1, "output": "",
            "detail": {}}
    await store.run(lambda tx: ops.complete(tx, item, "A", [done], None, now + 62, (0, done)))
    work = await store.run(lambda tx: tx.fetchall(
        "SELECT kind, status, claimed_by FROM work ORDER BY id"))
    assert [(w["kind"], w["status"]) for w in work] == [("run", "interrupted"),
                                                        ("escalate", "pending")]
    assert work[0]["claimed_by"] is None
    steps = await store.run(lambda tx: tx.fetchall(
        "SELECT kind FROM steps WHERE occurrence_id = ? ORDER BY id", item.occurrence_id))
    names = [s["kind"] for s in steps]
    # What ran is in the audit; nothing was queued from it (no verify beside the escalation).
    assert names[-2:] == ["action_finished", "late_finish"]
    assert "verifying" not in names
    # A step finished by the old owner in the middle of a plan says the claim is gone.
    assert not await store.run(lambda tx: ops.finish_step(tx, item, "A", 0, done, now + 63))


async def test_work_left_claimed_by_a_store_failure_is_recovered_by_its_own_process(
        tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    store = open_store(None, tmp_path / "data")
    async with page_sink() as (sink, url), \
            responder(load(rule(out), url), store, lease=1.0) as client:
        # The database refuses to mark the work done once: the completion fails, the work
        # stays claimed by this process, whose lease then runs out.
        await store.run(lambda tx: tx.execute(
            "CREATE TRIGGER refuse_done BEFORE UPDATE OF status ON work "
            "WHEN NEW.status = 'done' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
        assert (await post(client, body(alert("lease-2")))).status == 200
        for _ in range(200):
            if out.exists():
                break
            await asyncio.sleep(0.05)
        assert out.read_text() == "host-1\n"
        await asyncio.sleep(0.3)
        await store.run(lambda tx: tx.execute("DROP TRIGGER refuse_done"))
        rows: list[Any] = []
        for _ in range(100):
            rows = await store.run(lambda tx: tx.fetchall(
                "SELECT kind, status FROM work ORDER BY id"))
            if rows and rows[0]["status"] != "claimed":
                break
            await asyncio.sleep(0.1)
        # exec was running when the completion failed: escalated, never run again.
        assert (rows[0]["kind"], rows[0]["status"]) == ("run", "interrupted")
        assert [r["kind"] for r in rows[1:]] == ["escalate"]
        assert out.read_text() == "host-1\n"
        for _ in range(100):
            if sink.received:
                break
            await asyncio.sleep(0.05)
        assert sink.received, "the escalation pages a human"
        listed = await store.run(lambda tx: tx.fetchall("SELECT id FROM occurrences"))
        data = await incident(client, str(listed[0]["id"]))
        assert "interrupted" in kinds(data)
