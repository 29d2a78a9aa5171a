"""The shared store: PostgreSQL through an asyncpg pool, so several replicas share state.

Intakes that may decide are grouped: one task runs every queued one in one transaction, each under
its own savepoint, and commits once. Deciding holds the decision lock until the commit, so one
commit (and one fsync) per notification would serialize the commits themselves; grouped, the lock
and the fsync are shared by every notification of the group, and each is answered only after that
commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg

from responder.store.base import Answer, IntakeResult, Row, Store, StoreError, T, Tx, settle
from responder.store.intake import IntakeJob
from responder.store.schema import statements

# Any 64-bit number both replicas agree on: the lock that serializes decisions.
DECIDE_LOCK = 7_262_531_840_112
SCHEMA_LOCK = 7_262_531_840_113
log = logging.getLogger("responder.store")
_PLACEHOLDER = re.compile(r"\?")
# InternalClientError: a pooled connection left mid-operation when the server died ("cannot
# switch to state ..."); a failure of the store like the others, never a crash of the caller.
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
             OSError, TimeoutError)
GROUP_MAX = 64
_Job = tuple[asyncio.Future[Any], Callable[["Tx"], Awaitable[Any]]]


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


class PgTx:
    """A transaction on one pooled connection."""

    dialect: Literal["sqlite", "postgresql"] = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.locked = False
        """This transaction holds the decision lock (held until it ends)."""

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self.conn.execute(_numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = await self.conn.fetchrow(_numbered(sql), *args)
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self.conn.fetch(_numbered(sql), *args)]

    async def lock_decisions(self) -> None:
        if not self.locked:
            await self.conn.execute("SELECT pg_advisory_xact_lock($1)", DECIDE_LOCK)
            self.locked = True


class PostgresStore(Store):
    """State in PostgreSQL; unique keys, ON CONFLICT and SKIP LOCKED make replicas agree."""

    dialect = "postgresql"

    def __init__(self, dsn: str, *, max_size: int = 10, timeout: float = 5.0) -> None:
        self.url = dsn
        self._dsn = dsn
        self._max = max_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._grouped: asyncio.Queue[_Job] | None = None
        self._committer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._max, command_timeout=self._timeout,
                timeout=self._timeout, server_settings=self._session_settings(),
                reset=_keep_session)
        except _FAILURES as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

        async def create(tx: Tx) -> None:
            assert isinstance(tx, PgTx)
            await tx.conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in statements("BIGSERIAL PRIMARY KEY"):
                await tx.conn.execute(statement)

        await self.run(create)
        self._grouped = asyncio.Queue()
        # Owned by the store: cancelled and awaited in close().
        self._committer = asyncio.create_task(self._commit_groups(), name="pg-group-commit")

    def _session_settings(self) -> dict[str, str]:
        """Server-side limits of this replica's sessions: a replica that freezes (a VM pause,
        SIGSTOP, a partition) inside a transaction must not hold the decision lock, and so
        every other replica's decisions, for longer than a few seconds. The client-side
        command_timeout cannot help there: the frozen client is the one that would act."""
        seconds = max(1, round(self._timeout))
        return {
            "idle_in_transaction_session_timeout": f"{2 * seconds}s",
            "lock_timeout": f"{seconds}s",
            # A partitioned client's connection is found dead in about 10 + 3 * 5 seconds.
            "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
        }

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        while self._grouped is not None and not self._grouped.empty():
            settle([(self._grouped.get_nowait()[0], None, StoreError("the store is closing"))])
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                return await op(PgTx(conn))
        except _FAILURES as exc:
            raise _failure(exc) from exc

    async def run_intake(self, job: IntakeJob) -> IntakeResult:
        if job.known:
            # Most likely a resend: no decision lock to share, so its own connection answers
            # sooner.
            return await self.run(job)
        if self._committer is None or self._grouped is None:
            raise StoreError("the PostgreSQL store is not open")
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._grouped.put_nowait((future, job))
        return await future

    async def _commit_groups(self) -> None:
        # One committer: two would take occurrence rows and the decision lock in either order.
        queue = self._grouped
        assert queue is not None
        while True:
            batch = [await queue.get()]
            while len(batch) < GROUP_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit_group(batch)
            except Exception as exc:  # the committer must outlive any one group
                log.exception("grouped commit failed")
                settle((future, None, _failure(exc)) for future, _op in batch)
            finally:
                # Cancelled in the middle of a group: answer anyway.
                settle((future, None, StoreError("the store is closing")) for future, _op in batch)

    async def _commit_group(self, batch: list[_Job]) -> None:
        """Run a group in one transaction; settle each caller only after the commit."""
        assert self._pool is not None
        results: list[Answer] = []
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                tx = PgTx(conn)
                # The decision lock first, before any job inserts an occurrence row: a job that
                # needs no rails (a page) would otherwise hold a row another replica's group
                # waits for, while a later job of this group waits for that group's lock.
                # Taken outside the savepoints, no rollback below gives it up.
                await tx.lock_decisions()
                for future, op in batch:
                    if future.done():  # the caller gave up before its turn: nothing to do
                        continue
                    # One round trip: end the previous op's savepoint and start this one's.
                    await conn.execute("RELEASE SAVEPOINT op; SAVEPOINT op" if results
                                       else "SAVEPOINT op")
                    try:
                        value = await op(tx)
                    except Exception as exc:  # handed to the waiting caller
                        await conn.execute("ROLLBACK TO SAVEPOINT op")
                        results.append((future, None,
                                        _failure(exc) if isinstance(exc, _FAILURES) else exc))
                    else:
                        results.append((future, value, None))
        except _FAILURES as exc:
            lost = _failure(exc)
            results = [(future, None, lost) for future, _op in batch]
        settle(results)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: one more round trip per transaction, for session state this store never
    leaves behind. Its locks are transaction-level (released by COMMIT or ROLLBACK), it runs no
    SET, LISTEN or cursor outside a transaction, and its session settings come from the
    connection's startup, which RESET ALL would keep anyway.
    """
    del conn


def _failure(exc: BaseException) -> StoreError:
    # A timeout says nothing of itself: name what timed out.
    said = str(exc) or ("no answer within the timeout" if isinstance(exc, TimeoutError)
                        else repr(exc))
    return StoreError(f"PostgreSQL: {type(exc).__name__}: {said}")
