"""PostgreSQL actions: cancel/terminate long queries, end idle transactions, VACUUM, REINDEX."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from responder.actions.base import ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.targets import postgres_dsn
from runbook.actions import PgIdleInTransactionParams, PgLongQueriesParams, PgTableParams

APPLICATION_NAME = "runbook-autopilot-action"
# Sessions whose application_name starts so (this action, the responder's store) are never ended.
OWN_PREFIX = "runbook-autopilot"

# Client backends only: walsenders (replication) and background workers are never touched.
_SESSIONS = """
SELECT a.pid, a.usename, a.datname, a.state,
       extract(epoch FROM now() - {since})::float8 AS seconds, left(a.query, 200) AS query
FROM pg_stat_activity a
LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid()
  AND a.application_name NOT LIKE '{own}%'
  AND a.state = ANY($1::text[])
  AND {since} < now() - make_interval(secs => $2)
  AND ($3::text IS NULL OR a.datname = $3)
  AND ($4 OR NOT coalesce(r.rolsuper, false))
ORDER BY {since}
"""


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


@asynccontextmanager
async def connect(
    ctx: ActionContext, target: str, statement_timeout: float, lock_timeout: float
) -> AsyncIterator[asyncpg.Connection]:
    """A connection with statement_timeout and lock_timeout set, named so it is never ended."""
    conn = await asyncpg.connect(
        postgres_dsn(ctx, target),
        timeout=10.0,
        server_settings={
            "application_name": APPLICATION_NAME,
            "statement_timeout": _ms(statement_timeout),
            "lock_timeout": _ms(lock_timeout),
        },
    )
    try:
        yield conn
    finally:
        await conn.close(timeout=5.0)


def quote_ident(name: str) -> str:
    """One name as a quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    """`schema.table` as quoted identifiers (the schema allows only [A-Za-z0-9_] parts)."""
    return ".".join(quote_ident(part) for part in table.split("."))


async def _end_sessions(
    ctx: ActionContext,
    name: str,
    target: str,
    states: list[str],
    since: str,
    older: float,
    database: str | None,
    superuser: bool,
    function: str,
    statement_timeout: float,
    lock_timeout: float,
) -> Outcome:
    sql = _SESSIONS.format(since=since, own=OWN_PREFIX)
    ended: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    async with connect(ctx, target, statement_timeout, lock_timeout) as conn:
        rows = await conn.fetch(sql, states, older, database, superuser)
        for row in rows:
            session = {"pid": row["pid"], "user": row["usename"], "database": row["datname"],
                       "seconds": round(row["seconds"], 1), "query": row["query"]}
            if ctx.dry_run:
                ended.append(session)
                continue
            try:
                done = await conn.fetchval(f"SELECT {function}($1)", row["pid"])
            except asyncpg.PostgresError as exc:
                failed.append({**session, "error": str(exc)})
                continue
            (ended if done else failed).append(session)
    verb = f"would {function}" if ctx.dry_run else function
    lines = [f"{verb}({s['pid']}) {s['user']}@{s['database']} {s['seconds']}s: {s['query']}"
             for s in ended]
    lines += [f"FAILED {function}({s['pid']}): {s.get('error', 'no such backend')}" for s in failed]
    status = Status.DRY_RUN if ctx.dry_run else Status.FAILED if failed else Status.OK
    # The count comes first: long lists are cut at the output limit, the summary never is.
    summary = f"{verb}: {len(ended)} session(s) ended, {len(failed)} failed"
    text = "\n".join([summary, *lines]) if lines else \
        f"no session {states} older than {older:g}s"
    return outcome(name, status, text, ended=[s["pid"] for s in ended],
                   failed=[s["pid"] for s in failed])


