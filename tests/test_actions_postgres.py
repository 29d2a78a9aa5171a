"""PostgreSQL actions on a real server: long pg_sleep queries, idle transactions, maintenance."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from responder.actions import run_action
from responder.actions.base import ActionContext, Status
from runbook.actions import PgIdleInTransactionParams, PgLongQueriesParams, PgTableParams
from tests.actions_support import book, context

TERMINATED = (asyncpg.exceptions.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)
BOOK = """
service: shop
watch:
  postgres:
    - {name: main, dsn_env: DATABASE_URL}
"""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def app_dsn(postgres_dsn: str) -> AsyncIterator[str]:
    """The DSN of an ordinary (non-superuser) role on the test database."""
    role = f"app_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        yield postgres_dsn.replace("postgres@", f"{role}@", 1)
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def _ctx(session: aiohttp.ClientSession, dsn: str, dry_run: bool = False) -> ActionContext:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": dsn}
    return context(session, book(BOOK), env=env, dry_run=dry_run)


async def _sleeping(
    dsn: str, app_name: str = "shop-web"
) -> tuple[asyncpg.Connection, asyncio.Task[object], int]:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": app_name})
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
    return conn, task, int(pid)


async def _settle(dsn: str, pids: list[int], seconds: float = 0.6) -> None:
    """Wait until each pid shows its query running for `seconds`."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            running = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND state = 'active'"
                " AND query_start < now() - make_interval(secs => $2)", pids, seconds)
            if running == len(pids):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"sessions {pids} never ran {seconds}s")
    finally:
        await conn.close()


async def test_terminate_long_queries_spares_superusers_and_own(
    session: aiohttp.ClientSession, postgres_dsn: str, app_dsn: str
) -> None:
    app_conn, app_task, app_pid = await _sleeping(app_dsn)
    su_conn, su_task, su_pid = await _sleeping(postgres_dsn)
    own_conn, own_task, own_pid = await _sleeping(postgres_dsn, "runbook-autopilot-store")
    try:
        await _settle(postgres_dsn, [app_pid, su_pid, own_pid])
        params = PgLongQueriesParams(postgres="main", longer_than="500ms")
        result = await run_action("pg_terminate_long_queries", params,
                                  _ctx(session, postgres_dsn))
        assert result.status is Status.OK, result.output
        assert result.detail["ended"] == [app_pid]
        with pytest.raises(TERMINATED):
            await app_task
        assert not su_task.done()
        assert not own_task.done()

        # Superuser sessions only when allowed; the responder's own never.
        allowed = PgLongQueriesParams(postgres="main", longer_than="500ms", include_superuser=True)
        result = await run_action("pg_terminate_long_queries", allowed,
                                  _ctx(session, postgres_dsn))
        assert result.detail["ended"] == [su_pid]
        with pytest.raises(TERMINATED):
            await su_task
        assert not own_task.done()
    finally:
        for conn in (app_conn, su_conn, own_conn):
            conn.terminate()
        for task in (app_task, su_task, own_task):
            task.cancel()
        await asyncio.gather(app_task, su_task, own_task, return_exceptions=True)


