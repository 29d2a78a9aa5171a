"""Work transactions: claim, step bookkeeping, completion with follow-ups, crash recovery."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from responder.matching import RuleMatch, rule_key
from responder.policy import Policy, page_step
from responder.rails import RailCheck, active_window, check_rails
from responder.store.base import Row, Tx, WorkItem, add_step, add_steps
from responder.store.intake import enqueue, rail_facts, record_run, resolve_page

OK_STATUSES = ("ok", "dry_run")
# States in which a remediation track of the occurrence is under way or awaiting its end (an
# approval still waiting is not: "paged" says more until someone answers it).
_ACTING = frozenset({"queued", "running", "verifying", "acted", "escalating"})
PAGE_ATTEMPTS = 5
PAGE_BACKOFF = 10.0


def step_detail(item: WorkItem, index: int) -> dict[str, Any]:
    """What an action_started step says: the action and whether it only pretends."""
    name = item.plan["steps"][index]["action"]
    return {"action": name, "dry_run": bool(item.plan.get("dry_run")) and name != "page"}


def runs_steps(item: WorkItem) -> bool:
    """Whether this work runs action steps (and which remain)."""
    return item.kind in ("run", "escalate", "page") and \
        item.next_step < len(item.plan.get("steps", []))


REMEDIATIONS = ("run", "escalate")
"""Work that runs a rule's actions: bounded by rails.max_concurrent. Pages, verifications and
page resolutions have slots of their own, so slow remediations never hold a page back."""


async def claim_many(tx: Tx, owner: str, now: float, lease: float, limit: int,
                     remediations: bool | None = None) -> list[WorkItem]:
    """Take up to `limit` of the oldest due work nobody holds (SKIP LOCKED on PostgreSQL):
    remediations only (True), everything else only (False), or any (None). The first step of
    each is marked started in the same commit."""
    kinds = ", ".join(f"'{k}'" for k in REMEDIATIONS)
    only = {None: "", True: f" AND kind IN ({kinds})", False: f" AND kind NOT IN ({kinds})"}
    rows = await tx.fetchall(
        "SELECT id, occurrence_id, track, kind, attempt, plan, next_step FROM work "  # noqa: S608 - only constant dialect text is inserted
        f"WHERE status = 'pending' AND not_before <= ?{only[remediations]} "
        f"ORDER BY not_before, id LIMIT ?{tx.skip_locked}", now, limit)
    if not rows:
        return []
    # A few statements for the whole claim, whatever its size.
    oids = sorted({str(r["occurrence_id"]) for r in rows})
    marks = ", ".join("?" for _ in oids)
    occs = {str(o["id"]): o for o in await tx.fetchall(
        f"SELECT * FROM occurrences WHERE id IN ({marks})", *oids)}  # noqa: S608 - placeholders only
    past: dict[str, list[dict[str, Any]]] = {oid: [] for oid in oids}
    for step in await tx.fetchall(
            f"SELECT occurrence_id, detail FROM steps WHERE occurrence_id IN ({marks}) "  # noqa: S608 - placeholders only
            "AND kind = 'action_finished' ORDER BY id", *oids):
        past[str(step["occurrence_id"])].append(json.loads(step["detail"]))
    items = []
    for row in rows:
        oid = str(row["occurrence_id"])
        item = WorkItem(int(row["id"]), oid, int(row["track"]), str(row["kind"]),
                        int(row["attempt"]), json.loads(row["plan"]), int(row["next_step"]),
                        dict(occs[oid]), list(past[oid]))
        item.step_started = runs_steps(item)
        items.append(item)
    for in_step in (1, 0):
        ids = [i.id for i in items if i.step_started == bool(in_step)]
        if ids:
            await tx.execute(
                "UPDATE work SET status = 'claimed', claimed_by = ?, lease_until = ?, "  # noqa: S608 - placeholders only
                f"in_step = ? WHERE id IN ({', '.join('?' for _ in ids)})",
                owner, now + lease, in_step, *ids)
    for kind, state in (("run", "running"), ("escalate", "escalating")):
        open_ids = sorted({i.occurrence_id for i in items
                           if i.kind == kind and occs[i.occurrence_id]["resolved_at"] is None})
        if open_ids:
            await tx.execute(
                "UPDATE occurrences SET state = ?, updated_at = ? "  # noqa: S608 - placeholders only
                f"WHERE id IN ({', '.join('?' for _ in open_ids)})", state, now, *open_ids)
    await add_steps(tx, [(i.occurrence_id, "action_started", {
        **step_detail(i, i.next_step), "work": i.id, "kind": i.kind, "index": i.next_step,
        "by": owner}) for i in items if i.step_started], now)
    return items


async def claim(tx: Tx, owner: str, now: float, lease: float) -> WorkItem | None:
    """Take the oldest due work nobody holds."""
    items = await claim_many(tx, owner, now, lease, 1)
    return items[0] if items else None


async def renew(tx: Tx, work_id: int, owner: str, until: float) -> bool:
    """Extend a claim; False when it is no longer ours."""
    changed = await tx.execute("UPDATE work SET lease_until = ? WHERE id = ? AND claimed_by = ? "
                               "AND status = 'claimed'", until, work_id, owner)
    return changed == 1


async def begin_step(tx: Tx, item: WorkItem, owner: str, index: int, detail: dict[str, Any],
                     now: float) -> bool:
    """Record that step `index` starts, before it runs (so a crash inside it is known)."""
    changed = await tx.execute("UPDATE work SET next_step = ?, in_step = 1 WHERE id = ? "
                               "AND claimed_by = ? AND status = 'claimed'", index, item.id, owner)
    if changed != 1:
        return False
    await add_step(tx, item.occurrence_id, "action_started",
                   {**detail, "work": item.id, "kind": item.kind, "index": index, "by": owner},
                   now)
    return True


async def finish_step(tx: Tx, item: WorkItem, owner: str, index: int, outcome: dict[str, Any],
                      now: float) -> bool:
    """Record a step's outcome and move past it; False when the claim is no longer ours (the
    outcome is recorded all the same: the step did run)."""
    changed = await tx.execute("UPDATE work SET next_step = ?, in_step = 0 WHERE id = ? "
                               "AND claimed_by = ? AND status = 'claimed'",
                               index + 1, item.id, owner)
    await add_step(tx, item.occurrence_id, "action_finished",
                   {**outcome, "work": item.id, "kind": item.kind, "index": index}, now)
    return changed == 1


async def history(tx: Tx, occurrence: str) -> list[dict[str, Any]]:
    """Outcomes of every action finished for an occurrence, oldest first."""
    rows = await tx.fetchall("SELECT detail FROM steps WHERE occurrence_id = ? "
                             "AND kind = 'action_finished' ORDER BY id", occurrence)
    return [json.loads(r["detail"]) for r in rows]


async def complete(tx: Tx, item: WorkItem, owner: str, outcomes: list[dict[str, Any]],
                   still_firing: bool | None, now: float,
                   last: tuple[int, dict[str, Any]] | None = None,
                   policy: Policy | None = None) -> str:
    """Finish a piece of work (and its last step, if given) and queue what follows; the
    occurrence's new state. With the policy, a retry after a failed verification passes the
    rails first, as the first run did."""
    if last is not None:
        # finish_step and the completion in one statement.
        changed = await tx.execute("UPDATE work SET status = 'done', in_step = 0, next_step = ? "
                                   "WHERE id = ? AND claimed_by = ? AND status = 'claimed'",
                                   last[0] + 1, item.id, owner)
        await add_step(tx, item.occurrence_id, "action_finished",
                       {**last[1], "work": item.id, "kind": item.kind, "index": last[0]}, now)
    else:
        changed = await tx.execute("UPDATE work SET status = 'done', in_step = 0 WHERE id = ? "
                                   "AND claimed_by = ? AND status = 'claimed'", item.id, owner)
    if changed != 1:
        # Recovery took this work over after our lease ran out (and escalated or resumed it):
        # what ran is in the audit, but what follows is recovery's to decide, not ours.
        late = await tx.fetchone("SELECT state FROM occurrences WHERE id = ?", item.occurrence_id)
        await add_step(tx, item.occurrence_id, "late_finish", {
            "work": item.id, "kind": item.kind, "by": owner,
            "reason": "the work was taken over after its lease ran out: its end is recorded, "
                      "nothing is queued from it"}, now)
        return str(late["state"]) if late else "unknown"
    if policy is not None and item.kind == "verify" and \
            item.attempt < int(item.plan.get("max_attempts", 1)):
        # A retry may be decided below: the decision lock before the occurrence's row lock,
        # in the order intake takes them, so the two never wait on each other.
        await tx.lock_decisions()
    occ = await tx.fetchone(f"SELECT state, resolved_at, paged FROM occurrences WHERE id = ?"  # noqa: S608 - only constant dialect text is inserted
                            f"{tx.for_update}", item.occurrence_id)
    assert occ is not None
    resolved = occ["resolved_at"] is not None
    plan = item.plan
    oid = item.occurrence_id
    failed = [o for o in outcomes if o.get("status") not in OK_STATUSES]
    if item.kind == "run":
        if failed:
            what = ", ".join(f"{o.get('action')} {o.get('status')}" for o in failed)
            if resolved:
                return await _state(tx, oid, "resolved", now, "closed",
                                    {"reason": f"the alert resolved, though {what}"})
            return await escalate(tx, item, f"the remediation did not succeed: {what}", now)
        if resolved:
            return await _healed(tx, item, occ, now, "the resolved notification arrived while "
                                 "the remediation ran")
        verify_after = plan.get("verify_after")
        if verify_after:
            await enqueue(tx, oid, item.track, "verify", item.attempt, plan, now + verify_after)
            return await _state(tx, oid, "verifying", now, "verifying",
                                {"deadline": now + verify_after, "verify_after": verify_after})
        return await _state(tx, oid, "acted", now, "acted",
                            {"reason": "no verify_after: waiting for the resolved notification"})
    if item.kind == "verify":
        if resolved or still_firing is False:
            how = "the resolved notification" if resolved else "the alert source"
            return await _healed(tx, item, occ, now, f"not firing any more, by {how}")
        if item.attempt < int(plan.get("max_attempts", 1)):
            stopped = await _retry_stopped(tx, policy, item, now) if policy else None
            if stopped is not None:
                await add_step(tx, oid, "rail", {"rule": plan.get("rule"), **stopped.as_json()},
                               now)
                return await escalate(tx, item, f"still firing {plan.get('verify_after')}s "
                                      f"after attempt {item.attempt}, and rail {stopped.rail} "
                                      f"stops a retry: {stopped.reason}", now)
            await enqueue(tx, oid, item.track, "run", item.attempt + 1, plan, now)
            await record_run(tx, str(plan.get("rule")), str(plan.get("target")), oid, now)
            return await _state(tx, oid, "queued", now, "retry",
                                {"attempt": item.attempt + 1, "reason": "still firing after "
                                 f"{plan.get('verify_after')}s"})
        return await escalate(tx, item, f"still firing {plan.get('verify_after')}s after "
                              f"{item.attempt} remediation attempt(s)", now)
    if item.kind in ("page", "escalate"):
        # A page that reached one receiver told a human, though another receiver failed: it
        # counts as paged, so the pages it raised are resolved with the alert.
        pages = [o for o in outcomes if o.get("action") == "page"]
        paged = any(o.get("status") in OK_STATUSES or (o.get("detail") or {}).get("reached")
                    for o in pages)
        if paged:
            await tx.execute("UPDATE occurrences SET paged = 1 WHERE id = ?", oid)
            missed = [label for o in pages for label in (o.get("detail") or {}).get("missed", [])]
            await add_step(tx, oid, "paged", {"work": item.id, "reason": plan.get("reason"),
                                              **({"missed": missed} if missed else {})}, now)
            if resolved:
                await resolve_page(tx, oid, now)
        # A page track beside a remediation (a `continue` rule) leaves the occurrence's state
        # to the remediation: "paged" over "verifying" would end it as resolved, not healed,
        # and a page ending after the alert healed must not turn it into "resolved".
        current = str(occ["state"])
        keep = current if item.kind == "page" and (
            current in _ACTING or (resolved and current == "healed")) else None
        if resolved:
            return await _state(tx, oid, keep or "resolved", now, "closed",
                                {"reason": "the alert resolved"})
        if not paged and item.attempt < PAGE_ATTEMPTS:
            # Nobody was told: try the page again later rather than give up on the human.
            delay = PAGE_BACKOFF * 2 ** (item.attempt - 1)
            steps = [s for s in plan.get("steps", []) if s.get("action") == "page"]
            await enqueue(tx, oid, item.track, "page", item.attempt + 1,
                          {**plan, "steps": steps or [page_step(str(plan.get("reason")))]},
                          now + delay)
            return await _state(tx, oid, keep or "paging", now, "page_retry",
                                {"attempt": item.attempt + 1, "in_seconds": delay})
        final = ("escalated" if item.kind == "escalate" else "paged") if paged else "page_failed"
        return await _state(tx, oid, keep or final, now, final, {"work": item.id})
    # resolve_page
    await add_step(tx, oid, "page_resolved", {"outcomes": outcomes}, now)
    return str(occ["state"])


async def _healed(tx: Tx, item: WorkItem, occ: Row, now: float, reason: str) -> str:
    await tx.execute("UPDATE work SET status = 'cancelled' WHERE occurrence_id = ? "
                     "AND status = 'pending' AND kind = 'verify'", item.occurrence_id)
    if occ["paged"]:
        await resolve_page(tx, item.occurrence_id, now)
    return await _state(tx, item.occurrence_id, "healed", now, "verified", {"reason": reason})


async def _retry_stopped(tx: Tx, policy: Policy, item: WorkItem, now: float
                         ) -> RailCheck | None:
    """The first rail a retry hits, read under the decision lock as a decision is. Every rail
    but the cooldown: the retry of the same occurrence is what max_attempts bounds, and it
    always comes within the cooldown of the run it retries."""
    rb = policy.loaded.runbook
    index = item.plan.get("rule_index")
    if not isinstance(index, int) or not 0 <= index < len(rb.respond) or \
            rule_key(rb.respond[index], index) != item.plan.get("rule"):
        return None  # the runbook changed since: the rule that queued this work is gone
    rule = rb.respond[index]
    await tx.lock_decisions()
    facts = await rail_facts(tx, policy, RuleMatch(index, rule, rule_key(rule, index)),
                             str(item.plan.get("target")), now)
    labels = json.loads(str(item.occurrence["labels"]))
    window = active_window(rb, labels, now)
    return next((c for c in check_rails(rule, rb.rails, facts, now, window)
                 if c.hit and c.rail != "cooldown"), None)


async def escalate(tx: Tx, item: WorkItem, reason: str, now: float) -> str:
    """Queue the rule's escalation steps followed by a page saying what was tried."""
    plan = item.plan
    steps = [dict(step) for step in plan.get("escalate", [])]
    severity = json.loads(str(item.occurrence.get("labels") or "{}")).get("severity")
    last = steps[-1] if steps else {}
    params = dict(last.get("params") or {})
    if last.get("action") == "page" and params.get("severity") in (None, severity):
        # The rule's escalation ends by paging the alert's own receivers: that page says why
        # too, instead of a second page telling the same human about the same incident.
        message = params.get("message")
        params["message"] = f"{message} ({reason})" if message else reason
        last["params"] = params
    else:
        steps.append(page_step(reason))
    await enqueue(tx, item.occurrence_id, item.track, "escalate", item.attempt,
                  {**plan, "steps": steps, "reason": reason}, now)
    return await _state(tx, item.occurrence_id, "escalating", now, "escalated",
                        {"reason": reason})


