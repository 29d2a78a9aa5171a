"""The intake transaction: record a notification, then decide each new occurrence exactly once."""

from __future__ import annotations

from typing import Any

from responder.matching import RuleMatch
from responder.payload import Alert, Notification
from responder.policy import Policy
from responder.rails import RailFacts, target_key
from responder.store.base import AlertIntake, IntakeResult, Tx, add_step, dumps, occurrence_id

# States in which a resolved notification ends the occurrence before anything ran.
_CLOSE_UNSTARTED = {"new", "queued", "awaiting_approval", "paging"}
_HEAL = {"verifying", "acted"}
_END = {"paged", "escalated"}
ACTIVE_RUN_KINDS = ("run",)


async def intake(tx: Tx, note: Notification, body: str, policy: Policy, now: float) -> IntakeResult:
    """Record one notification and everything it decides, in the caller's transaction."""
    row = await tx.fetchone(
        "INSERT INTO notifications (received_at, receiver, status, group_key, alerts, "
        "truncated_alerts, body) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        now, note.receiver, note.status, note.group_key, len(note.alerts),
        note.truncated_alerts, body)
    assert row is not None
    result = IntakeResult(int(row["id"]))
    received = {"notification": result.notification_id, "receiver": note.receiver,
                "group_key": note.group_key}
    if note.truncated_alerts:
        received["truncated_alerts"] = note.truncated_alerts
        received["warning"] = (f"Alertmanager left {note.truncated_alerts} alerts out of this "
                               "notification (max_alerts): they are not recorded here")
    # A fixed order, so two transactions never wait on each other's occurrence rows.
    seen: dict[str, Alert] = {}
    for alert in note.alerts:
        seen.setdefault(occurrence_id(alert.fingerprint, alert.starts_key), alert)
    new_firing: list[tuple[str, Alert]] = []
    for oid in sorted(seen):
        alert = seen[oid]
        outcome = await _record_alert(tx, oid, alert, received, now)
        result.alerts.append(outcome)
        if outcome.status == "new":
            new_firing.append((oid, alert))
    if new_firing:
        await tx.lock_decisions()
        by_id = {a.occurrence_id: a for a in result.alerts}
        for oid, alert in new_firing:
            await _decide(tx, oid, alert, policy, now, by_id[oid], result)
    return result


