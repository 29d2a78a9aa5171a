"""Secrets hidden before output is cut, exec leaving a program's daemon alone, and pg_reindex
never leaving its failed index copies behind (real processes, a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from responder.actions import run_action
from responder.actions.base import (
    BLOCKING,
    OUTPUT_LIMIT,
    ActionContext,
    Status,
    head,
    hiding,
    outcome,
    scrub,
    truncate,
)
from runbook.actions import ExecParams, PageParams, PgTableParams
from tests.actions_support import book, context
from tests.servers import free_port

PY = sys.executable
SECRET = "tok_LIVE_0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _prefixes(secret: str, shortest: int = 4) -> list[str]:
    return [secret[:n] for n in range(shortest, len(secret) + 1)]


# --- secrets are hidden before the cut ------------------------------------------------------


async def test_exec_secret_straddling_the_cut_is_hidden_whole(
    session: aiohttp.ClientSession,
) -> None:
    # The secret starts 20 bytes before the limit and ends past it: cut first, its head leaked.
    before = OUTPUT_LIMIT - 20 - len("token=")
    script = (f"import os, sys; sys.stdout.write('0' * {before} + 'token=' + "
              "os.environ['API_TOKEN'] + '\\n' + 'y' * 5000)")
    env = {"PATH": os.environ["PATH"], "API_TOKEN": SECRET}
    params = ExecParams(argv=[PY, "-c", script], env=["API_TOKEN"])
    result = await run_action("exec", params, context(session, env=env))
    assert result.status is Status.OK, result.output
    assert not any(p in result.output for p in _prefixes(SECRET))
    shown = "0" * before + "token=<secret>\n"
    written = before + len("token=") + len(SECRET) + 1 + 5000
    hidden = len(SECRET) - len("<secret>")  # the note counts the output as shown, scrubbed
    assert result.output == (shown + "y" * (OUTPUT_LIMIT - len(shown))
                             + f"\n... [{written - hidden - OUTPUT_LIMIT} more bytes cut]")


def test_head_drops_a_secret_still_cut_after_scrubbing() -> None:
    # Two secrets: the first shrinks to the mark, which pulls the start of the second (beyond
    # the bytes kept) inside the limit. It cannot be replaced whole: it is dropped at the cut.
    secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    data = (secret + "----" + secret + "tail").encode()
    with hiding([secret]):
        text = head(data[:20 + len(secret)], len(data), limit=20)
    assert text == "<secret>----\n... [30 more bytes cut]"


def test_truncate_and_outcome_hide_before_cutting() -> None:
    text = "x" * 90 + SECRET + "y" * 200
    with hiding([SECRET]):
        cut = truncate(text, 100)
        made = outcome("exec", Status.OK, "z" * (OUTPUT_LIMIT - 10) + SECRET + "!" * 100)
    assert cut.startswith("x" * 90 + "<sec")
    assert "more bytes cut" in cut
    assert not any(p in cut for p in _prefixes(SECRET))
    assert not any(p in made.output for p in _prefixes(SECRET))
    assert "<secret>" in made.output
    # Short text is scrubbed too, and nothing is hidden outside a run.
    with hiding([SECRET]):
        assert truncate(f"a {SECRET} b") == "a <secret> b"
    assert truncate(f"a {SECRET} b") == f"a {SECRET} b"


def test_scrub_drops_the_start_of_a_secret_at_a_cut_note() -> None:
    # The guard's last pass, for text cut without the secrets at hand.
    text = "HTTP 401: token tok_LIVE_0123\n... [33 more bytes cut] then tok_LIVE done"
    assert scrub(text, [SECRET]) == ("HTTP 401: token \n... [46 more bytes cut] then "
                                     "tok_LIVE done")


async def test_blocking_pool_threads_see_the_running_actions_secrets() -> None:
    text = "x" * 90 + SECRET + "y" * 200
    with hiding([SECRET]):
        cut = await BLOCKING.run(truncate, text, 100)
    assert not any(p in cut for p in _prefixes(SECRET))


async def test_page_error_body_cut_at_300_bytes_hides_the_echoed_token(
    session: aiohttp.ClientSession,
) -> None:
    # notify cuts a receiver's error body to 300 bytes; the token it echoes straddles the cut.
    token = "Zq9_0123456789abcdefghijklmnopqrstuv"

    async def echo(request: web.Request) -> web.Response:
        # The token starts 10 bytes before the cut, and the body goes on well past it.
        pad = "p" * (300 - len("bad: Bearer ") - 10)
        text = f"{pad}bad: {request.headers['Authorization']} " + "q" * 200
        return web.Response(status=401, text=text)

    app = web.Application()
    app.router.add_post("/hook", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        runbook = book(f"""
        service: shop
        page:
          default: {{webhook: {{url: "http://127.0.0.1:{port}/hook", token_env: HOOK_TOKEN}}}}
        """)
        ctx = context(session, runbook, env={"HOOK_TOKEN": token})
        result = await run_action("page", PageParams(), ctx)
    finally:
        await runner.cleanup()
    assert result.status is Status.FAILED
    assert "bad: Bearer <secret> q\n... [199 more bytes cut]" in result.output
    assert "more bytes cut" in result.output
    assert not any(p in json.dumps(result.as_json()) for p in _prefixes(token))


# --- exec: the deadline is the program's, its daemons are left alone ------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _written(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _pids(path: Path) -> list[int]:
    """The pids a test program wrote (its shell's, the pgid of what it started, and its child)."""
    for _ in range(100):
        if _written(path).endswith("\n"):
            break
        await asyncio.sleep(0.02)
    return [int(p) for p in _written(path).split()]


def _end_group(pgid: int) -> None:
    # The test's own daemon: its process group is the pid of the shell that started it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


async def test_program_that_daemonizes_and_exits_0_succeeds_and_its_child_lives(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pids}; echo started worker; exit 0"
    fds = _open_fds()
    started = time.monotonic()
    result = await run_action("exec", ExecParams(argv=["sh", "-c", script], timeout=3),
                              context(session))
    elapsed = time.monotonic() - started
    group, child = await _pids(pids)
    try:
        assert result.status is Status.OK, result.output
        assert result.detail["returncode"] == 0
        assert result.output == "started worker\n"
        assert elapsed < 2.5  # the program's exit, then at most DRAIN_SECONDS for its output
        await asyncio.sleep(0.2)
        assert _alive(child), "the worker the script started was killed"
        assert _open_fds() == fds  # our end of the pipe the daemon holds is closed
    finally:
        _end_group(group)


async def test_daemon_still_writing_does_not_hold_the_run(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = (f"(while :; do echo tick; sleep 0.05; done) & echo $$ $! > {pids}; "
              "echo restarted; exit 0")
    started = time.monotonic()
    result = await run_action("exec", ExecParams(argv=["sh", "-c", script], timeout=5),
                              context(session))
    group, _ = await _pids(pids)
    _end_group(group)
    assert result.status is Status.OK, result.output
    assert time.monotonic() - started < 3
    assert result.output.startswith("restarted\n")


async def test_exit_status_of_a_daemonizing_program_is_its_own(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pids}; echo no config >&2; exit 3"
    result = await run_action("exec", ExecParams(argv=["sh", "-c", script], timeout=3),
                              context(session))
    group, child = await _pids(pids)
    try:
        assert result.status is Status.FAILED
        assert result.detail["returncode"] == 3
        assert result.output == "no config\n"
        assert _alive(child)
    finally:
        _end_group(group)


async def test_output_written_before_exit_is_read_whole_while_a_daemon_holds_the_pipe(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = (f"sleep 300 & echo $$ $! > {pids}; "
              f"{PY} -c \"import sys; sys.stdout.write('x' * 100000)\"; exit 0")
    result = await run_action("exec", ExecParams(argv=["sh", "-c", script], timeout=10),
                              context(session))
    group, _ = await _pids(pids)
    _end_group(group)
    assert result.status is Status.OK, result.output
    assert result.output == "x" * OUTPUT_LIMIT + f"\n... [{100000 - OUTPUT_LIMIT} more bytes cut]"


async def test_a_program_still_running_at_its_deadline_is_killed_with_its_group(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pids}; echo working; sleep 300"
    result = await run_action("exec", ExecParams(argv=["sh", "-c", script], timeout=1),
                              context(session))
    group, child = await _pids(pids)
    try:
        assert result.status is Status.TIMEOUT
        assert result.output == "killed after 1s timeout\nworking\n"
        for _ in range(100):
            if not _alive(child):
                break
            await asyncio.sleep(0.05)
        assert not _alive(child)
    finally:
        _end_group(group)


# --- pg_reindex drops the invalid copies a failed REINDEX CONCURRENTLY leaves ---------------

BOOK = """
service: shop
watch:
  postgres:
    - {name: main, dsn_env: DATABASE_URL}
"""

INDEXES = """
SELECT c.relname AS name, i.indisvalid AS valid
FROM pg_class t JOIN pg_index i ON i.indrelid IN (t.oid, t.reltoastrelid)
JOIN pg_class c ON c.oid = i.indexrelid
WHERE t.oid = 'orders'::regclass ORDER BY c.relname
"""


def _ctx(session: aiohttp.ClientSession, dsn: str) -> ActionContext:
    return context(session, book(BOOK), env={"PATH": os.environ["PATH"], "DATABASE_URL": dsn})


async def _orders(conn: asyncpg.Connection) -> None:
    # A text column: the table has a TOAST table, whose index is reindexed too.
    await conn.execute('CREATE TABLE orders (id int PRIMARY KEY, note text);'
                       'CREATE INDEX "Odd""Ix" ON orders (note);'
                       "INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 1000) g")


async def _invalid(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch(INDEXES) if not r["valid"]]


async def _snapshot(dsn: str, read_orders: bool) -> asyncpg.Connection:
    """A session in a REPEATABLE READ transaction holding a snapshot until it is closed:
    REINDEX CONCURRENTLY waits for it. Reading orders also keeps a lock that DROP INDEX waits for.
    """
    conn = await asyncpg.connect(dsn)
    await conn.transaction(isolation="repeatable_read").start()
    await conn.fetchval("SELECT count(*) FROM orders" if read_orders else "SELECT 1")
    return conn


async def test_failed_reindex_drops_the_copies_it_left(
    session: aiohttp.ClientSession, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    other = await _snapshot(postgres_dsn, read_orders=False)
    try:
        await _orders(conn)
        toast = await conn.fetchval("SELECT c.relname FROM pg_class c JOIN pg_class t "
                                    "ON c.oid = (SELECT indexrelid FROM pg_index WHERE indrelid "
                                    "= t.reltoastrelid) WHERE t.relname = 'orders'")
        params = PgTableParams(postgres="main", table="orders", statement_timeout=1)
        result = await run_action("pg_reindex", params, _ctx(session, postgres_dsn))
        assert result.status is Status.FAILED
        assert "statement timeout" in result.output
        assert sorted(result.detail["dropped"]) == sorted([
            '"public"."Odd""Ix_ccnew"', '"public"."orders_pkey_ccnew"',
            f'"pg_toast"."{toast}_ccnew"'])
        assert result.detail["left"] == []
        assert 'dropped invalid index "public"."orders_pkey_ccnew" (left by this failed reindex)' \
            in result.output
        assert await _invalid(conn) == []
    finally:
        await other.close()
        await conn.close()


async def test_rerun_drops_an_earlier_runs_copies_first(
    session: aiohttp.ClientSession, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await _orders(conn)
        # An earlier run cut short (the responder crashed, or its connection died mid-REINDEX).
        other = await _snapshot(postgres_dsn, read_orders=False)
        await conn.execute("SET statement_timeout = 500")
        with pytest.raises(asyncpg.QueryCanceledError):
            await conn.execute("REINDEX TABLE CONCURRENTLY orders")
        await conn.execute("RESET statement_timeout")
        await other.close()
        assert "orders_pkey_ccnew" in await _invalid(conn)
        before = await conn.fetchval("SELECT pg_relation_filenode('orders_pkey')")

        result = await run_action("pg_reindex", PgTableParams(postgres="main", table="orders"),
                                  _ctx(session, postgres_dsn))
        assert result.status is Status.OK, result.output
        assert '"public"."orders_pkey_ccnew"' in result.detail["dropped"]
        assert "(left by an earlier reindex)" in result.output
        assert await _invalid(conn) == []
        assert await conn.fetchval("SELECT pg_relation_filenode('orders_pkey')") != before
        names = [r["name"] for r in await conn.fetch(INDEXES)]
        assert not [n for n in names if "_cc" in n], names
    finally:
        await conn.close()


async def test_reruns_while_blocked_add_no_copies_and_the_next_one_cleans_up(
    session: aiohttp.ClientSession, postgres_dsn: str
) -> None:
    # The reviewer's case: a long transaction that read the table. The failed run cannot drop
    # its copies either (DROP INDEX waits for that transaction); the re-runs must not add more.
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await _orders(conn)
        other = await _snapshot(postgres_dsn, read_orders=True)
        params = PgTableParams(postgres="main", table="orders", statement_timeout=1)
        ctx = _ctx(session, postgres_dsn)
        first = await run_action("pg_reindex", params, ctx)
        assert first.status is Status.FAILED
        assert first.detail["left"], first.output
        assert "could not drop" in first.output
        copies = await _invalid(conn)
        for _ in range(2):
            again = await run_action("pg_reindex", params, ctx)
            assert again.status is Status.FAILED
            assert "not started" in again.output
            assert await _invalid(conn) == copies
        await other.close()

        result = await run_action("pg_reindex", params, ctx)
        assert result.status is Status.OK, result.output
        assert sorted(result.detail["dropped"])
        assert await _invalid(conn) == []
    finally:
        await conn.close()


async def test_invalid_indexes_of_another_origin_are_left_alone(
    session: aiohttp.ClientSession, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await _orders(conn)
        # Failed CREATE UNIQUE INDEX CONCURRENTLY (duplicates): invalid, but not a REINDEX copy,
        # even when named like one without the index it would be a copy of.
        for name in ("orders_note_uniq", "orders_note_ccnew"):
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON orders (note)")
        result = await run_action("pg_reindex", PgTableParams(postgres="main", table="orders"),
                                  _ctx(session, postgres_dsn))
        assert result.status is Status.OK, result.output
        assert result.detail["dropped"] == []
        assert await _invalid(conn) == ["orders_note_ccnew", "orders_note_uniq"]
    finally:
        await conn.close()


async def test_copies_of_a_reindex_still_running_are_not_touched(
    session: aiohttp.ClientSession, postgres_dsn: str
) -> None:
    # A DBA's REINDEX CONCURRENTLY waiting for a snapshot: its copies are invalid while it
    # builds them, but it holds its lock to the end, so the drop fails and nothing starts.
    conn = await asyncpg.connect(postgres_dsn)
    dba = await asyncpg.connect(postgres_dsn)
    other = await _snapshot(postgres_dsn, read_orders=False)
    try:
        await _orders(conn)
        running = asyncio.ensure_future(dba.execute("REINDEX TABLE CONCURRENTLY orders"))
        for _ in range(100):
            if "orders_pkey_ccnew" in await _invalid(conn):
                break
            await asyncio.sleep(0.05)
        params = PgTableParams(postgres="main", table="orders", lock_timeout=0.5)
        result = await run_action("pg_reindex", params, _ctx(session, postgres_dsn))
        assert result.status is Status.FAILED
        assert "not started" in result.output
        assert "lock timeout" in result.output
        assert result.detail["dropped"] == []
        await other.close()
        assert await running == "REINDEX"
        assert await _invalid(conn) == []
    finally:
        await other.close()
        await dba.close()
        await conn.close()
