"""The embedded store: one SQLite file in WAL mode with synchronous=FULL, one writer thread.

Transactions from the event loop are queued to the writer thread, which runs a batch of them
in one database transaction (each under its own savepoint) and commits once: group commit,
so many notifications share one fsync and each is answered only after that fsync.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import json
import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

from responder.store.base import (
    Answer,
    IntakeResult,
    Row,
    Store,
    StoreError,
    T,
    Tx,
    dumps,
    settle,
)
from responder.store.intake import NOTIFICATION_COLUMNS, IntakeJob
from responder.store.schema import statements

MAX_BATCH = 256
LATER_PER_BATCH = 8
CHECKPOINT_EVERY = 1.0
log = logging.getLogger("responder.store")
_Job = tuple[asyncio.Future[Any], Callable[[Tx], Awaitable[Any]]]
_Queued = tuple[_Job, bool]


class SqliteTx:
    """A transaction on the writer thread's connection; its coroutines never suspend."""

    dialect: Literal["sqlite", "postgresql"] = "sqlite"
    for_update = ""
    skip_locked = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        return self.conn.execute(sql, args).rowcount

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = self.conn.execute(sql, args).fetchall()
        return dict(rows[0]) if rows else None

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    async def lock_decisions(self) -> None:
        """The single writer thread already serializes every transaction."""


def _drive(awaitable: Awaitable[T]) -> T:
    if not isinstance(awaitable, Coroutine):
        raise TypeError("a store operation must be a coroutine")
    coro: Coroutine[Any, Any, T] = awaitable
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite store operation awaited something outside the store")


class SqliteStore(Store):
    """State in one local SQLite file; locks in-process, so one responder per file.

    The file's lock (`<file>.lock`, held while open) refuses a second responder: its single
    writer thread is what makes decisions exactly-once, and a second process on the same file
    would decide the same occurrences again. A read-only store (`runbook explain`) takes no
    lock and writes nothing.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.read_only = read_only
        self._lock_fd: int | None = None
        self._jobs: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            if self.read_only:
                self._conn = await asyncio.to_thread(self._connect_read_only)
            else:
                self.claim()
                self._conn = await asyncio.to_thread(self._connect)
        except (OSError, sqlite3.Error) as exc:
            self._release_lock()
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._writer, name="sqlite-writer", daemon=True)
        self._thread.start()
        if self.read_only:
            return
        self._stop_checkpoints.clear()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="sqlite-checkpoint",
                                              daemon=True)
        self._checkpointer.start()

    def claim(self) -> None:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._take_lock()

    def _take_lock(self) -> int:
        """The file's lock, or StoreError when another process holds it (the kernel drops it
        when the holder dies, so a crash never leaves the store locked)."""
        # The resolved path: a symlink to the same database must meet the same lock.
        real = self.path.resolve()
        lock_path = real.with_name(real.name + ".lock")
        # Read-only is enough for flock, so a lock file left by another user (root) who may
        # read it does not lock the service out; O_NOFOLLOW: a planted symlink must not make a
        # root responder create a file elsewhere.
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{lock_path} is not a regular file")
            self._give_to_directory_owner(fd, lock_path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"another responder already uses the SQLite store {self.path} (it holds "
                f"{lock_path}): run one responder per SQLite file, or share a PostgreSQL store "
                "(--store postgresql://...) between replicas") from None
        except OSError:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _give_to_directory_owner(fd: int, directory: Path) -> None:
        # Run once as root in a service user's data dir, the lock file must stay the user's,
        # as SQLite keeps its -wal and -shm files the database owner's.
        if os.geteuid() != 0:
            return
        owner = os.stat(directory)
        if os.fstat(fd).st_uid != owner.st_uid:
            os.fchown(fd, owner.st_uid, owner.st_gid)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connect_read_only(self) -> sqlite3.Connection:
        # mode=ro: no schema, no pragma that writes; it reads a running responder's WAL too.
        uri = self.path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _checkpoints(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("SQLite checkpoint failed: %s", exc)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # Every page a commit touches goes to the WAL whole and is fsynced. An intake touches a
        # dozen pages (the occurrence, its steps, work, rails and their indexes), each with one
        # small row: 1 KiB pages write and sync a quarter of what the default 4 KiB pages do
        # (p99 at 500 new occurrences/s went from 5.3-5.8 ms to 3.7-4.2 ms here). A store
        # created before keeps its page size.
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        # Checkpoints run on their own thread (WAL lets them overlap writes), so an answer
        # never waits for the database file's fsync, only for the log's.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("BEGIN IMMEDIATE")
        for statement in statements("INTEGER PRIMARY KEY AUTOINCREMENT"):
            conn.execute(statement)
        conn.execute("COMMIT")
        return conn

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()

    async def run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        return await self._submit(op, urgent=False)

    async def run_intake(self, job: IntakeJob) -> IntakeResult:
        """Every queued intake goes into the next group, ahead of the worker's bookkeeping."""
        return await self._submit(job, urgent=True)

    async def _submit(self, op: Callable[[Tx], Awaitable[T]], urgent: bool) -> T:
        if self._loop is None or self._thread is None:
            raise StoreError("the SQLite store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(((future, op), urgent))
        return await future

    def _writer(self) -> None:
        assert self._conn is not None
        conn = self._conn
        tx = SqliteTx(conn)
        # Worker transactions wait here so that a burst of them (claims, completions) delays a
        # webhook's answer by at most LATER_PER_BATCH of them.
        later: collections.deque[_Job] = collections.deque()
        stopping = False
        while not stopping or later:
            urgent: list[_Job] = []
            if not later and not stopping:
                first = self._jobs.get()
                if first is None:
                    return
                (urgent if first[1] else later).append(first[0])
            while not stopping and len(urgent) < MAX_BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True  # run what is queued, then stop
                    break
                (urgent if more[1] else later).append(more[0])
            batch = urgent + [later.popleft() for _ in range(min(len(later), LATER_PER_BATCH))]
            if batch:
                self._run_batch(conn, tx, batch)

    def _run_batch(self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[_Job]) -> None:
        results: list[Answer] = []
        try:
            conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
            resends: list[tuple[asyncio.Future[Any], IntakeJob]] = []
            for future, op in batch:
                if isinstance(op, IntakeJob) and op.likely_resend:
                    resends.append((future, op))
                    continue
                results += _record_resends(conn, tx, resends)
                resends = []
                results.append(_run_one(conn, tx, future, op))
            results += _record_resends(conn, tx, resends)
            conn.execute("COMMIT")
        except Exception as exc:  # whatever a batch raises, the writer thread must go on
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as again:
                log.error("SQLite rollback failed: %s", again)
            lost = StoreError(f"SQLite commit failed: {exc}")
            results = [(f, None, lost) for f, _ in batch]
        assert self._loop is not None
        # One wake-up of the event loop per batch, not one per transaction.
        self._loop.call_soon_threadsafe(settle, results)


# Recorded and still open: a firing copy of a resolved occurrence reopens it (intake does).
_RECORDED = ("SELECT id FROM occurrences WHERE id IN (SELECT value FROM json_each(?)) "
             "AND resolved_at IS NULL")
# The single writer thread is the only one inserting, so it can number the rows itself.
_NEXT_NOTIFICATION = (
    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'notifications'), 0), "
    "COALESCE((SELECT MAX(id) FROM notifications), 0)) + 1")
