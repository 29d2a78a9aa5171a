"""The intake transaction: record a notification, then decide each new occurrence exactly once.

Resends only append audit steps (no row is updated, so copies never wait on each other); a new
occurrence is decided under the store's decision lock and inserted with its decision, so the
unique key (fingerprint, startsAt) lets exactly one transaction decide it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

from responder.matching import RuleMatch
from responder.payload import Alert, Notification
from responder.policy import Policy, TrackDecision, page_step
from responder.rails import RailFacts, target_key
from responder.store.base import (
    AlertIntake,
    IntakeResult,
    Row,
    Tx,
    add_step,
    add_steps,
    dumps,
)

# States in which a resolved notification ends the occurrence before anything ran.
_CLOSE_UNSTARTED = {"new", "queued", "awaiting_approval", "paging"}
_HEAL = {"verifying", "acted"}
_END = {"paged", "escalated", "page_failed"}
REOPEN_AFTER = 60.0
"""Seconds after its resolve from which a firing copy of an occurrence reopens it."""
# States that last while a worker holds the occurrence's work.
_BUSY = {"running", "escalating"}
Step = tuple[str, str, dict[str, Any]]


NOTIFICATION_COLUMNS = "received_at, receiver, status, group_key, alerts, truncated_alerts, body"


@dataclass(eq=False)
class IntakeJob:
    """One webhook's intake transaction, handed to the store (which may batch resends)."""

    note: Notification
    body: str
    policy: Policy
    now: float
    paged_by: str | None = None
    """Who already paged a human for these alerts (Alertmanager's paging route): a decision to
    page is then recorded as done, not sent a second time."""
    known: bool = False
    """A hint: this process has seen every one of these occurrences recorded. Never trusted for
    what is recorded or decided, only for how the store schedules the transaction."""

    def __call__(self, tx: Tx) -> Coroutine[Any, Any, IntakeResult]:
        return record(tx, self)

    @property
    def alerts(self) -> dict[str, Alert]:
        """The alerts by occurrence id (Notification.occurrences)."""
        return self.note.occurrences

    @property
    def likely_resend(self) -> bool:
        """Every alert firing and already recorded: most likely it only appends audit steps."""
        return self.known and all(a.status == "firing" for a in self.note.alerts)

    def notification_row(self) -> tuple[Any, ...]:
        """The notifications row's values, in NOTIFICATION_COLUMNS order."""
        note = self.note
        return (self.now, note.receiver, note.status, note.group_key, len(note.alerts),
                note.truncated_alerts, self.body)

    def received(self, notification_id: int) -> dict[str, Any]:
        """The detail every step of this notification's alerts starts from."""
        note = self.note
        detail: dict[str, Any] = {"notification": notification_id,
                                  "receiver": note.receiver, "group_key": note.group_key}
        if self.paged_by:
            detail["paged_by"] = self.paged_by
        if note.truncated_alerts:
            detail["truncated_alerts"] = note.truncated_alerts
            detail["warning"] = (f"Alertmanager left {note.truncated_alerts} alerts out of "
                                 "this notification (max_alerts): they are not recorded here")
        return detail

    def resend(self, notification_id: int) -> tuple[IntakeResult, list[Step]]:
        """What intake records for a notification whose alerts are all firing and all already
        recorded: one deduplicated step per occurrence, nothing decided."""
        received = self.received(notification_id)
        result = IntakeResult(notification_id)
        steps: list[Step] = []
        for oid in self.alerts:
            steps.append((oid, "deduplicated", {**received, "status": "firing"}))
            result.alerts.append(AlertIntake(oid, "deduplicated"))
        return result, steps


async def intake(tx: Tx, note: Notification, body: str, policy: Policy, now: float,
                 paged_by: str | None = None) -> IntakeResult:
    """Record one notification and everything it decides, in the caller's transaction.

    `paged_by` names who already paged a human for these alerts (Alertmanager's paging route):
    a decision to page is then recorded as done, not sent a second time.
    """
    return await record(tx, IntakeJob(note, body, policy, now, paged_by))


