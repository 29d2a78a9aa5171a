"""The store interface: one transaction runner per dialect, shared operations on top."""

from __future__ import annotations

import asyncio
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from responder.store.intake import IntakeJob

T = TypeVar("T")
Row = dict[str, Any]


class StoreError(Exception):
    """The store could not record or read (the database is down, the disk is full...)."""


class Tx(Protocol):
    """One open transaction; SQL is written with `?` placeholders."""

    dialect: Literal["sqlite", "postgresql"]

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        """The first row, or None."""

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        """Every row."""

    async def lock_decisions(self) -> None:
        """Serialize deciding across every writer of this store until the transaction ends."""

    @property
    def for_update(self) -> str:
        """` FOR UPDATE` where rows can be locked, else empty."""

    @property
    def skip_locked(self) -> str:
        """` FOR UPDATE SKIP LOCKED` where supported, else empty."""


def dumps(value: Any) -> str:
    """Compact JSON for the store."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


_OCCURRENCE_ID = re.compile(r"[0-9a-f]{16}")


def is_occurrence_id(text: str) -> bool:
    """Whether the text can be an occurrence id at all (what occurrence_id() gives)."""
    return _OCCURRENCE_ID.fullmatch(text) is not None


async def add_step(tx: Tx, occurrence: str, kind: str, detail: dict[str, Any],
                   now: float) -> None:
    """Append one audit step."""
    await tx.execute("INSERT INTO steps (occurrence_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                     occurrence, now, kind, dumps(detail))


async def add_steps(tx: Tx, steps: list[tuple[str, str, dict[str, Any]]], now: float) -> None:
    """Append several audit steps in one statement, in order."""
    if not steps:
        return
    values = ", ".join("(?, ?, ?, ?)" for _ in steps)
    args: list[Any] = []
    for occurrence, kind, detail in steps:
        args += [occurrence, now, kind, dumps(detail)]
    await tx.execute(f"INSERT INTO steps (occurrence_id, at, kind, detail) VALUES {values}",  # noqa: S608 - placeholders only
                     *args)


@dataclass
class AlertIntake:
    """What intake did with one alert of a notification."""

    occurrence_id: str
    status: Literal["new", "deduplicated", "resolved", "resolved-unseen", "reopened"]
    decisions: list[str] = field(default_factory=list)


@dataclass
class IntakeResult:
    """What one notification did, for the answer and the metrics."""

    notification_id: int
    alerts: list[AlertIntake] = field(default_factory=list)
    rail_hits: list[str] = field(default_factory=list)
    work_queued: int = 0
    queued_kinds: set[str] = field(default_factory=set)
    """The kinds of work queued (run, page): which of the worker's loops to wake."""

    def as_json(self) -> dict[str, Any]:
        return {"notification": self.notification_id,
                "alerts": [{"occurrence": a.occurrence_id, "status": a.status,
                            "decisions": a.decisions} for a in self.alerts]}


@dataclass
class WorkItem:
    """A claimed piece of work: run a plan's steps, verify, escalate, page, or resolve a page."""

    id: int
    occurrence_id: str
    track: int
    kind: str
    attempt: int
    plan: dict[str, Any]
    next_step: int
    occurrence: Row
    history: list[dict[str, Any]] = field(default_factory=list)
    """Outcomes of the actions already finished for this occurrence, oldest first."""
    step_started: bool = False
    """The claim already recorded the start of step `next_step`."""


class Store(ABC):
    """The responder's durable state: notifications, occurrences, audit steps, work, rails."""

    url: str
    dialect: str

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the tables."""

    def claim(self) -> None:  # noqa: B027 - optional: most stores need no claim
        """Become the store's only writer where the store needs one (SQLite: its file lock),
        raising StoreError when another process is; open() claims too. Nothing by default."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abstractmethod
    async def run(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `op` in one transaction; commit when it returns; raise StoreError on failure."""

    async def run_intake(self, job: IntakeJob) -> IntakeResult:
        """Run a webhook's intake transaction like `run`. A store may schedule it by the job's
        hints: group intakes that may decide into one commit and one decision lock, or record
        resends in bulk; what is recorded and decided is the same either way."""
        return await self.run(job)

    async def ping(self) -> None:
        """Raise StoreError when the store cannot answer."""
        await self.run(lambda tx: tx.fetchone("SELECT 1 AS one"))


# A waiting caller's future and what to answer it: a value, or the error to raise.
Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]


def settle(answers: Iterable[Answer]) -> None:
    """Answer each waiting caller with its value or its error; one that gave up is skipped."""
    for future, value, error in answers:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