async def cancel_long_queries(ctx: ActionContext, params: PgLongQueriesParams) -> Outcome:
    """pg_cancel_backend on queries running longer than longer_than."""
    return await _end_sessions(
        ctx, "pg_cancel_long_queries", params.postgres, ["active"], "a.query_start",
        params.longer_than, params.database, params.include_superuser, "pg_cancel_backend",
        params.statement_timeout, params.lock_timeout,
    )


async def terminate_long_queries(ctx: ActionContext, params: PgLongQueriesParams) -> Outcome:
    """pg_terminate_backend on sessions whose query runs longer than longer_than."""
    return await _end_sessions(
        ctx, "pg_terminate_long_queries", params.postgres, ["active"], "a.query_start",
        params.longer_than, params.database, params.include_superuser, "pg_terminate_backend",
        params.statement_timeout, params.lock_timeout,
    )


async def terminate_idle_in_transaction(
    ctx: ActionContext, params: PgIdleInTransactionParams
) -> Outcome:
    """pg_terminate_backend on sessions idle in a transaction longer than longer_than."""
    return await _end_sessions(
        ctx, "pg_terminate_idle_in_transaction", params.postgres,
        ["idle in transaction", "idle in transaction (aborted)"], "a.state_change",
        params.longer_than, params.database, params.include_superuser, "pg_terminate_backend",
        params.statement_timeout, params.lock_timeout,
    )


async def _maintain(ctx: ActionContext, name: str, params: PgTableParams, sql: str) -> Outcome:
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would run {sql}", sql=sql)
    async with connect(ctx, params.postgres, params.statement_timeout, params.lock_timeout) as conn:
        reply = await conn.execute(sql)
    return outcome(name, Status.OK, f"{sql}: {reply}", sql=sql)


async def vacuum_analyze(ctx: ActionContext, params: PgTableParams) -> Outcome:
    """VACUUM (ANALYZE) one table."""
    return await _maintain(ctx, "pg_vacuum_analyze", params,
                           f"VACUUM (ANALYZE) {quote_table(params.table)}")


# What a REINDEX CONCURRENTLY of this table (its indexes and its TOAST table's) leaves when it
# fails: the new copy `<index>_ccnew` (`_ccnew1`, ... when the name is taken; the index name cut
# to fit 63 bytes), or after the swap the old one, `<index>_ccold`; invalid either way, and a
# ccnew one is still updated on every write. Only those whose stem is another index's name on
# the same table (or begins it, for a name cut to 63 bytes): an invalid index of another origin
# is not ours to drop. One a REINDEX running right now builds is safe: that run holds its lock
# until the end, so our drop only waits for lock_timeout and fails.
_LEFTOVERS = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class t
JOIN pg_index i ON i.indrelid IN (t.oid, t.reltoastrelid)
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.oid = to_regclass($1)
  AND NOT i.indisvalid
  AND c.relname ~ '_cc(new|old)[0-9]*$'
  AND EXISTS (
    SELECT 1 FROM pg_index o JOIN pg_class oc ON oc.oid = o.indexrelid
    WHERE o.indrelid = i.indrelid AND oc.oid <> c.oid
      AND (oc.relname = regexp_replace(c.relname, '_cc(new|old)[0-9]*$', '')
           OR (octet_length(c.relname) >= 60
               AND starts_with(oc.relname, regexp_replace(c.relname, '_cc(new|old)[0-9]*$', '')))))