async def record(tx: Tx, job: IntakeJob) -> IntakeResult:
    """intake() for a job."""
    policy, now, paged_by = job.policy, job.now, job.paged_by
    row = await tx.fetchone(
        f"INSERT INTO notifications ({NOTIFICATION_COLUMNS}) "  # noqa: S608 - constant text
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id", *job.notification_row())
    assert row is not None
    result = IntakeResult(int(row["id"]))
    received = job.received(result.notification_id)
    seen = job.alerts
    steps: list[Step] = []
    new_firing: list[tuple[str, Alert]] = []
    for oid, alert in seen.items():
        detail = {**received, "status": alert.status}
        occ = await tx.fetchone("SELECT state, resolved_at FROM occurrences WHERE id = ?", oid)
        if occ is None and alert.status == "firing":
            new_firing.append((oid, alert))
            continue
        if occ is None:
            inserted = await _insert(tx, oid, alert, "resolved", [], now)
            if inserted:
                steps += [(oid, "received", detail), (oid, "resolved", {
                    "reason": "resolved before any firing notification was recorded: "
                              "nothing to remediate"})]
                result.alerts.append(AlertIntake(oid, "resolved-unseen"))
                continue
        result.alerts.append(await _again(tx, oid, alert, occ, detail, steps, now, result,
                                          paged_by))
    matched: list[tuple[str, Alert, list[RuleMatch | None]]] = []
    for oid, alert in new_firing:
        found: list[RuleMatch | None] = [*policy.matches(alert.labels)]
        matched.append((oid, alert, found or [None]))
    # Only rails read shared state: pages and unmatched alerts never wait for the lock.
    if any(policy.needs_facts(m) for _, _, matches in matched for m in matches):
        await tx.lock_decisions()
    for oid, alert, matches in matched:
        detail = {**received, "status": alert.status}
        result.alerts.append(await _decide(tx, oid, alert, matches, policy, now, detail, steps,
                                           result, paged_by))
    await add_steps(tx, steps, now)
    return result


async def _again(tx: Tx, oid: str, alert: Alert, seen: Row | None, detail: dict[str, Any],
                 steps: list[Step], now: float, result: IntakeResult,
                 paged_by: str | None) -> AlertIntake:
    """A notification about an occurrence already recorded."""
    if alert.status == "firing":
        if seen is not None and seen["resolved_at"] is not None:
            return await _reopen(tx, oid, detail, steps, now, result, paged_by)
        steps.append((oid, "deduplicated", detail))
        return AlertIntake(oid, "deduplicated")
    occ = await tx.fetchone(f"SELECT state, resolved_at, paged FROM occurrences WHERE id = ?"  # noqa: S608 - only constant dialect text is inserted
                            f"{tx.for_update}", oid)
    assert occ is not None
    if occ["resolved_at"] is not None:
        steps.append((oid, "deduplicated", {**detail, "state": occ["state"]}))
        return AlertIntake(oid, "deduplicated")
    ends = alert.ends_at if alert.ended else None
    await resolve_occurrence(tx, oid, str(occ["state"]), bool(occ["paged"]), now,
                             {**detail, "ends_at": ends})
    return AlertIntake(oid, "resolved")


async def _reopen(tx: Tx, oid: str, detail: dict[str, Any], steps: list[Step], now: float,
                  result: IntakeResult, paged_by: str | None) -> AlertIntake:
    """The same alert (same startsAt) firing after its resolved notification: Alertmanager
    resolves an alert Prometheus stopped sending for a while, then takes it back when it comes
    again. It was decided once already, so a human is paged rather than a second decision
    taken, and the occurrence is open again."""
    occ = await tx.fetchone(f"SELECT state, resolved_at, decision FROM occurrences WHERE id = ?"  # noqa: S608 - only constant dialect text is inserted
                            f"{tx.for_update}", oid)
    assert occ is not None
    if occ["resolved_at"] is None:  # an HA copy reopened it first
        steps.append((oid, "deduplicated", detail))
        return AlertIntake(oid, "deduplicated")
    was = str(occ["state"])
    if occ["decision"] in (None, "", "[]"):
        # Resolved before any firing copy was recorded: this firing copy came late (out of
        # order, or an HA peer's), and nothing was ever decided to reopen.
        steps.append((oid, "deduplicated", {**detail, "state": was}))
        return AlertIntake(oid, "deduplicated")
    if now - float(occ["resolved_at"]) < REOPEN_AFTER:
        # Within a minute of the resolve it is a copy sent before it (a retry, an HA peer):
        # Alertmanager only takes an alert back after Prometheus stopped sending it a while.
        steps.append((oid, "deduplicated", {**detail, "state": was, "reason": (
            f"a firing copy within {REOPEN_AFTER:g}s of the resolve: taken as sent before it")}))
        return AlertIntake(oid, "deduplicated")
    reason = (f"fired again after it was {was} (the same alert and startsAt): it was decided "
              "once already, so a human is paged")
    state = "paged" if paged_by else "paging"
    await tx.execute("UPDATE occurrences SET resolved_at = NULL, ends_at = NULL, state = ?, "
                     "updated_at = ? WHERE id = ?", state, now, oid)
    # A resolve of the first page not yet sent would close the page this reopening raises.
    await tx.execute("UPDATE work SET status = 'cancelled' WHERE occurrence_id = ? "
                     "AND status = 'pending' AND kind = 'resolve_page'", oid)
    steps.append((oid, "reopened", {**detail, "was": was, "reason": reason}))
    if paged_by:
        steps.append((oid, "paged", {"by": paged_by,
                                     "reason": f"{reason}; {paged_by} paged the receivers"}))
        return AlertIntake(oid, "reopened", ["paged"])
    await enqueue(tx, oid, 0, "page", await next_attempt(tx, oid, 0, "page"), {
        "rule_index": None, "rule": "(reopened)", "steps": [page_step(reason)],
        "reason": reason, "dry_run": False}, now)
    result.work_queued += 1
    result.queued_kinds.add("page")
    steps.append((oid, "paging", {"reason": reason}))
    return AlertIntake(oid, "reopened", ["paging"])


async def _insert(tx: Tx, oid: str, alert: Alert, state: str, decision: list[dict[str, Any]],
                  now: float) -> bool:
    ends = alert.ends_at if alert.ended else None
    row = await tx.fetchone(
        "INSERT INTO occurrences (id, fingerprint, starts_at, alertname, labels, annotations, "
        "generator_url, state, decision, first_seen, updated_at, resolved_at, ends_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        oid, alert.fingerprint, alert.starts_key, alert.labels.get("alertname", ""),
        dumps(alert.labels), dumps(alert.annotations), alert.generator_url, state,
        dumps(decision), now, now, now if state == "resolved" else None, ends)
    return row is not None


async def resolve_occurrence(tx: Tx, oid: str, state: str, paged: bool, now: float,
                             detail: dict[str, Any]) -> None:
    """A resolved notification: close what has not started, heal what was remediated."""
    cancelled = await tx.fetchall(
        "UPDATE work SET status = 'cancelled' WHERE occurrence_id = ? AND status = 'pending' "
        "AND kind <> 'resolve_page' RETURNING id, kind", oid)
    new_state = state
    if state in _CLOSE_UNSTARTED or state in _END:
        new_state = "resolved"
    elif state in _HEAL:
        new_state = "healed"
    elif state in _BUSY:
        # Work still held by a worker closes the occurrence when it completes; with none held
        # (an escalation not yet claimed was just cancelled, a run left for recovery), nothing
        # ever would: it ends now.
        held = await tx.fetchone(
            "SELECT COUNT(*) AS n FROM work WHERE occurrence_id = ? AND status = 'claimed' "
            "AND kind <> 'resolve_page'", oid)
        if held is None or not held["n"]:
            new_state = "resolved"
    await tx.execute("UPDATE occurrences SET resolved_at = ?, ends_at = ?, state = ?, "
                     "updated_at = ? WHERE id = ?",
                     now, detail.get("ends_at"), new_state, now, oid)
    await add_step(tx, oid, "resolved", {**detail, "state": new_state,
                                         "cancelled": [dict(c) for c in cancelled]}, now)
    if paged:
        await resolve_page(tx, oid, now)


async def next_attempt(tx: Tx, oid: str, track: int, kind: str) -> int:
    """One more than the last attempt of this kind of work on this track: an occurrence that
    reopened pages, and resolves its page, once more."""
    row = await tx.fetchone("SELECT MAX(attempt) AS n FROM work WHERE occurrence_id = ? "
                            "AND track = ? AND kind = ?", oid, track, kind)
    return int(row["n"] or 0) + 1 if row else 1


async def resolve_page(tx: Tx, oid: str, now: float) -> None:
    """Queue the resolve of the pages this occurrence raised."""
    await enqueue(tx, oid, 0, "resolve_page", await next_attempt(tx, oid, 0, "resolve_page"),
                  {"steps": []}, now)


async def enqueue(tx: Tx, oid: str, track: int, kind: str, attempt: int, plan: dict[str, Any],
                  not_before: float) -> bool:
    """Queue one piece of work once (the unique key makes a second enqueue a no-op)."""
    row = await tx.fetchone(
        "INSERT INTO work (occurrence_id, track, kind, attempt, plan, status, not_before, "
        "created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        oid, track, kind, attempt, dumps(plan), not_before, not_before)
    return row is not None


async def rail_facts(tx: Tx, policy: Policy, match: RuleMatch, target: str,
                     now: float) -> RailFacts:
    """The shared rails state for one decision, read under the decision lock."""
    rule = match.rule
    window = rule.window_limit.per if rule.window_limit else 0.0
    row = await tx.fetchone(
        "SELECT (SELECT MAX(at) FROM rail_runs WHERE rule_key = ? AND target_key = ?) AS last, "
        "(SELECT COUNT(*) FROM rail_runs WHERE rule_key = ? AND at > ?) AS in_window, "
        "(SELECT COUNT(*) FROM rail_runs WHERE at > ?) AS in_rate, "
        "(SELECT COUNT(*) FROM work WHERE status IN ('pending', 'claimed') AND kind = 'run') "
        "AS active", match.key, target, match.key, now - window,
        now - policy.loaded.runbook.rails.rate_limit.per)
    assert row is not None
    return RailFacts(
        last_run_at=None if row["last"] is None else float(row["last"]),
        rule_runs_in_window=int(row["in_window"]) if rule.window_limit else 0,
        runs_in_rate_window=int(row["in_rate"]), active_runs=int(row["active"]))


async def record_run(tx: Tx, rule: str, target: str, oid: str, now: float) -> None:
    """Count a remediation against the rails (cooldown, windows, rate)."""
    await tx.execute("INSERT INTO rail_runs (rule_key, target_key, occurrence_id, at) "
                     "VALUES (?, ?, ?, ?)", rule, target, oid, now)


async def _decide(tx: Tx, oid: str, alert: Alert, matches: list[RuleMatch | None],
                  policy: Policy, now: float, received: dict[str, Any], steps: list[Step],
                  result: IntakeResult, paged_by: str | None = None) -> AlertIntake:
    """Decide a new occurrence (under the decision lock when rails apply); insert it with its
    decision."""
    decisions: list[TrackDecision] = []
    queued = 0
    for match in matches:
        facts = None
        if policy.needs_facts(match):
            assert match is not None
            facts = await rail_facts(tx, policy, match, target_key(alert.labels), now)
            # Earlier tracks of this occurrence are queued only further down: count them
            # against the global rails now, or `continue` rules would pass them together.
            facts = replace(facts, runs_in_rate_window=facts.runs_in_rate_window + queued,
                            active_runs=facts.active_runs + queued)
        decision = policy.decide(match, alert.labels, facts, now)
        queued += decision.outcome == "queued"
        decisions.append(decision)
    # A page Alertmanager has sent already (a page rule, or no rule) is not sent again; a page
    # that a rail turned an action into is the responder's own and is still sent.
    already = [paged_by is not None and d.outcome == "paging"
               and not any(c.hit for c in d.rails) for d in decisions]
    outcomes = {d.outcome for d, done in zip(decisions, already, strict=True) if not done}
    state = next((s for s in ("queued", "awaiting_approval", "paging") if s in outcomes), "paged")
    if not await _insert(tx, oid, alert, state, [d.as_json() for d in decisions], now):
        # Another transaction decided it between our look and the lock.
        steps.append((oid, "deduplicated", received))
        return AlertIntake(oid, "deduplicated")
    steps.append((oid, "received", received))
    steps.append((oid, "matched", {"rules": [m.key for m in matches if m is not None]}
                  if matches[0] is not None else {"rules": [], "reason": "no rule matches"}))
    row = AlertIntake(oid, "new")
    for track, decision in enumerate(decisions):
        if already[track]:
            steps.append((oid, "paged", {
                "rule": decision.rule_key, "track": track, "by": paged_by,
                "reason": f"{decision.reason}; {paged_by} paged the receivers already"}))
            row.decisions.append("paged")
            continue
        for check in decision.rails:
            steps.append((oid, "rail", {"rule": decision.rule_key, **check.as_json()}))
            if check.hit:
                result.rail_hits.append(check.rail)
        if decision.outcome == "queued":
            await enqueue(tx, oid, track, "run", 1, decision.plan, now)
            await record_run(tx, decision.rule_key, decision.target_key, oid, now)
            result.work_queued += 1
            result.queued_kinds.add("run")
        elif decision.outcome == "paging":
            await enqueue(tx, oid, track, "page", 1, decision.plan, now)
            result.work_queued += 1
            result.queued_kinds.add("page")
        steps.append((oid, decision.outcome, {
            "rule": decision.rule_key, "track": track, "mode": decision.mode,
            "dry_run": decision.dry_run, "reason": decision.reason}))
        row.decisions.append(decision.outcome)
    return row
