"""Retention: forget what is older than the retention period, except open incidents."""

from __future__ import annotations

from typing import Any

from responder.store.base import Tx
from responder.store.queries import ENDED

_ENDED = ", ".join(f"'{s}'" for s in ENDED)


async def prune(tx: Tx, before: float) -> dict[str, Any]:
    """Delete notification bodies, ended incidents with their steps, finished work and rail
    runs last touched before `before`; how many of each."""
    gone = await tx.fetchall(
        f"DELETE FROM occurrences WHERE state IN ({_ENDED}) AND updated_at < ? RETURNING id",  # noqa: S608 - constant state names
        before)
    ids = [str(r["id"]) for r in gone]
    steps = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" for _ in chunk)
        steps += await tx.execute(f"DELETE FROM steps WHERE occurrence_id IN ({marks})",  # noqa: S608 - placeholders only
                                  *chunk)
        await tx.execute(f"DELETE FROM work WHERE occurrence_id IN ({marks})", *chunk)  # noqa: S608 - placeholders only
    notes = await tx.execute("DELETE FROM notifications WHERE received_at < ?", before)
    runs = await tx.execute("DELETE FROM rail_runs WHERE at < ?", before)
    return {"occurrences": len(ids), "steps": steps, "notifications": notes, "rail_runs": runs}
