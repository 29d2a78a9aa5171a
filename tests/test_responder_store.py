"""Store behaviour on real SQLite and PostgreSQL: recovery after a crash, and failing stores."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from responder.payload import Notification
from responder.policy import Policy
from responder.store import Store, StoreError, WorkItem, open_store
from responder.store import work as ops
from responder.store.intake import intake
from responder.store.queries import get_incident, list_incidents
from responder.store.retention import prune
from responder.worker import IDEMPOTENT_ACTIONS
from tests.servers import start_postgres
from tests.test_responder_support import AUTH, alert, body, load, post, responder

PAGE_RULE = "  - name: p\n    match: {alertname: GaugeHigh}\n    external: true\n    mode: page\n"


async def _claimed_in_step(store: Store, owner: str) -> str:
    note = Notification.model_validate(body(alert("r1")))
    result = await store.run(lambda tx: intake(tx, note, "{}", Policy(load(PAGE_RULE)), 1.0))
    item = await store.run(lambda tx: ops.claim(tx, owner, time.time(), 60.0))
    assert item is not None
    assert await store.run(lambda tx: ops.begin_step(tx, item, owner, 0, {"action": "page"},
                                                     time.time()))
    return result.alerts[0].occurrence_id


async def test_idempotent_step_is_resumed_after_a_crash(store: Store) -> None:
    oid = await _claimed_in_step(store, "dead-process")
    # A live replica only takes over once the lease ran out.
    assert await store.run(lambda tx: ops.recover(tx, "me", time.time(), False,
                                                  IDEMPOTENT_ACTIONS)) == []
    found = await store.run(lambda tx: ops.recover(tx, "me", time.time() + 61, False,
                                                   IDEMPOTENT_ACTIONS))
    assert [f["result"] for f in found] == ["resumed"]
    again = await store.run(lambda tx: ops.claim(tx, "me", time.time(), 60.0))
    assert again is not None
    assert again.next_step == 0
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    resumed = next(s for s in data["steps"] if s["kind"] == "resumed")
    assert "page is idempotent" in resumed["detail"]["reason"]


async def test_non_idempotent_step_is_escalated_after_a_crash(store: Store) -> None:
    oid = await _claimed_in_step(store, "dead-process")
    found = await store.run(lambda tx: ops.recover(tx, "me", time.time(), True, frozenset()))
    assert [f["result"] for f in found] == ["escalated"]
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    steps = [s["kind"] for s in data["steps"]]
    assert steps.index("action_started") < steps.index("interrupted")
    assert data["state"] == "paging"
    # Exactly one page is queued instead of the half-run step.
    pending = await store.run(ops.pending)
    assert pending == 1


async def test_claims_are_exclusive(store: Store) -> None:
    note = Notification.model_validate(body(*(alert(f"c{i}", instance=f"h{i}")
                                              for i in range(5))))
    await store.run(lambda tx: intake(tx, note, "{}", Policy(load(PAGE_RULE)), 1.0))
    seen = set()
    for owner in ("a", "b", "a", "b", "a"):
        item = await store.run(lambda tx, o=owner: ops.claim(tx, o, time.time(), 60.0))
        assert item is not None
        seen.add(item.id)
    assert len(seen) == 5
    assert await store.run(lambda tx: ops.claim(tx, "c", time.time(), 60.0)) is None


async def test_stopped_postgres_gives_503_then_recovers(tmp_path: Path) -> None:
    server = start_postgres()
    try:
        store = open_store(server.dsn())
        async with responder(load(PAGE_RULE), store, run_worker=False) as client:
            assert (await post(client, body(alert("before")))).status == 200
            server.stop("immediate")
            failed = await post(client, body(alert("during")))
            assert failed.status == 503
            assert "could not be recorded" in (await failed.json())["error"]
            assert (await client.get("/health/ready")).status == 503
            assert (await client.get("/incidents", headers=AUTH)).status == 503
            metrics = await (await client.get("/metrics")).text()
            assert 'runbook_responder_store_errors_total{operation="intake"} 1.0' in metrics
            assert 'status="firing"} 1.0' in metrics
            server.start()
            again = await post(client, body(alert("during")))
            assert again.status == 200, await again.text()
            listed = await (await client.get("/incidents", headers=AUTH)).json()
            assert len(listed["incidents"]) == 2
    finally:
        server.stop("immediate")
        shutil.rmtree(server.dir, ignore_errors=True)


async def test_unwritable_sqlite_fails_to_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = open_store(None, blocker / "data")
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        await store.open()


async def test_a_second_store_on_one_sqlite_file_is_refused_until_the_first_closes(
        tmp_path: Path) -> None:
    first = open_store(None, tmp_path / "data")
    await first.open()
    second = open_store(None, tmp_path / "data")
    with pytest.raises(StoreError, match="another responder already uses the SQLite store"):
        await second.open()
    reader = open_store(None, tmp_path / "data", read_only=True)
    await reader.open()  # explain's read-only store takes no lock
    await reader.close()
    await first.close()
    await second.open()
    await second.close()


async def test_a_symlink_to_the_store_meets_the_same_lock(tmp_path: Path) -> None:
    first = open_store("sqlite:///" + str(tmp_path / "a.sqlite3"))
    await first.open()
    (tmp_path / "b.sqlite3").symlink_to(tmp_path / "a.sqlite3")
    second = open_store("sqlite:///" + str(tmp_path / "b.sqlite3"))
    try:
        with pytest.raises(StoreError, match="another responder already uses"):
            await second.open()
    finally:
        await first.close()


async def test_a_planted_lock_symlink_creates_nothing_elsewhere(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    victim = tmp_path / "victim"
    (data / "responder.sqlite3.lock").symlink_to(victim)
    store = open_store(None, data)
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        await store.open()
    assert not victim.exists()


def test_a_lock_file_root_created_stays_the_data_dirs_owners() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("runs the store as root, then as another user (setpriv)")
    # pytest's tmp_path is root's alone (0700): the service user could not reach it.
    base = Path(tempfile.mkdtemp(prefix="rbap-lock-"))
    try:
        base.chmod(0o755)
        data = base / "data"
        data.mkdir()
        os.chown(data, 65534, 65534)  # nobody's, as a service user's state dir
        asyncio.run(_open_and_close(open_store(None, data)))
        lock = data / "responder.sqlite3.lock"
        assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534)
        # The service user can now take the lock root's run left behind.
        taken = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(lock)],
            capture_output=True, text=True, timeout=30, check=False)
        assert taken.returncode == 0, taken.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _open_and_close(store: Store) -> None:
    await store.open()
    await store.close()


async def test_failed_page_is_retried_with_backoff(store: Store) -> None:
    note = Notification.model_validate(body(alert("p1")))
    result = await store.run(lambda tx: intake(tx, note, "{}", Policy(load(PAGE_RULE)), 1.0))
    oid = result.alerts[0].occurrence_id
    for attempt in range(1, ops.PAGE_ATTEMPTS + 1):
        now = time.time() + 10_000 * attempt
        item = await store.run(lambda tx, t=now: ops.claim(tx, "me", t, 60.0))
        assert item is not None
        assert item.attempt == attempt
        failed = [{"action": "page", "status": "failed", "output": "HTTP 500"}]
        state = await store.run(
            lambda tx, i=item, t=now, f=failed: ops.complete(tx, i, "me", f, None, t))
        if attempt < ops.PAGE_ATTEMPTS:
            assert state == "paging"
            assert await store.run(lambda tx, t=now: ops.claim(tx, "x", t + 1, 60.0)) is None
        else:
            assert state == "page_failed"
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    retries = [s["detail"]["in_seconds"] for s in data["steps"] if s["kind"] == "page_retry"]
    assert retries == [10.0, 20.0, 40.0, 80.0]


async def test_retention_forgets_only_what_ended_long_ago(store: Store) -> None:
    policy = Policy(load(PAGE_RULE))
    old = Notification.model_validate(body(alert("old"), alert("open")))
    await store.run(lambda tx: intake(tx, old, "{}", policy, 1000.0))
    closing = Notification.model_validate(body(alert("old", status="resolved")))
    await store.run(lambda tx: intake(tx, closing, "{}", policy, 1001.0))
    recent = Notification.model_validate(body(alert("new", status="resolved")))
    await store.run(lambda tx: intake(tx, recent, "{}", policy, 5000.0))
    gone = await store.run(lambda tx: prune(tx, 2000.0))
    assert gone["occurrences"] == 1
    assert gone["notifications"] == 2
    assert gone["steps"] >= 3
    left = await store.run(lambda tx: list_incidents(tx, False, 10))
    assert sorted(i["fingerprint"] for i in left) == ["new", "open"]


async def test_retention_removes_notifications_a_batch_at_a_time(store: Store) -> None:
    policy = Policy(load(PAGE_RULE))
    note = Notification.model_validate(body(alert("n")))
    for at in [*range(1000, 1012), 5000]:
        await store.run(lambda tx, at=at: intake(tx, note, "{}", policy, float(at)))
    removed = []
    while True:
        gone = await store.run(lambda tx: prune(tx, 2000.0, notifications=5))
        removed.append(gone["notifications"])
        if not gone["more"]:
            break
    assert removed == [5, 5, 2]
    kept = await store.run(lambda tx: tx.fetchall("SELECT received_at FROM notifications"))
    assert [float(r["received_at"]) for r in kept] == [5000.0]


async def _claimed_run(store: Store, program: str, fp: str
                       ) -> tuple[Policy, str, WorkItem]:
    """An auto rule running `program` decided for alert `fp`, its run claimed by "me"."""
    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            f"    mode: auto\n    do: [{{exec: [{program}]}}]\n")
    policy = Policy(load(rule))
    note = Notification.model_validate(body(alert(fp)))
    result = await store.run(lambda tx: intake(tx, note, "{}", policy, time.time()))
    item = await store.run(lambda tx: ops.claim(tx, "me", time.time(), 60.0))
    assert item is not None
    return policy, result.alerts[0].occurrence_id, item


async def test_resolved_before_its_escalation_is_claimed_ends_the_incident(store: Store) -> None:
    policy, oid, item = await _claimed_run(store, "/bin/false", "e1")
    failed = [{"action": "exec", "status": "failed", "output": "exit 1"}]
    state = await store.run(lambda tx: ops.complete(tx, item, "me", failed, None, time.time()))
    assert state == "escalating"
    # The alert resolves before any worker claims the escalation.
    gone = Notification.model_validate(body(alert("e1", status="resolved")))
    await store.run(lambda tx: intake(tx, gone, "{}", policy, time.time()))
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    assert data["state"] == "resolved"
    assert oid not in {i["id"] for i in await store.run(lambda tx: list_incidents(tx, True, 100))}
    cancelled = next(s for s in data["steps"] if s["kind"] == "resolved")["detail"]["cancelled"]
    assert [c["kind"] for c in cancelled] == ["escalate"]


async def test_resolved_while_the_run_is_held_stays_running_until_it_completes(
        store: Store) -> None:
    policy, oid, item = await _claimed_run(store, "/bin/true", "h1")
    gone = Notification.model_validate(body(alert("h1", status="resolved")))
    await store.run(lambda tx: intake(tx, gone, "{}", policy, time.time()))
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    assert data["state"] == "running"
    done = [{"action": "exec", "status": "ok", "output": ""}]
    state = await store.run(lambda tx: ops.complete(tx, item, "me", done, None, time.time()))
    assert state == "healed"


async def test_a_retry_after_verification_passes_the_rails(store: Store) -> None:
    # The first run is decided outside any maintenance window; by the time verification finds
    # the alert still firing, a window has begun: the retry is stopped and a human paged.
    from datetime import UTC, datetime

    start = time.time()

    def iso(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            "    mode: auto\n    verify_after: 60s\n    max_attempts: 3\n"
            "    do: [{exec: [/bin/true]}]\n")
    window = (f"maintenance:\n  - name: upgrade\n    start: {iso(start + 30)}\n"
              f"    end: {iso(start + 3600)}\n")
    policy = Policy(load(rule, extra=window))
    note = Notification.model_validate(body(alert("m1")))
    result = await store.run(lambda tx: intake(tx, note, "{}", policy, start))
    oid = result.alerts[0].occurrence_id
    run = await store.run(lambda tx: ops.claim(tx, "me", start, 60.0))
    assert run is not None
    assert run.kind == "run"
    done = [{"action": "exec", "status": "ok", "output": ""}]
    assert await store.run(lambda tx: ops.complete(tx, run, "me", done, None, start + 1,
                                                   policy=policy)) == "verifying"
    verify = await store.run(lambda tx: ops.claim(tx, "me", start + 62, 60.0))
    assert verify is not None
    assert verify.kind == "verify"
    state = await store.run(lambda tx: ops.complete(tx, verify, "me", [], True, start + 62,
                                                    policy=policy))
    assert state == "escalating"
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    rails = [s["detail"] for s in data["steps"] if s["kind"] == "rail" and s["detail"]["hit"]]
    assert [r["rail"] for r in rails] == ["maintenance"]
    escalated = next(s for s in data["steps"] if s["kind"] == "escalated")["detail"]
    assert "rail maintenance stops a retry" in escalated["reason"]
    kinds = [s["kind"] for s in data["steps"]]
    assert "retry" not in kinds


async def _work(store: Store, oid: str, kind: str) -> list[tuple[int, str]]:
    rows = await store.run(lambda tx: tx.fetchall(
        "SELECT attempt, status FROM work WHERE occurrence_id = ? AND kind = ? ORDER BY attempt",
        oid, kind))
    return [(int(r["attempt"]), str(r["status"])) for r in rows]


async def test_firing_again_after_resolved_reopens_pages_and_resolves_again(
        store: Store) -> None:
    policy = Policy(load(PAGE_RULE))
    t0 = time.time()

    async def notify(status: str, at: float, fp: str = "p1") -> list[str]:
        note = Notification.model_validate(body(alert(fp, status=status)))
        result = await store.run(lambda tx: intake(tx, note, "{}", policy, at))
        return [a.status for a in result.alerts]

    async def page_sent(at: float) -> None:
        item = await store.run(lambda tx: ops.claim(tx, "me", at, 60.0))
        assert item is not None
        assert item.kind == "page"
        sent = [{"action": "page", "status": "ok", "output": ""}]
        assert await store.run(lambda tx: ops.complete(tx, item, "me", sent, None, at)) == \
            "paged"

    assert await notify("firing", t0) == ["new"]
    await page_sent(t0 + 1)
    assert await notify("resolved", t0 + 10) == ["resolved"]
    oid = next(iter(await store.run(lambda tx: tx.fetchall("SELECT id FROM occurrences"))))["id"]
    # Within a minute of the resolve, a firing copy is one sent before it.
    assert await notify("firing", t0 + 20) == ["deduplicated"]
    # Alertmanager took the alert back: the same alert, the same startsAt, firing again.
    assert await notify("firing", t0 + 100) == ["reopened"]
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    assert data["state"] == "paging"
    # The first page's resolve, not yet sent, would close the new page: cancelled.
    assert await _work(store, oid, "resolve_page") == [(1, "cancelled")]
    assert await _work(store, oid, "page") == [(1, "done"), (2, "pending")]
    await page_sent(t0 + 101)
    assert await notify("resolved", t0 + 200) == ["resolved"]
    assert await _work(store, oid, "resolve_page") == [(1, "cancelled"), (2, "pending")]
    data = await store.run(lambda tx: get_incident(tx, oid))
    assert data is not None
    assert data["state"] == "resolved"
    assert [s["kind"] for s in data["steps"]].count("reopened") == 1


async def test_a_late_firing_copy_of_an_occurrence_resolved_unseen_reopens_nothing(
        store: Store) -> None:
    policy = Policy(load(PAGE_RULE))
    t0 = time.time()
    for status, at, expected in (("resolved", t0, "resolved-unseen"),
                                 ("firing", t0 + 300, "deduplicated")):
        note = Notification.model_validate(body(alert("u1", status=status)))
        result = await store.run(lambda tx, n=note, a=at: intake(tx, n, "{}", policy, a))
        assert [a.status for a in result.alerts] == [expected]
    assert await store.run(lambda tx: tx.fetchall("SELECT id FROM work")) == []