async def _state(tx: Tx, oid: str, state: str, now: float, step: str,
                 detail: dict[str, Any]) -> str:
    await tx.execute("UPDATE occurrences SET state = ?, updated_at = ? WHERE id = ?",
                     state, now, oid)
    await add_step(tx, oid, step, {**detail, "state": state}, now)
    return state


async def recover(tx: Tx, owner: str, now: float, everything: bool,
                  idempotent: Collection[str], running: Collection[int] = ()
                  ) -> list[dict[str, Any]]:
    """Work claimed by a process that stopped, or left by this one (`running`: the work this
    process still runs): resume it, or escalate what may have half-run."""
    rows = await tx.fetchall(
        "SELECT id, occurrence_id, track, kind, attempt, plan, next_step, in_step, claimed_by "  # noqa: S608 - only constant dialect text is inserted
        "FROM work WHERE status = 'claimed' AND (lease_until < ? OR ?)"
        f"{tx.skip_locked}", now, everything)
    done: list[dict[str, Any]] = []
    for row in rows:
        if row["claimed_by"] == owner and (everything or int(row["id"]) in running):
            continue
        plan = json.loads(row["plan"])
        steps = plan.get("steps", [])
        index = int(row["next_step"])
        action = steps[index]["action"] if row["in_step"] and index < len(steps) else None
        item = WorkItem(int(row["id"]), str(row["occurrence_id"]), int(row["track"]),
                        str(row["kind"]), int(row["attempt"]), plan, index, {})
        base = {"work": item.id, "kind": item.kind, "claimed_by": row["claimed_by"]}
        if action is None or action in idempotent:
            why = (f"{row['claimed_by']} stopped before finishing; resuming at step {index}"
                   + (f" ({action} is idempotent: run again)" if action else ""))
            await tx.execute("UPDATE work SET status = 'pending', claimed_by = NULL, in_step = 0, "
                             "lease_until = NULL WHERE id = ?", item.id)
            await add_step(tx, item.occurrence_id, "resumed", {**base, "reason": why}, now)
            done.append({**base, "result": "resumed"})
            continue
        reason = (f"{row['claimed_by']} stopped while {action} (step {index}) was running; "
                  "it may have half-run, so it is not run again")
        # Unowned, so the process that held it can no longer finish it (see complete()).
        await tx.execute("UPDATE work SET status = 'interrupted', in_step = 0, claimed_by = NULL "
                         "WHERE id = ?", item.id)
        await add_step(tx, item.occurrence_id, "interrupted", {**base, "reason": reason}, now)
        if item.kind in ("run", "verify"):
            await escalate(tx, item, reason, now)
        else:
            await enqueue(tx, item.occurrence_id, item.track, "page", 1000 + item.id,
                          {"steps": [page_step(reason)], "reason": reason}, now)
        done.append({**base, "result": "escalated"})
    return done