_INSERT_NOTIFICATION = (f"INSERT INTO notifications (id, {NOTIFICATION_COLUMNS}) "  # noqa: S608 - constant text
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_STEP = "INSERT INTO steps (occurrence_id, at, kind, detail) VALUES (?, ?, ?, ?)"


def _record_resends(conn: sqlite3.Connection, tx: SqliteTx,
                    jobs: list[tuple[asyncio.Future[Any], IntakeJob]]) -> list[Answer]:
    """Record consecutive likely resends with a few statements for all of them.

    Each gets exactly the rows intake() would write for it; a job whose occurrences are not
    all recorded after all (the hint was wrong) runs intake() itself, in its turn.
    """
    if not jobs:
        return []
    ids = [oid for _, job in jobs for oid in job.alerts]
    found = {row[0] for row in conn.execute(_RECORDED, (json.dumps(ids),))}
    answers: list[Answer] = []
    run: list[tuple[asyncio.Future[Any], IntakeJob]] = []
    for future, job in jobs:
        if all(oid in found for oid in job.alerts):
            run.append((future, job))
            continue
        answers += _insert_resends(conn, tx, run)
        run = []
        answers.append(_run_one(conn, tx, future, job))
    return answers + _insert_resends(conn, tx, run)


def _insert_resends(conn: sqlite3.Connection, tx: SqliteTx,
                    jobs: list[tuple[asyncio.Future[Any], IntakeJob]]) -> list[Answer]:
    """Resends whose occurrences are all recorded: their notifications and deduplicated steps
    in two statements; if those fail, each job runs on its own (and fails on its own)."""
    if not jobs:
        return []
    conn.execute("SAVEPOINT resends")
    try:
        first = int(conn.execute(_NEXT_NOTIFICATION).fetchone()[0])
        notifications: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        answers: list[Answer] = []
        for n, (future, job) in enumerate(jobs):
            result, job_steps = job.resend(first + n)
            notifications.append((first + n, *job.notification_row()))
            steps += [(oid, job.now, kind, dumps(detail)) for oid, kind, detail in job_steps]
            answers.append((future, result, None))
        conn.executemany(_INSERT_NOTIFICATION, notifications)
        conn.executemany(_INSERT_STEP, steps)
    except Exception as exc:  # not only sqlite3.Error: a value that cannot be bound raises others
        log.warning("recording %d resends together failed (%s): recording each alone",
                    len(jobs), exc)
        conn.execute("ROLLBACK TO resends")
        conn.execute("RELEASE resends")
        return [_run_one(conn, tx, future, job) for future, job in jobs]
    conn.execute("RELEASE resends")
    return answers


def _run_one(conn: sqlite3.Connection, tx: SqliteTx, future: asyncio.Future[Any],
             op: Callable[[Tx], Awaitable[Any]]) -> Answer:
    """One transaction under its own savepoint: its failure undoes only its own writes."""
    conn.execute("SAVEPOINT op")
    try:
        value: Any = _drive(op(tx))
    except Exception as exc:  # handed to the waiting caller
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        failure: BaseException = (StoreError(str(exc))
                                  if isinstance(exc, sqlite3.Error) else exc)
        return (future, None, failure)
    conn.execute("RELEASE op")
    return (future, value, None)