async def _record_alert(tx: Tx, oid: str, alert: Alert, received: dict[str, Any],
                        now: float) -> AlertIntake:
    state = "new" if alert.status == "firing" else "resolved"
    ends = alert.ends_at if alert.ended else None
    inserted = await tx.fetchone(
        "INSERT INTO occurrences (id, fingerprint, starts_at, alertname, labels, annotations, "
        "generator_url, state, first_seen, updated_at, resolved_at, ends_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        oid, alert.fingerprint, alert.starts_key, alert.labels.get("alertname", ""),
        dumps(alert.labels), dumps(alert.annotations), alert.generator_url, state, now, now,
        now if state == "resolved" else None, ends)
    detail = {**received, "status": alert.status}
    if inserted is not None:
        await add_step(tx, oid, "received", detail, now)
        if alert.status == "firing":
            return AlertIntake(oid, "new")
        await add_step(tx, oid, "resolved", {"reason": "resolved before any firing notification "
                                             "was recorded: nothing to remediate"}, now)
        return AlertIntake(oid, "resolved-unseen")
    occ = await tx.fetchone(f"SELECT state, resolved_at, paged FROM occurrences WHERE id = ?"  # noqa: S608 - only constant dialect text is inserted
                            f"{tx.for_update}", oid)
    assert occ is not None
    if alert.status == "firing" or occ["resolved_at"] is not None:
        await tx.execute("UPDATE occurrences SET notifications = notifications + 1, "
                         "updated_at = ? WHERE id = ?", now, oid)
        await add_step(tx, oid, "deduplicated", {**detail, "state": occ["state"]}, now)
        return AlertIntake(oid, "deduplicated")
    await resolve_occurrence(tx, oid, str(occ["state"]), bool(occ["paged"]), now,
                             {**detail, "ends_at": ends})
    return AlertIntake(oid, "resolved")


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
    await tx.execute("UPDATE occurrences SET resolved_at = ?, ends_at = ?, state = ?, "
                     "updated_at = ?, notifications = notifications + 1 WHERE id = ?",
                     now, detail.get("ends_at"), new_state, now, oid)
    await add_step(tx, oid, "resolved", {**detail, "state": new_state,
                                         "cancelled": [dict(c) for c in cancelled]}, now)
    if paged:
        await enqueue(tx, oid, 0, "resolve_page", 1, {"steps": []}, now)


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
    rails = policy.loaded.runbook.rails
    last = await tx.fetchone("SELECT MAX(at) AS at FROM rail_runs WHERE rule_key = ? "
                             "AND target_key = ?", match.key, target)
    window = rule.window_limit.per if rule.window_limit else 0.0
    in_window = await tx.fetchone("SELECT COUNT(*) AS n FROM rail_runs WHERE rule_key = ? "
                                  "AND at > ?", match.key, now - window)
    in_rate = await tx.fetchone("SELECT COUNT(*) AS n FROM rail_runs WHERE at > ?",
                                now - rails.rate_limit.per)
    active = await tx.fetchone("SELECT COUNT(*) AS n FROM work WHERE kind = 'run' "
                               "AND status IN ('pending', 'claimed')")
    assert last is not None
    assert in_window is not None
    assert in_rate is not None
    assert active is not None
    return RailFacts(
        last_run_at=None if last["at"] is None else float(last["at"]),
        rule_runs_in_window=int(in_window["n"]) if rule.window_limit else 0,
        runs_in_rate_window=int(in_rate["n"]), active_runs=int(active["n"]))


async def record_run(tx: Tx, rule: str, target: str, oid: str, now: float) -> None:
    """Count a remediation against the rails (cooldown, windows, rate)."""
    await tx.execute("INSERT INTO rail_runs (rule_key, target_key, occurrence_id, at) "
                     "VALUES (?, ?, ?, ?)", rule, target, oid, now)


async def _decide(tx: Tx, oid: str, alert: Alert, policy: Policy, now: float,
                  intake_row: AlertIntake, result: IntakeResult) -> None:
    matches: list[RuleMatch | None] = list(policy.matches(alert.labels)) or [None]
    await add_step(tx, oid, "matched", {"rules": [m.key for m in matches if m is not None]}
                   if matches[0] is not None else {"rules": [], "reason": "no rule matches"}, now)
    tracks: list[dict[str, Any]] = []
    for track, match in enumerate(matches):
        facts = None
        if policy.needs_facts(match):
            assert match is not None
            facts = await rail_facts(tx, policy, match, target_key(alert.labels), now)
        decision = policy.decide(match, alert.labels, facts, now)
        for check in decision.rails:
            await add_step(tx, oid, "rail", {"rule": decision.rule_key, **check.as_json()}, now)
            if check.hit:
                result.rail_hits.append(check.rail)
        if decision.outcome == "queued":
            await enqueue(tx, oid, track, "run", 1, decision.plan, now)
            await record_run(tx, decision.rule_key, decision.target_key, oid, now)
            result.work_queued += 1
        elif decision.outcome == "paging":
            await enqueue(tx, oid, track, "page", 1, decision.plan, now)
            result.work_queued += 1
        await add_step(tx, oid, decision.outcome, {
            "rule": decision.rule_key, "track": track, "mode": decision.mode,
            "dry_run": decision.dry_run, "reason": decision.reason}, now)
        intake_row.decisions.append(decision.outcome)
        tracks.append(decision.as_json())
    outcomes = {t["outcome"] for t in tracks}
    state = next(s for s in ("queued", "awaiting_approval", "paging") if s in outcomes)
    await tx.execute("UPDATE occurrences SET state = ?, decision = ?, updated_at = ? "
                     "WHERE id = ?", state, dumps(tracks), now, oid)

