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


def quote_table(table: str) -> str:
    """`schema.table` as quoted identifiers (the schema allows only [A-Za-z0-9_] parts)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


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


async def reindex(ctx: ActionContext, params: PgTableParams) -> Outcome:
    """REINDEX TABLE CONCURRENTLY one table."""
    return await _maintain(ctx, "pg_reindex", params,
                           f"REINDEX TABLE CONCURRENTLY {quote_table(params.table)}")


IMPLS: dict[str, ActionFn] = {
    "pg_cancel_long_queries": cancel_long_queries,
    "pg_terminate_long_queries": terminate_long_queries,
    "pg_terminate_idle_in_transaction": terminate_idle_in_transaction,
    "pg_vacuum_analyze": vacuum_analyze,
    "pg_reindex": reindex,
}