async def test_cancel_keeps_the_session(
    session: aiohttp.ClientSession, postgres_dsn: str, app_dsn: str
) -> None:
    conn, task, pid = await _sleeping(app_dsn)
    try:
        await _settle(postgres_dsn, [pid])
        params = PgLongQueriesParams(postgres="main", longer_than="500ms")
        result = await run_action("pg_cancel_long_queries", params, _ctx(session, postgres_dsn))
        assert result.status is Status.OK, result.output
        assert result.detail["ended"] == [pid]
        assert "pg_sleep(30)" in result.output
        with pytest.raises(asyncpg.exceptions.QueryCanceledError):
            await task
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_short_queries_and_other_databases_are_left(
    session: aiohttp.ClientSession, postgres_dsn: str, app_dsn: str
) -> None:
    conn, task, pid = await _sleeping(app_dsn)
    try:
        await _settle(postgres_dsn, [pid])
        ctx = _ctx(session, postgres_dsn)
        longer = PgLongQueriesParams(postgres="main", longer_than="1h")
        other_db = PgLongQueriesParams(postgres="main", longer_than="500ms", database="elsewhere")
        for params in (longer, other_db):
            result = await run_action("pg_terminate_long_queries", params, ctx)
            assert result.status is Status.OK
            assert result.detail["ended"] == []
        assert not task.done()
    finally:
        conn.terminate()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_idle_in_transaction_is_ended(
    session: aiohttp.ClientSession, postgres_dsn: str, app_dsn: str
) -> None:
    idle = await asyncpg.connect(app_dsn)
    busy = await asyncpg.connect(app_dsn)
    try:
        idle_pid = await idle.fetchval("SELECT pg_backend_pid()")
        await idle.execute("BEGIN; SELECT 1")
        await busy.execute("BEGIN; SELECT 1")
        await asyncio.sleep(0.8)
        await busy.execute("SELECT 2")  # recent activity: not idle long enough
        params = PgIdleInTransactionParams(postgres="main", longer_than="500ms")
        result = await run_action("pg_terminate_idle_in_transaction", params,
                                  _ctx(session, postgres_dsn))
        assert result.status is Status.OK, result.output
        assert result.detail["ended"] == [idle_pid]
        assert not await busy.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", idle_pid)
        assert await busy.fetchval("SELECT 3") == 3
    finally:
        idle.terminate()
        await busy.close()


async def test_vacuum_analyze_and_reindex(
    session: aiohttp.ClientSession, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE jobs (id int PRIMARY KEY, body text);"
                           "INSERT INTO jobs SELECT g, 'x' FROM generate_series(1, 2000) g;"
                           "DELETE FROM jobs WHERE id % 2 = 0")
        ctx = _ctx(session, postgres_dsn)
        params = PgTableParams(postgres="main", table="public.jobs")
        result = await run_action("pg_vacuum_analyze", params, ctx)
        assert result.status is Status.OK, result.output
        assert result.detail["sql"] == 'VACUUM (ANALYZE) "public"."jobs"'
        stats = await conn.fetchrow("SELECT last_vacuum, last_analyze FROM pg_stat_user_tables "
                                    "WHERE relname = 'jobs'")
        assert stats["last_vacuum"] is not None
        assert stats["last_analyze"] is not None

        before = await conn.fetchval("SELECT pg_relation_filenode('jobs_pkey')")
        result = await run_action("pg_reindex", PgTableParams(postgres="main", table="jobs"), ctx)
        assert result.status is Status.OK, result.output
        assert await conn.fetchval("SELECT pg_relation_filenode('jobs_pkey')") != before
    finally:
        await conn.close()


async def test_lock_timeout_applies(session: aiohttp.ClientSession, postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE hot (id int)")
        await conn.execute("BEGIN; LOCK TABLE hot IN ACCESS EXCLUSIVE MODE")
        params = PgTableParams(postgres="main", table="hot", lock_timeout="300ms")
        result = await run_action("pg_vacuum_analyze", params, _ctx(session, postgres_dsn))
        assert result.status is Status.FAILED
        assert "lock timeout" in result.output
        assert result.duration_seconds < 5
    finally:
        await conn.close()


async def test_dry_run_ends_nothing(
    session: aiohttp.ClientSession, postgres_dsn: str, app_dsn: str
) -> None:
    conn, task, pid = await _sleeping(app_dsn)
    try:
        await _settle(postgres_dsn, [pid])
        params = PgLongQueriesParams(postgres="main", longer_than="500ms")
        result = await run_action("pg_terminate_long_queries", params,
                                  _ctx(session, postgres_dsn, dry_run=True))
        assert result.status is Status.DRY_RUN
        assert result.detail["ended"] == [pid]
        assert f"would pg_terminate_backend({pid})" in result.output
        assert not task.done()
    finally:
        conn.terminate()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unset_dsn_env(session: aiohttp.ClientSession) -> None:
    ctx = context(session, book(BOOK), env={})
    params = PgTableParams(postgres="main", table="jobs")
    result = await run_action("pg_vacuum_analyze", params, ctx)
    assert result.status is Status.FAILED
    assert "env var DATABASE_URL is not set" in result.output
