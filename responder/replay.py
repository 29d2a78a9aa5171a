"""`runbook replay FILE.jsonl --runbook RUNBOOK`: what the responder would have decided.

Each line is one webhook body as Alertmanager sent it, or {"received_at": ..., "body": {...}}.
The bodies go through the real intake, matching and rails (on a throw-away SQLite store,
with the clock set to each notification's time); nothing is run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from responder.payload import Notification, parse_time
from responder.policy import Policy
from responder.store.base import IntakeResult, Tx
from responder.store.intake import intake
from responder.store.queries import get_incident
from responder.store.sqlite import SqliteStore
from runbook.loader import LoadedRunbook, load_or_report

HELP = "run recorded webhook bodies through matching and rails (dry run) and say what would happen"
EXAMPLES = "  runbook replay last-week.jsonl --runbook runbook.yml\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="one webhook body per line")
    parser.add_argument("--runbook", required=True, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="one JSON decision per line")


# Unix seconds a replayed notification may carry: from 1970 to the year 9999.
_LATEST = 253402300799.0


def _when(line: dict[str, Any], note: Notification) -> float:
    """When the notification was received; ValueError for a time no clock can hold."""
    given = line.get("received_at")
    if isinstance(given, bool) or (given is not None and not isinstance(given, int | float | str)):
        raise ValueError(f"received_at: {given!r} is neither unix seconds nor RFC 3339")
    if isinstance(given, int | float):
        if not 0.0 <= float(given) <= _LATEST:  # NaN fails both comparisons
            raise ValueError(f"received_at: {given!r} is not a time (unix seconds, 1970-9999)")
        return float(given)
    if isinstance(given, str):
        return parse_time(given).timestamp()
    times = [a.started for a in note.alerts] + [a.ended for a in note.alerts if a.ended]
    return max(t.timestamp() for t in times)


def _parse(number: int, text: str) -> tuple[Notification, float] | str:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"not JSON: {exc}"
    if not isinstance(data, dict):
        return "a line is a JSON object (a webhook body)"
    line = data
    payload = data.get("body", data) if "body" in data else data
    try:
        note = Notification.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"not an Alertmanager webhook: {where}: {first['msg']}"
    del number
    try:
        return note, _when(line, note)
    except (ValueError, OverflowError) as exc:
        return str(exc)


async def _finish_queued(tx: Tx) -> None:
    await tx.execute("UPDATE work SET status = 'done' WHERE status IN ('pending', 'claimed')")


async def replay(loaded: LoadedRunbook, lines: list[str], source: str
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Decisions for every alert of every line, and the errors of unreadable lines."""
    policy = Policy(loaded)
    decisions: list[dict[str, Any]] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="runbook-replay-") as tmp:
        store = SqliteStore(Path(tmp) / "replay.sqlite3")
        await store.open()
        try:
            for number, text in enumerate(lines, 1):
                if not text.strip():
                    continue
                parsed = _parse(number, text)
                if isinstance(parsed, str):
                    errors.append(f"{source}:{number}: {parsed}")
                    continue
                note, now = parsed
                result: IntakeResult = await store.run(functools.partial(
                    intake, note=note, body="{}", policy=policy, now=now))
                # Nothing runs here, yet what was queued must not stay "running" for ever
                # and fill the concurrency rail: replay takes each remediation as finished
                # before the next recorded notification.
                await store.run(_finish_queued)
                for alert in result.alerts:
                    occ = await store.run(functools.partial(get_incident,
                                                            oid=alert.occurrence_id))
                    assert occ is not None
                    decisions.append({"line": number, "at": now, "occurrence": occ["id"],
                                      "alertname": occ["alertname"], "labels": occ["labels"],
                                      "intake": alert.status,
                                      "decision": occ["decision"] if alert.status == "new"
                                      else []})
        finally:
            await store.close()
    return decisions, errors


def _describe(item: dict[str, Any]) -> str:
    head = f"line {item['line']}: {item['alertname']} {item['occurrence']}"
    if item["intake"] != "new":
        return f"{head}: {item['intake']} (no new decision)"
    parts = []
    for d in item["decision"]:
        dry = " [dry run]" if d.get("dry_run") else ""
        parts.append(f"{d['outcome']} by {d['rule']}{dry}: {d['reason']}")
    return f"{head}: " + "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.runbook)
    if loaded is None:
        return 1
    try:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"runbook replay: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    decisions, errors = asyncio.run(replay(loaded, lines, args.file))
    for problem in errors:
        print(problem, file=sys.stderr)
    outcomes: Counter[str] = Counter()
    for item in decisions:
        for d in item["decision"]:
            outcomes[d["outcome"]] += 1
        if item["intake"] != "new":
            outcomes[item["intake"]] += 1
        print(json.dumps(item) if args.json else _describe(item))
    if not args.json:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "nothing"
        print(f"{len(decisions)} alerts: {summary}; nothing was run")
    return 1 if errors else 0
