"""What every remediation action is: an async function of (context, typed params) -> Outcome."""

from __future__ import annotations

import asyncio
import codecs
import enum
import functools
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import aiohttp

from runbook.loader import LoadedRunbook

OUTPUT_LIMIT = 4096
"""Bytes of an action's output kept in its outcome and the audit trail."""


class Status(enum.Enum):
    """How an action ended."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    DRY_RUN = "dry_run"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class AlertView:
    """The alert an action works on, as Alertmanager sent it (all values untrusted)."""

    fingerprint: str
    starts_at: datetime
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: str = "firing"
    generator_url: str = ""


@dataclass(frozen=True)
class Outcome:
    """The typed result of one action run."""

    action: str
    status: Status
    duration_seconds: float
    output: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.DRY_RUN)

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "status": self.status.value,
            "duration_seconds": round(self.duration_seconds, 6),
            "output": self.output,
            "detail": dict(self.detail),
        }


def head(data: bytes, total: int, limit: int = OUTPUT_LIMIT) -> str:
    """The first `limit` bytes of an output `total` bytes long, saying how much was cut.

    For output read from a stream: the reader keeps only the head but counts every byte, so the
    count is of everything the program wrote, not of what was kept.
    """
    kept = data[:limit]
    cut = total - len(kept)
    # Not final when cut: a character split at the limit is held back instead of showing as a
    # mark; invalid bytes elsewhere (a program's binary output) still show as replacement marks.
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(kept, final=cut <= 0)
    return f"{text}\n... [{cut} more bytes cut]" if cut > 0 else text


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the head of long output and say how much was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return head(data, len(data), limit)


@dataclass
class ActionContext:
    """Everything an action may use; dependencies are passed in, never global."""

    alert: AlertView
    occurrence_id: str
    runbook: LoadedRunbook
    session: aiohttp.ClientSession
    env: Mapping[str, str]
    dry_run: bool = False
    history: list[Outcome] = field(default_factory=list)
    """Outcomes of the steps run before this one for the same occurrence (for pages)."""
    incident_url: str = ""


_P = ParamSpec("_P")
_T = TypeVar("_T")

ActionFn = Callable[[ActionContext, Any], Awaitable[Outcome]]
"""An action implementation: `async def act(ctx, params: TheirParams) -> Outcome`."""


def outcome(action: str, status: Status, output: str = "", **detail: Any) -> Outcome:
    """An outcome whose duration `run_action` fills in."""
    return Outcome(action, status, 0.0, truncate(output), detail)


BLOCKING_THREADS = 8
"""Threads for the actions' blocking library calls (Celery, RQ, the file system)."""


class BlockingPool:
    """The actions' own threads for blocking library calls, never the loop's default executor.

    asyncio's timeout cannot stop a thread: a call stuck on a dead broker keeps its thread until
    its socket times out. On the default executor a few such calls would also starve everything
    else sharing it, aiohttp's ThreadedResolver among them, and every page to a hostname would
    fail. Here they can only delay other blocking actions, which run_action's timeout bounds
    (a queued call that has not started is cancelled with its action).
    """

    def __init__(self, threads: int = BLOCKING_THREADS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="rbap-action")
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Calls running in a thread right now (stuck ones included)."""
        with self._lock:
            return self._busy

    def _counted(self, call: Callable[[], _T]) -> _T:
        with self._lock:
            self._busy += 1
        try:
            return call()
        finally:
            with self._lock:
                self._busy -= 1

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run `fn(*args, **kwargs)` in one of the pool's threads."""
        call = functools.partial(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._counted, call)


BLOCKING = BlockingPool()
"""The pool every action runs its blocking calls on."""
