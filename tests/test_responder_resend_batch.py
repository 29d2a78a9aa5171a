"""The SQLite writer records a run of likely resends in bulk: the same rows as intake() one by
one, in arrival order; a wrong hint or a failing row falls back to intake() for that job alone."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from responder.payload import Notification
from responder.policy import Policy
from responder.store import StoreError
from responder.store import sqlite as sqlite_store
from responder.store.base import IntakeResult, Tx
from responder.store.intake import IntakeJob
from responder.store.sqlite import SqliteStore
from tests.test_responder_support import alert, body, load

PAGE_RULE = "  - name: p\n    match: {alertname: GaugeHigh}\n    external: true\n    mode: page\n"
TABLES = {
    "notifications": "SELECT * FROM notifications ORDER BY id",
    "steps": "SELECT * FROM steps ORDER BY id",
    "occurrences": "SELECT * FROM occurrences ORDER BY id",
    "work": "SELECT id, occurrence_id, kind, status, plan FROM work ORDER BY id",
}


def _jobs(policy: Policy) -> list[IntakeJob]:
    """A first notification, then a stream mixing resends with notifications that are not."""
    two = body(alert("a"), alert("b"), receiver="team")
    notes: list[tuple[dict[str, Any], bool]] = [
        (two, False),                                      # new: decides a and b
        (two, True),                                       # resend
        (body(alert("b")), True),                          # resend of one of them
        (body(alert("c")), True),                          # the hint is wrong: c is new
        (body(alert("a"), truncatedAlerts=3), True),       # resend with a warning
        (body(alert("b", status="resolved")), True),       # not firing: intake() itself
        (body(alert("a"), alert("c")), True),              # resend of a and of c, new above
    ]
    return [IntakeJob(Notification.model_validate(data), json.dumps(data), policy,
                      1000.0 + i, "alertmanager" if i == 4 else None, known)
            for i, (data, known) in enumerate(notes)]


def _alone(job: IntakeJob) -> Callable[[Tx], Awaitable[IntakeResult]]:
    """The job as a plain function, which the store runs as intake() on its own."""
    async def op(tx: Tx) -> IntakeResult:
        return await job(tx)

    return op


def _tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        conn.close()


async def _hold_writer(store: SqliteStore, seconds: float) -> asyncio.Task[None]:
    """Keep the writer thread busy so that what is submitted meanwhile forms one batch."""
    async def sleep(_tx: Tx) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - it runs on the writer thread, holding it on purpose

    task = asyncio.ensure_future(store.run(sleep))
    await asyncio.sleep(0.05)
    return task


async def test_bulk_resends_record_what_intake_records_one_by_one(
        tmp_path: Path, monkeypatch: Any) -> None:
    policy = Policy(load(PAGE_RULE))
    bulk_sizes: list[int] = []
    real = sqlite_store._insert_resends

    def counting(conn: Any, tx: Any, jobs: list[Any]) -> Any:
        if jobs:
            bulk_sizes.append(len(jobs))
        return real(conn, tx, jobs)

    monkeypatch.setattr(sqlite_store, "_insert_resends", counting)
    one_by_one = SqliteStore(tmp_path / "one.sqlite3")
    batched = SqliteStore(tmp_path / "batched.sqlite3")
    await one_by_one.open()
    await batched.open()
    try:
        expected = [(await one_by_one.run(_alone(job))).as_json() for job in _jobs(policy)]
        first, *rest = _jobs(policy)
        got = [(await batched.run_intake(first)).as_json()]
        held = await _hold_writer(batched, 0.3)
        got += [r.as_json() for r in await asyncio.gather(*(batched.run_intake(j)
                                                           for j in rest))]
        await held
    finally:
        await one_by_one.close()
        await batched.close()
    assert got == expected
    assert _tables(tmp_path / "batched.sqlite3") == _tables(tmp_path / "one.sqlite3")
    # The resends around the wrong hint and the resolved notification went in bulk.
    assert bulk_sizes == [2, 1, 1]
    statuses = [[a["status"] for a in r["alerts"]] for r in got]
    assert statuses == [["new", "new"], ["deduplicated", "deduplicated"], ["deduplicated"],
                        ["new"], ["deduplicated"], ["resolved"],
                        ["deduplicated", "deduplicated"]]


async def test_a_failing_resend_fails_alone_and_the_others_are_recorded(tmp_path: Path) -> None:
    policy = Policy(load(PAGE_RULE))
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.run_intake(IntakeJob(Notification.model_validate(body(alert("a"))), "{}",
                                         policy, 1.0))
        # A row the database refuses, like a full disk would refuse any row.
        await store.run(lambda tx: tx.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON notifications WHEN NEW.receiver = 'refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
        jobs = [IntakeJob(Notification.model_validate(body(alert("a"), receiver=name)), "{}",
                          policy, 2.0 + i, known=True)
                for i, name in enumerate(["ok-1", "refused", "ok-2"])]
        held = await _hold_writer(store, 0.3)
        outcomes = await asyncio.gather(*(store.run_intake(j) for j in jobs),
                                        return_exceptions=True)
        await held
    finally:
        await store.close()
    assert isinstance(outcomes[1], StoreError)
    assert "refused by the test" in str(outcomes[1])
    assert [type(o).__name__ for o in outcomes] == ["IntakeResult", "StoreError", "IntakeResult"]
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    try:
        receivers = [r[0] for r in conn.execute("SELECT receiver FROM notifications ORDER BY id")]
        steps = conn.execute("SELECT kind, detail FROM steps WHERE kind = 'deduplicated' "
                             "ORDER BY id").fetchall()
    finally:
        conn.close()
    assert receivers == ["responder", "ok-1", "ok-2"]
    assert [json.loads(d)["receiver"] for _, d in steps] == ["ok-1", "ok-2"]


async def test_a_value_sqlite_cannot_bind_fails_alone_and_the_writer_goes_on(
        tmp_path: Path) -> None:
    policy = Policy(load(PAGE_RULE))
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.run_intake(IntakeJob(Notification.model_validate(body(alert("a"))), "{}",
                                         policy, 1.0))
        # Not sqlite3.Error: binding a lone surrogate raises UnicodeEncodeError, binding an
        # integer past 64 bits OverflowError. Neither may end the writer thread.
        bodies = ["{}", "\ud800", "{}"]
        jobs = [IntakeJob(Notification.model_validate(body(alert("a"), receiver=f"r{i}")),
                          text, policy, 2.0 + i, known=True) for i, text in enumerate(bodies)]
        held = await _hold_writer(store, 0.3)
        outcomes = await asyncio.wait_for(asyncio.gather(
            *(store.run_intake(j) for j in jobs), return_exceptions=True), 5)
        await held
        after = await asyncio.wait_for(store.run_intake(IntakeJob(
            Notification.model_validate(body(alert("a"), receiver="after")), "{}", policy,
            9.0, known=True)), 5)
    finally:
        await store.close()
    assert [type(o).__name__ for o in outcomes] == ["IntakeResult", "UnicodeEncodeError",
                                                    "IntakeResult"]
    assert [a.status for a in after.alerts] == ["deduplicated"]
