"""The shared store: PostgreSQL through an asyncpg pool, so several replicas share state."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg

from responder.store.base import Row, Store, StoreError, T, Tx
from responder.store.schema import statements

# Any 64-bit number both replicas agree on: the lock that serializes decisions.
DECIDE_LOCK = 7_262_531_840_112
SCHEMA_LOCK = 7_262_531_840_113
_PLACEHOLDER = re.compile(r"\?")
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


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
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", DECIDE_LOCK)


class PostgresStore(Store):
    """State in PostgreSQL; unique keys, ON CONFLICT and SKIP LOCKED make replicas agree."""

    dialect = "postgresql"

    def __init__(self, dsn: str, *, max_size: int = 10, timeout: float = 5.0) -> None:
        self.url = dsn
        self._dsn = dsn
        self._max = max_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._max, command_timeout=self._timeout,
                timeout=self._timeout)
        except _FAILURES as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

        async def create(tx: Tx) -> None:
            assert isinstance(tx, PgTx)
            await tx.conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in statements("BIGSERIAL PRIMARY KEY"):
                await tx.conn.execute(statement)

        await self.run(create)

    async def close(self) -> None:
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
            raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