async def approve(tx: Tx, oid: str, approved: bool, who: str, reason: str,
                  now: float) -> tuple[str, str | None]:
    """A human's answer to an approval: ('ok'|'not_found'|'conflict', state)."""
    occ = await tx.fetchone(f"SELECT state, decision, resolved_at FROM occurrences WHERE id = ?"  # noqa: S608 - only constant dialect text is inserted
                            f"{tx.for_update}", oid)
    if occ is None:
        return "not_found", None
    state = str(occ["state"])
    # The approval belongs to the tracks that await it, not to the occurrence's state: another
    # track (an automatic run, a page) may have moved the state on meanwhile.
    waiting = [(track, d) for track, d in enumerate(json.loads(occ["decision"]))
               if d.get("outcome") == "awaiting_approval"]
    answered = await tx.fetchone("SELECT id FROM steps WHERE occurrence_id = ? "
                                 "AND kind IN ('approved', 'rejected')", oid)
    if not waiting or answered is not None or occ["resolved_at"] is not None:
        return "conflict", state
    detail = {"by": who, "reason": reason}
    if not approved:
        if state == "awaiting_approval":
            return "ok", await _state(tx, oid, "rejected", now, "rejected", detail)
        await add_step(tx, oid, "rejected", {**detail, "state": state}, now)
        return "ok", state
    for track, decision in waiting:
        await enqueue(tx, oid, track, "run", 1, decision["plan"], now)
        await record_run(tx, decision["rule"], decision["target"], oid, now)
    return "ok", await _state(tx, oid, "queued", now, "approved", detail)


async def pending(tx: Tx) -> int:
    """Work waiting or running."""
    row = await tx.fetchone("SELECT COUNT(*) AS n FROM work WHERE status IN "
                            "('pending', 'claimed')")
    return int(row["n"]) if row else 0


async def next_due(tx: Tx) -> float | None:
    """When the earliest pending work falls due."""
    row = await tx.fetchone("SELECT MIN(not_before) AS t FROM work WHERE status = 'pending'")
    return None if row is None or row["t"] is None else float(row["t"])
