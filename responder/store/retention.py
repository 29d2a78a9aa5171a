"""Retention: forget what is older than the retention period, except open incidents."""

from __future__ import annotations

from typing import Any

from responder.store.base import Tx
from responder.store.queries import ENDED

_ENDED = ", ".join(f"'{s}'" for s in ENDED)


NOTIFICATIONS_PER_PRUNE = 5000


async def prune(tx: Tx, before: float,
                notifications: int = NOTIFICATIONS_PER_PRUNE) -> dict[str, Any]:
    """Delete ended incidents with their steps and work, rail runs and at most `notifications`
    notification bodies, all last touched before `before`; how many of each, and `more` when
    old notifications may be left (the caller prunes again, in a new transaction)."""
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
    # Notifications have no index on received_at (every webhook would pay for one): they come
    # in id order, so the oldest are the lowest ids, read through the primary key a batch at a
    # time, never by scanning a month of them while intake waits.
    notes = await tx.execute(
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications ORDER BY id "
        "LIMIT ?) AND received_at < ?", notifications, before)
    runs = await tx.execute("DELETE FROM rail_runs WHERE at < ?", before)
    return {"occurrences": len(ids), "steps": steps, "notifications": notes, "rail_runs": runs,
            "more": notes == notifications}
