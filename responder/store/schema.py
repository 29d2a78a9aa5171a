"""Tables of the responder's store; one text for SQLite and PostgreSQL ({serial} differs)."""

from __future__ import annotations

TABLES = """
CREATE TABLE IF NOT EXISTS notifications (
    id {serial},
    received_at DOUBLE PRECISION NOT NULL,
    receiver TEXT NOT NULL,
    status TEXT NOT NULL,
    group_key TEXT NOT NULL,
    alerts INTEGER NOT NULL,
    truncated_alerts INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS occurrences (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    alertname TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    generator_url TEXT NOT NULL,
    state TEXT NOT NULL,
    decision TEXT NOT NULL DEFAULT '[]',
    first_seen DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    ends_at TEXT,
    paged INTEGER NOT NULL DEFAULT 0,
    UNIQUE (fingerprint, starts_at)
);
CREATE INDEX IF NOT EXISTS occurrences_updated ON occurrences (updated_at);
CREATE TABLE IF NOT EXISTS steps (
    id {serial},
    occurrence_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_occurrence ON steps (occurrence_id, id);
CREATE TABLE IF NOT EXISTS work (
    id {serial},
    occurrence_id TEXT NOT NULL,
    track INTEGER NOT NULL,
    kind TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    not_before DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    claimed_by TEXT,
    lease_until DOUBLE PRECISION,
    next_step INTEGER NOT NULL DEFAULT 0,
    in_step INTEGER NOT NULL DEFAULT 0,
    UNIQUE (occurrence_id, track, kind, attempt)
);
CREATE INDEX IF NOT EXISTS work_due ON work (status, not_before);
-- The concurrency rail counts active runs at every decision: from this index alone, however
-- much other work (pages) is waiting.
CREATE INDEX IF NOT EXISTS work_active ON work (kind, status);
CREATE TABLE IF NOT EXISTS rail_runs (
    id {serial},
    rule_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    occurrence_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS rail_runs_target ON rail_runs (rule_key, target_key, at);
CREATE INDEX IF NOT EXISTS rail_runs_rule ON rail_runs (rule_key, at);
CREATE INDEX IF NOT EXISTS rail_runs_at ON rail_runs (at);
"""


def statements(serial: str) -> list[str]:
    """The DDL statements with the dialect's auto-increment primary key."""
    return [s.strip() for s in TABLES.format(serial=serial).split(";") if s.strip()]
