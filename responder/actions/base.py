"""What every remediation action is: an async function of (context, typed params) -> Outcome."""

from __future__ import annotations

import asyncio
import codecs
import contextvars
import enum
import functools
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AnyStr, ParamSpec, TypeVar

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


SCRUBBED = "<secret>"
"""What a secret value is replaced with in outcomes."""

# The secrets of the action running in this task (set by run_action's guard). A context variable
# because every family builds its output with outcome() or truncate(), which must hide them before
# cutting: a secret straddling the cut is no longer a whole match for the guard's scrub afterwards.
_HIDDEN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("hidden", default=())

_CUT_NOTE = "\n... [{} more bytes cut]"
_CUT_MARK = re.compile(re.escape(_CUT_NOTE).replace(r"\{\}", r"(\d+)"))


@contextmanager
def hiding(values: Iterable[str]) -> Iterator[None]:
    """Within the block, head(), truncate() and outcome() hide these values (longest first)."""
    token = _HIDDEN.set(tuple(sorted(set(values), key=len, reverse=True)))
    try:
        yield
    finally:
        _HIDDEN.reset(token)


def secret_margin() -> int:
    """Bytes a reader keeps past the output limit: enough for a secret starting just before it."""
    return max((len(s.encode("utf-8", "replace")) for s in _HIDDEN.get()), default=0)


def _unfinished(text: AnyStr, hidden: Iterable[AnyStr]) -> int:
    """How long the end of `text` is that begins a secret (whose rest was cut off)."""
    longest = 0
    for secret in hidden:
        for size in range(min(len(secret), len(text)), longest, -1):
            if text.endswith(secret[:size]):
                longest = size
                break
    return longest


def _replaced(text: AnyStr, hidden: Sequence[AnyStr], mark: AnyStr) -> AnyStr:
    for secret in hidden:  # longest first: a URL goes whole before the password inside it
        text = text.replace(secret, mark)
    return text


def scrub(text: str, hidden: Sequence[str]) -> str:
    """`text` with every secret replaced, and the start of one cut off at a cut note dropped
    (even a single character: the text is cut there anyway)."""
    hidden = sorted(hidden, key=len, reverse=True)
    text = _replaced(text, hidden, SCRUBBED)
    parts: list[str] = []
    start = 0
    for note in _CUT_MARK.finditer(text):
        kept = text[start:note.start()]
        unfinished = _unfinished(kept, hidden)
        dropped = len(kept[len(kept) - unfinished:].encode("utf-8", "replace"))
        parts += [kept[:len(kept) - unfinished], _CUT_NOTE.format(int(note[1]) + dropped)]
        start = note.end()
    return "".join([*parts, text[start:]])


def head(data: bytes, total: int, limit: int = OUTPUT_LIMIT) -> str:
    """The first `limit` bytes of an output `total` bytes long, saying how much was cut.

    For output read from a stream: the reader keeps only the head but counts every byte, so the
    count is of everything the program wrote, not of what was kept. Secrets (see `hiding`) are
    replaced before the cut, so `data` should hold `limit + secret_margin()` bytes when there
    are that many: a secret straddling the limit is then whole when it is replaced. What is left
    of one the window still cuts is dropped at the cut, never shown.
    """
    hidden = [s.encode("utf-8", "replace") for s in _HIDDEN.get()]
    window = data[:limit + secret_margin()]
    scrubbed = _replaced(window, hidden, SCRUBBED.encode())
    kept = scrubbed[:limit]
    unseen = total - len(window)
    if unseen > 0 or len(scrubbed) > limit:
        kept = kept[:len(kept) - _unfinished(kept, hidden)]
    cut = unseen + len(scrubbed) - len(kept)
    # Not final when cut: a character split at the limit is held back instead of showing as a
    # mark; invalid bytes elsewhere (a program's binary output) still show as replacement marks.
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(kept, final=cut <= 0)
    return text + _CUT_NOTE.format(cut) if cut > 0 else text


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the head of long output and say how much was cut (secrets hidden first)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return _replaced(text, _HIDDEN.get(), SCRUBBED)
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
    """An outcome whose duration `run_action` fills in (its output cut, secrets hidden first)."""
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
        # In this task's context, as asyncio.to_thread does: output cut in the thread then hides
        # the running action's secrets too (see `hiding`).
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._counted, call)


BLOCKING = BlockingPool()
"""The pool every action runs its blocking calls on."""
