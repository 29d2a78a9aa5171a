"""Read-side transactions: incidents with their audit steps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from responder.store.base import Row, Tx

ENDED = ("healed", "resolved", "rejected")


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _incident(occ: Row, steps: list[Row]) -> dict[str, Any]:
    details = [json.loads(s["detail"]) for s in steps]
    return {
        "id": occ["id"],
        "fingerprint": occ["fingerprint"],
        "startsAt": occ["starts_at"],
        "alertname": occ["alertname"],
        "labels": json.loads(occ["labels"]),
        "annotations": json.loads(occ["annotations"]),
        "generatorURL": occ["generator_url"],
        "state": occ["state"],
        "active": occ["state"] not in ENDED,
        "decision": json.loads(occ["decision"]),
        "first_seen": iso(occ["first_seen"]),
        "updated_at": iso(occ["updated_at"]),
        "resolved_at": iso(occ["resolved_at"]),
        "notifications": sum(1 for s in details if "notification" in s),
        "paged": bool(occ["paged"]),
        "steps": [{"at": iso(s["at"]), "kind": s["kind"], "detail": d}
                  for s, d in zip(steps, details, strict=True)],
    }


async def list_incidents(tx: Tx, active: bool, limit: int) -> list[dict[str, Any]]:
    """Occurrences, newest first, each with its steps."""
    where = " WHERE state NOT IN ('healed', 'resolved', 'rejected')" if active else ""
    occs = await tx.fetchall(f"SELECT * FROM occurrences{where} ORDER BY first_seen DESC, id "  # noqa: S608 - only constant dialect text is inserted
                             "LIMIT ?", limit)
    if not occs:
        return []
    marks = ", ".join("?" for _ in occs)
    steps = await tx.fetchall(f"SELECT occurrence_id, at, kind, detail FROM steps WHERE "  # noqa: S608 - only constant dialect text is inserted
                              f"occurrence_id IN ({marks}) ORDER BY id", *[o["id"] for o in occs])
    by_occ: dict[str, list[Row]] = {}
    for step in steps:
        by_occ.setdefault(str(step["occurrence_id"]), []).append(step)
    return [_incident(o, by_occ.get(str(o["id"]), [])) for o in occs]


async def get_incident(tx: Tx, oid: str) -> dict[str, Any] | None:
    """One occurrence with its steps, or None."""
    occ = await tx.fetchone("SELECT * FROM occurrences WHERE id = ?", oid)
    if occ is None:
        return None
    steps = await tx.fetchall("SELECT occurrence_id, at, kind, detail FROM steps "
                              "WHERE occurrence_id = ? ORDER BY id", oid)
    return _incident(occ, steps)