ORDER BY n.nspname, c.relname
"""

DROP_TIMEOUT = 10.0
"""Most seconds one leftover's DROP INDEX CONCURRENTLY may take. Dropping an invalid index is
quick unless a transaction that used the table is still open: then waiting longer does not help,
and the drops after a REINDEX that ran its whole statement_timeout must fit in run_action's
grace."""


async def _drop_leftovers(
    conn: asyncpg.Connection, table: str
) -> tuple[list[str], list[str], str]:
    """Drop the invalid indexes a failed REINDEX CONCURRENTLY of `table` left: (dropped, left,
    the error that stopped it). Stops at the first failure: the next one would wait as long."""
    rows = await conn.fetch(_LEFTOVERS, quote_table(table))
    names = [f"{quote_ident(r['schema'])}.{quote_ident(r['name'])}" for r in rows]
    for done, name in enumerate(names):
        try:
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        except asyncpg.PostgresError as exc:
            return names[:done], names[done:], f"DROP INDEX CONCURRENTLY {name}: {exc}"
    return names, [], ""


async def _set_statement_timeout(conn: asyncpg.Connection, seconds: float) -> None:
    await conn.execute(f"SET statement_timeout = {_ms(seconds)}")


async def _dropping_leftovers(
    conn: asyncpg.Connection, table: str, statement_timeout: float
) -> tuple[list[str], list[str], str]:
    """_drop_leftovers under DROP_TIMEOUT, the connection's statement_timeout restored after."""
    await _set_statement_timeout(conn, min(statement_timeout, DROP_TIMEOUT))
    try:
        return await _drop_leftovers(conn, table)
    finally:
        await _set_statement_timeout(conn, statement_timeout)


def _cleanup_lines(dropped: list[str], left: list[str], error: str, why: str) -> list[str]:
    lines = [f"dropped invalid index {name} ({why})" for name in dropped]
    if left:
        lines.append(f"could not drop {', '.join(left)} ({why}): {error}")
    return lines


async def _after_failure(
    conn: asyncpg.Connection, table: str, statement_timeout: float
) -> tuple[list[str], list[str], list[str]]:
    """Drop what the failed REINDEX left: (dropped, left, lines for the outcome)."""
    why = "left by this failed reindex"
    try:
        dropped, left, error = await _dropping_leftovers(conn, table, statement_timeout)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The connection itself may be gone (the backend was terminated): the next run drops them.
        return [], [], [f"could not look for indexes {why}: {type(exc).__name__}: {exc}"]
    return dropped, left, _cleanup_lines(dropped, left, error, why)


async def reindex(ctx: ActionContext, params: PgTableParams) -> Outcome:
    """REINDEX TABLE CONCURRENTLY one table, never leaving its failed copies behind.

    What an earlier run left (a crash or timeout mid-REINDEX) is dropped first, and what this one
    leaves when it fails right after: so a re-run adds no copy, which is what lets pg_reindex be
    in IDEMPOTENT. If an earlier run's copy cannot be dropped, the REINDEX is not started.
    """
    name = "pg_reindex"
    sql = f"REINDEX TABLE CONCURRENTLY {quote_table(params.table)}"
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would run {sql}", sql=sql)
    timeout = params.statement_timeout
    async with connect(ctx, params.postgres, timeout, params.lock_timeout) as conn:
        dropped, left, error = await _dropping_leftovers(conn, params.table, timeout)
        lines = _cleanup_lines(dropped, left, error, "left by an earlier reindex")
        if left:
            # Another copy would only add to them (or they are a REINDEX's still running).
            why = "not started: an earlier or still running REINDEX's copies remain"
            return outcome(name, Status.FAILED, "\n".join([f"{sql}: {why}", *lines]),
                           sql=sql, dropped=dropped, left=left)
        try:
            reply = await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            failure = f"{sql}: {type(exc).__name__}: {exc}"
            more, left, lines_after = await _after_failure(conn, params.table, timeout)
            return outcome(name, Status.FAILED, "\n".join([failure, *lines, *lines_after]),
                           sql=sql, dropped=dropped + more, left=left)
    return outcome(name, Status.OK, "\n".join([f"{sql}: {reply}", *lines]), sql=sql,
                   dropped=dropped)


IMPLS: dict[str, ActionFn] = {
    "pg_cancel_long_queries": cancel_long_queries,
    "pg_terminate_long_queries": terminate_long_queries,
    "pg_terminate_idle_in_transaction": terminate_idle_in_transaction,
    "pg_vacuum_analyze": vacuum_analyze,
    "pg_reindex": reindex,
}
