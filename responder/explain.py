"""`runbook explain FILE ALERT.json`: the matching rule, its mode, the rails now, the exact argv."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, ValidationError

from responder.actions.http import quote_value
from responder.actions.labels import LabelError, fill, fill_json
from responder.payload import Alert, Notification
from responder.policy import Policy, TrackDecision
from responder.rails import RailFacts, target_key
from responder.store import StoreError, open_store
from responder.store.base import Store, Tx
from responder.store.intake import rail_facts
from runbook.actions import ExecParams, HttpParams
from runbook.loader import LoadedRunbook, load_or_report
from runbook.schema import step_action

HELP = "say what the responder would do with an alert: rule, mode, rails now, exact actions"
EXAMPLES = """\
  runbook explain examples/cinder-js.yml alert.json
  runbook explain runbook.yml webhook-body.json --data-dir /var/lib/runbook-responder
  runbook explain runbook.yml alert.json --store postgresql://responder@db/responder
ALERT.json is an Alertmanager webhook body or one alert ({"labels": {...}, ...}).
"""
FRESH = RailFacts(last_run_at=None, rule_runs_in_window=0, runs_in_rate_window=0, active_runs=0)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runbook", metavar="FILE", help="the runbook file")
    parser.add_argument("alert", metavar="ALERT.json", help="a webhook body or one alert")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="read the rails' state from this store (postgresql://...)")
    parser.add_argument("--data-dir", default="data", metavar="DIR",
                        help="read the rails' state from the SQLite store here, if it exists")


def read_alerts(text: str) -> list[dict[str, str]]:
    """The label sets of a webhook body, or of one alert object, or of a bare label map."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("ALERT.json holds a JSON object")
    if "alerts" in data:
        return [dict(a.labels) for a in Notification.model_validate(data).alerts]
    if "labels" in data:
        labels = data["labels"]
        if not isinstance(labels, dict):
            raise ValueError("labels is an object of strings")
        probe = {"status": "firing", "labels": labels, "startsAt": "2026-01-01T00:00:00Z",
                 "fingerprint": "0"}
        return [dict(Alert.model_validate(probe).labels)]
    if all(isinstance(v, str) for v in data.values()):
        return [dict(data)]
    raise ValueError("ALERT.json is a webhook body, an alert with labels, or a label map")


def describe_step(name: str, params: BaseModel, labels: dict[str, str]) -> str:
    """One step as it would run: exec argv and http requests with label values filled."""
    try:
        if isinstance(params, ExecParams):
            argv = [fill(a, labels, params.label_patterns) for a in params.argv]
            return f"exec argv {json.dumps(argv)} (timeout {params.timeout:g}s, no shell)"
        if isinstance(params, HttpParams):
            url = fill(params.url, labels, params.label_patterns, quote_value)
            body = ""
            if params.json_body is not None:
                filled = fill_json(params.json_body, labels, params.label_patterns)
                body = f" body {json.dumps(filled)}"
            return f"http {params.method} {url}{body}"
    except LabelError as exc:
        return f"{name}: would FAIL before running: {exc}"
    shown = params.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return f"{name} {json.dumps(shown)}"


def _receivers(loaded: LoadedRunbook, severity: str) -> str:
    page = loaded.runbook.page
    key = severity if severity in page else "default"
    receivers = page.get(key, [])
    if not receivers:
        return f"no receiver for severity {severity!r} (and no default)"
    kinds = [name for r in receivers for name in ("pagerduty", "slack", "webhook")
             if getattr(r, name) is not None]
    return f"{', '.join(kinds)} (page.{key})"


async def _facts(store: Store | None, policy: Policy, labels: dict[str, str]
                 ) -> dict[int, RailFacts]:
    """The rails' state for each matching rule that reads it, by the rule's index."""
    matches = [m for m in policy.matches(labels) if policy.needs_facts(m)]
    if store is None or not matches:
        return {}

    async def read(tx: Tx) -> dict[int, RailFacts]:
        now = time.time()
        return {m.index: await rail_facts(tx, policy, m, target_key(labels), now)
                for m in matches}

    return await store.run(read)


def explain_alert(loaded: LoadedRunbook, labels: dict[str, str],
                  facts: Mapping[int, RailFacts], state_source: str) -> list[str]:
    """The lines `runbook explain` prints for one alert; `facts` by rule index (a rule
    missing from it reads a fresh state)."""
    policy = Policy(loaded)
    out = [f"alert {json.dumps(labels, sort_keys=True)}"]
    matches = policy.matches(labels)
    decisions: list[TrackDecision] = []
    if not matches:
        out.append("  no respond rule matches: a human is paged")
        decisions.append(policy.decide(None, labels, None, time.time()))
    queued = 0
    for match in matches:
        out.append(f"  matches {match.key} (respond[{match.index}]), mode {match.rule.mode}")
        facts_for = None
        if policy.needs_facts(match):
            # As intake does: earlier tracks that would be queued count against the global rails.
            known = facts.get(match.index, FRESH)
            facts_for = replace(known, runs_in_rate_window=known.runs_in_rate_window + queued,
                                active_runs=known.active_runs + queued)
        decision = policy.decide(match, labels, facts_for, time.time())
        queued += decision.outcome == "queued"
        decisions.append(decision)
    for decision in decisions:
        if decision.rails:
            out.append(f"  rails ({state_source}):")
            for r in decision.rails:
                out.append(f"    {'HIT ' if r.hit else 'ok  '}{r.rail}: {r.reason}")
        dry = " [dry run]" if decision.dry_run else ""
        out.append(f"  decision: {decision.outcome}{dry}: {decision.reason}")
        rule = loaded.runbook.respond[decision.rule_index] \
            if decision.rule_index is not None else None
        if decision.outcome == "paging" or rule is None:
            out.append("  would page: " + _receivers(loaded, labels.get("severity", "")))
            continue
        for i, step in enumerate(rule.do, 1):
            out.append(f"  {i}. " + describe_step(*step_action(step), labels))
        if rule.verify_after is not None:
            escalate = ", ".join(step_action(s)[0] for s in rule.escalate) or "nothing"
            out.append(f"  then verify after {rule.verify_after:g}s; if still firing, escalate "
                       f"({escalate}) and page a human with what was tried")
    return out


async def _explain(loaded: LoadedRunbook, alerts: list[dict[str, str]], store_url: str | None,
                   data_dir: str) -> list[str]:
    store: Store | None = None
    source = "no store found: fresh state"
    sqlite_file = Path(data_dir) / "responder.sqlite3"
    if store_url or sqlite_file.exists():
        # Read-only: a running responder holds the SQLite store's lock.
        store = open_store(store_url, data_dir, read_only=True)
        await store.open()
        source = "from " + ("the PostgreSQL store" if store_url else str(sqlite_file))
    try:
        lines: list[str] = []
        policy = Policy(loaded)
        for labels in alerts:
            facts = await _facts(store, policy, labels)
            lines += explain_alert(loaded, labels, facts, source)
        return lines
    finally:
        if store is not None:
            await store.close()


def run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.runbook)
    if loaded is None:
        return 1
    try:
        alerts = read_alerts(Path(args.alert).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, ValidationError) as exc:
        reason = str(exc).splitlines()[0]
        print(f"runbook explain: {args.alert}: {reason}", file=sys.stderr)
        return 2
    try:
        lines = asyncio.run(_explain(loaded, alerts, args.store, args.data_dir))
    except StoreError as exc:
        print(f"runbook explain: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


__all__ = ["describe_step", "explain_alert", "read_alerts"]
