"""BullMQ, Celery and RQ queues on one Redis: read-only, O(1) per queue, pipelined."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.core import Metric
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from exporter.collectors.base import Collector, RenderMemo, Row, RowFamily, gauge
from exporter.collectors.queue_script import BULLMQ_COLUMNS, RQ_COLUMNS, SCRIPT, decode, script_args

# BullMQ lists (LLEN) and sorted sets (ZCARD) per queue; wait+paused+prioritized are waiting.
BULLMQ_LISTS = ("wait", "paused", "active")
BULLMQ_ZSETS = ("prioritized", "delayed", "waiting-children", "completed", "failed")
BULLMQ_WAITING = ("wait", "paused", "prioritized")
# kombu's Redis transport: priority lists are `<queue><sep><step>` for steps 3, 6, 9.
CELERY_SEP = "\x06\x16"
CELERY_PRIORITY_SUFFIXES = ("", *(f"{CELERY_SEP}{step}" for step in (3, 6, 9)))
CELERY_BINDING_PREFIX = "_kombu.binding."
CELERY_INTERNAL_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")
# RQ registries (sorted sets) per queue, by the state they hold.
RQ_REGISTRIES = {"started": "rq:wip:", "failed": "rq:failed:", "deferred": "rq:deferred:",
                 "scheduled": "rq:scheduled:", "finished": "rq:finished:",
                 "canceled": "rq:canceled:"}
# Up to this many keys in the database per BullMQ queue of one script call, the script lists it
# once instead of probing each queue (cheaper where most named queues hold nothing).
KEYSPACE_SCAN_FACTOR = 4
# BullMQ 5 scores a prioritized job priority * 2^32 + an arrival counter.
PRIORITY_STEP = 2.0 ** 32
_BULLMQ_EMPTY = dict.fromkeys(BULLMQ_COLUMNS, 0.0)
_RQ_EMPTY = dict.fromkeys(RQ_COLUMNS, 0.0)

log = logging.getLogger("exporter.queues")


@dataclass
class QueueReading:
    """One queue's numbers from one scrape."""

    kind: str
    queue: str
    depth: float = 0.0
    jobs: dict[str, float] = field(default_factory=dict)
    paused: float | None = None
    oldest_age: float | None = None
    workers: float | None = None
    # Pipelined reads only, between round trips: the jobs whose timestamps may be the oldest,
    # and the score where a BullMQ queue's lowest priority begins (None: one priority in use).
    oldest_jobs: tuple[str, ...] = field(default=(), compare=False)
    lowest_level: float | None = field(default=None, compare=False)
    # RQ, pipelined reads only: the members of rq:workers:<queue>, counted once their
    # rq:worker:<name> hashes are checked (see _rq_live_workers).
    worker_keys: tuple[str, ...] = field(default=(), compare=False)


@dataclass
class _ScanCycle:
    """One pattern's SCAN across discovery rounds. A round stops after scan_max_calls, so a
    large keyspace takes several: each resumes at the cursor where the last stopped (starting
    at 0 every round would read the same first keys each time and never the rest)."""

    cursor: int = 0
    found: set[str] = field(default_factory=set)
    """Keys of the cycle in progress."""
    complete: set[str] | None = None
    """Keys of the last full cycle (None: none finished yet)."""


class QueuesCollector(Collector):
    """Depth, jobs by state, paused, oldest job age and workers of every queue on one Redis."""

    kind = "queues"

    def __init__(self, target: str, timeout: float, *, client: Redis,
                 bullmq: Sequence[str] = (), bullmq_prefix: str = "bull",
                 celery: Sequence[str] = (), rq: Sequence[str] = (), discover: bool = False,
                 discover_interval: float = 60.0, scan_count: int = 1000,
                 scan_max_calls: int = 100, use_script: bool = True,
                 chunk: int = 200, keyspace_scan_factor: int = KEYSPACE_SCAN_FACTOR) -> None:
        super().__init__(target, timeout)
        self.client = client
        self.prefix = bullmq_prefix
        self.configured = {"bullmq": list(bullmq), "celery": list(celery), "rq": list(rq)}
        self.discover = discover
        self.discover_interval = discover_interval
        self.scan_count = scan_count
        self.scan_max_calls = scan_max_calls
        self.discovered: dict[str, list[str]] = {"bullmq": [], "celery": [], "rq": []}
        self._discovered_at: float | None = None
        self._scans: dict[str, _ScanCycle] = {}
        self.discovery_error: str | None = None
        """Why the last discovery round could not ask a source (e.g. an ACL refusing SCAN)."""
        self.workers_refused: str | None = None
        """Why CLIENT LIST was refused at the last scrape (ACL, renamed), if it was."""
        self.unacked: float | None = None
        self.use_script = use_script
        self.chunk = chunk
        self.keyspace_scan_factor = keyspace_scan_factor
        self._memo: dict[str, RenderMemo] = {}
        self._series: dict[tuple[str, str], _QueueSeries] = {}
        self._memo_names: list[tuple[str, str]] | None = None

    @property
    def discovery_complete(self) -> bool:
        """Whether every discovery SCAN finished a full cycle: until then, queues whose keys
        the cycle has not reached yet are missing."""
        return bool(self._scans) and all(c.complete is not None for c in self._scans.values())

    def detail(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.discover:
            out["discovery_complete"] = self.discovery_complete
        if self.discovery_error is not None:
            out["discovery_error"] = self.discovery_error
        if self.workers_refused is not None:
            out["workers"] = f"left out: CLIENT LIST refused ({self.workers_refused})"
        return out

    def queues(self, kind: str) -> list[str]:
        """Configured queues of this kind, then discovered ones, each once."""
        return list(dict.fromkeys([*self.configured[kind], *self.discovered[kind]]))

    async def collect(self) -> list[Metric]:
        if self.discover and (self._discovered_at is None
                              or time.monotonic() - self._discovered_at > self.discover_interval):
            self.discovered = await self.discover_queues()
            self._discovered_at = time.monotonic()
        readings = await self.read()
        return self.families(readings)

    # ------------------------------------------------------------ discovery

    async def discover_queues(self) -> dict[str, list[str]]:
        """Queues the libraries registered: rq:queues, kombu bindings, BullMQ meta keys (those
        the SCAN cycles in progress found so far, and those of the last full cycles).

        A source the server refuses (an ACL without SCAN, a renamed command) keeps what it
        found before and is reported (log, /health/detail): failing the whole scrape would
        lose the configured queues too. Other errors (Redis down) are the scrape's failure."""
        sources: dict[str, Callable[[], Awaitable[list[str]]]] = {
            "rq": self._discover_rq, "bullmq": self._discover_bullmq,
            "celery": self._discover_celery}
        found = dict(self.discovered)
        errors = []
        for kind, source in sources.items():
            try:
                found[kind] = await source()
            except ResponseError as exc:
                errors.append(f"{kind}: {exc}")
        error = "; ".join(errors) or None
        if error is not None and error != self.discovery_error:
            log.warning("queues %s: discovery refused, reading the configured queues and those "
                        "found before: %s", self.target, error)
        self.discovery_error = error
        return found

    async def _discover_rq(self) -> list[str]:
        rq_keys: set[Any] = await self.client.smembers("rq:queues")  # type: ignore[misc]
        return sorted(_text(k).removeprefix("rq:queue:") for k in rq_keys)

    async def _discover_bullmq(self) -> list[str]:
        bull_meta = await self._scan(f"{_glob_escape(self.prefix)}:*:meta")
        head, tail = len(self.prefix) + 1, len(":meta")
        return sorted({k[head:-tail] for k in bull_meta})

    async def _discover_celery(self) -> list[str]:
        celery: set[str] = set()
        bindings = [k for k in await self._scan(f"{_glob_escape(CELERY_BINDING_PREFIX)}*")
                    if k.removeprefix(CELERY_BINDING_PREFIX) not in CELERY_INTERNAL_EXCHANGES]
        if bindings:
            pipe = self.client.pipeline(transaction=False)
            for key in bindings:
                pipe.smembers(key)
            for members in await pipe.execute():
                for member in members:
                    parts = _text(member).split(CELERY_SEP)
                    if len(parts) == 3 and parts[2]:
                        celery.add(parts[2])
        return sorted(celery)

    async def _scan(self, match: str) -> list[str]:
        # SCAN in bounded steps: never KEYS, never more than scan_max_calls round trips. A key
        # stays listed until a full cycle ends without it, so a deleted queue goes then.
        cycle = self._scans.setdefault(match, _ScanCycle())
        for _ in range(self.scan_max_calls):
            cycle.cursor, keys = await self.client.scan(cycle.cursor, match=match,
                                                        count=self.scan_count)
            cycle.found.update(_text(k) for k in keys)
            if cycle.cursor == 0:
                cycle.complete, cycle.found = cycle.found, set()
                break
        return sorted(cycle.found.union(cycle.complete or ()))

    # ------------------------------------------------------------ reading

    async def read(self) -> list[QueueReading]:
        """Every queue's numbers: one read-only script call per chunk of queues (Redis 7+),
        else pipelined commands on older servers."""
        if self.use_script:
            try:
                return await self._read_by_script()
            except ResponseError as exc:  # the script's own error: CLIENT LIST's is not raised
                if "unknown command" not in str(exc).lower() and "flags" not in str(exc):
                    raise
                self.use_script = False  # Redis before 7: no EVAL_RO or script flags
        return await self._read_pipelined()

    async def _read_by_script(self) -> list[QueueReading]:
        bullmq, celery, rq = self.queues("bullmq"), self.queues("celery"), self.queues("rq")
        if not (bullmq or celery or rq):
            return []
        pipe = self.client.pipeline(transaction=False)
        step = self.chunk
        chunks = []
        for start in range(0, max(len(bullmq), len(celery), len(rq)), step):
            part = (bullmq[start:start + step], celery[start:start + step],
                    rq[start:start + step])
            chunks.append(part)
            args = script_args(self.prefix, *part, scan_factor=self.keyspace_scan_factor)
            pipe.execute_command("EVAL_RO", SCRIPT, 0, *args)
        if bullmq:
            pipe.client_list()
        replies = await pipe.execute(raise_on_error=False)
        now = time.time()
        workers = self._workers(replies.pop()) if bullmq else {}
        _raise_first(replies)
        unserved = None if workers is None else 0.0
        serving_of = (workers or {}).get
        readings: list[QueueReading] = []
        add = readings.append
        series = self._series
        suspended = False
        unacked = 0.0
        for (b_names, c_names, r_names), reply in zip(chunks, replies, strict=False):
            data = decode(reply)
            suspended = bool(data["suspended"])
            unacked = float(data["unacked"])
            for name, row in zip(b_names, data["b"], strict=True):
                serving = serving_of(name, unserved)
                if not isinstance(row, list):  # an empty queue: its paused flag alone
                    known = series.get(("bullmq", name))
                    if known is not None and known.empty is not None \
                            and known.empty.paused == row and known.empty.workers == serving:
                        add(known.empty)  # idle as at the last scrape: the same reading
                        continue
                    empty = QueueReading("bullmq", name, 0.0, dict(_BULLMQ_EMPTY), float(row),
                                         workers=serving)
                    if known is not None:
                        known.empty = empty
                    add(empty)
                    continue
                jobs = {state: float(v) for state, v in zip(BULLMQ_COLUMNS, row, strict=False)}
                waiting = sum(jobs[s] for s in BULLMQ_WAITING)
                add(QueueReading("bullmq", name, waiting, jobs, float(row[8]),
                                 oldest_age=_age("bullmq", row[9] or None, now),
                                 workers=serving))
            for name, depth in zip(c_names, data["c"], strict=True):
                add(QueueReading("celery", name, depth=float(depth),
                                 jobs={"waiting": float(depth)}))
            for name, row in zip(r_names, data["r"], strict=True):
                if not isinstance(row, list):
                    add(QueueReading("rq", name, 0.0, dict(_RQ_EMPTY), workers=0.0))
                    continue
                jobs = {state: float(v) for state, v in zip(RQ_COLUMNS, row, strict=False)}
                add(QueueReading("rq", name, jobs["queued"], jobs, workers=float(row[7]),
                                 oldest_age=_age("rq", row[8] or None, now)))
        if rq:
            flag = 1.0 if suspended else 0.0
            for r in readings:
                if r.kind == "rq":
                    r.paused = flag
        self.unacked = unacked if celery else None
        return readings

    async def _read_pipelined(self) -> list[QueueReading]:
        pipe = self.client.pipeline(transaction=False)
        plan: list[tuple[QueueReading, str]] = []
        bullmq, celery, rq = self.queues("bullmq"), self.queues("celery"), self.queues("rq")
        for name in bullmq:
            r = QueueReading("bullmq", name)
            base = f"{self.prefix}:{name}:"
            for state in BULLMQ_LISTS:
                pipe.llen(base + state)
                plan.append((r, state))
            for state in BULLMQ_ZSETS:
                pipe.zcard(base + state)
                plan.append((r, state))
            pipe.hexists(base + "meta", "paused")
            plan.append((r, ":paused"))
            pipe.lindex(base + "wait", -1)
            plan.append((r, ":oldest"))
            pipe.lindex(base + "paused", -1)
            plan.append((r, ":oldest"))
            pipe.zrange(base + "prioritized", -1, -1, withscores=True)
            plan.append((r, ":last"))
            pipe.zrange(base + "prioritized", 0, 0, withscores=True)
            plan.append((r, ":first"))
        for name in celery:
            r = QueueReading("celery", name)
            for suffix in CELERY_PRIORITY_SUFFIXES:
                pipe.llen(name + suffix)
                plan.append((r, ":depth"))
        for name in rq:
            r = QueueReading("rq", name)
            pipe.llen("rq:queue:" + name)
            plan.append((r, "queued"))
            for state, key in RQ_REGISTRIES.items():
                pipe.zcard(key + name)
                plan.append((r, state))
            pipe.smembers("rq:workers:" + name)
            plan.append((r, ":worker_keys"))
            pipe.lindex("rq:queue:" + name, 0)
            plan.append((r, ":oldest"))
        extra = 0
        if bullmq:
            pipe.client_list()
            extra += 1
        if rq:
            pipe.exists("rq:suspended")
            extra += 1
        if celery:
            pipe.hlen("unacked")
            extra += 1
        if not plan and not extra:
            return []
        replies = await pipe.execute(raise_on_error=False)
        by_queue = self._workers(replies.pop(len(plan))) if bullmq else {}
        _raise_first(replies)
        readings = _fill(plan, replies[:len(plan)])
        tail = replies[len(plan):]
        suspended = bool(tail.pop(0)) if rq else False
        self.unacked = float(tail.pop(0)) if celery else None
        unserved = None if by_queue is None else 0.0
        serving_of = (by_queue or {}).get
        for r in readings:
            if r.kind == "bullmq":
                r.workers = serving_of(r.queue, unserved)
            elif r.kind == "rq":
                r.paused = 1.0 if suspended else 0.0
        await self._rq_live_workers(readings)
        await self._oldest(readings)
        return readings

    async def _rq_live_workers(self, readings: Iterable[QueueReading]) -> None:
        """RQ workers whose rq:worker:<name> hash still exists, as the script counts them: a
        worker killed with SIGKILL stays in rq:workers:<queue> after its hash expired (rq's
        Worker.all() skips it). One more round trip, one EXISTS per queue with workers."""
        asked = [r for r in readings if r.worker_keys]
        if not asked:
            return
        pipe = self.client.pipeline(transaction=False)
        for r in asked:
            pipe.exists(*r.worker_keys)
        for r, live in zip(asked, await pipe.execute(), strict=True):
            r.workers = float(live)

    def _workers(self, reply: Any) -> dict[str, float] | None:
        """Workers per BullMQ queue from CLIENT LIST's reply; None where it was refused (an
        ACL without client|list, a renamed CLIENT): the workers series are then left out, as
        a 0 would read as "no worker" and page."""
        if isinstance(reply, ResponseError):
            self.workers_refused = str(reply)
            return None
        self.workers_refused = None
        return {queue: float(n) for queue, n in _bullmq_workers(reply, self.prefix).items()}

    async def _oldest(self, readings: Iterable[QueueReading]) -> None:
        # The candidates' timestamps: one more round trip, two where a BullMQ queue's
        # prioritized jobs span several priorities (the first of the lowest, by its score).
        asked = [r for r in readings if r.oldest_jobs or r.lowest_level is not None]
        if not asked:
            return
        lowest = [r for r in asked if r.lowest_level is not None]
        if lowest:
            pipe = self.client.pipeline(transaction=False)
            for r in lowest:
                pipe.zrangebyscore(f"{self.prefix}:{r.queue}:prioritized",
                                   f"{r.lowest_level:.0f}", "+inf", start=0, num=1)
            for r, first in zip(lowest, await pipe.execute(), strict=True):
                r.oldest_jobs += tuple(_text(job) for job in first)
        pipe = self.client.pipeline(transaction=False)
        plan = []
        for r in asked:
            for job in dict.fromkeys(r.oldest_jobs):
                if r.kind == "bullmq":
                    pipe.hget(f"{self.prefix}:{r.queue}:{job}", "timestamp")
                else:
                    pipe.hget(f"rq:job:{job}", "enqueued_at")
                plan.append(r)
        now = time.time()
        for r, value in zip(plan, await pipe.execute(), strict=True):
            age = _age(r.kind, value, now)
            if age is not None and (r.oldest_age is None or age > r.oldest_age):
                r.oldest_age = age

    def families(self, readings: Sequence[QueueReading]) -> list[Metric]:
        """The queue families of these readings."""
        labels = ("target", "kind", "queue")
        memo = self._memo_for(readings)
        depth = RowFamily("runbook_queue_depth", "Jobs waiting to be processed", labels,
                          memo["depth"])
        jobs = RowFamily("runbook_queue_jobs", "Jobs by state, every state the library keeps",
                         (*labels, "state"), memo["jobs"])
        paused = RowFamily("runbook_queue_paused", "1 if the queue (RQ: all workers) is paused",
                           labels, memo["paused"])
        oldest = RowFamily("runbook_queue_oldest_job_age_seconds",
                           "Age of the oldest waiting job (0: none waiting)", labels,
                           memo["oldest"])
        workers = RowFamily("runbook_queue_workers", "Workers serving the queue", labels,
                            memo["workers"])
        d_add, j_add, p_add = depth.rows.append, jobs.groups.append, paused.rows.append
        o_add, w_add = oldest.rows.append, workers.rows.append
        series = self._series
        for r in readings:
            s = series.get((r.kind, r.queue))
            if s is None:
                s = series[(r.kind, r.queue)] = _QueueSeries(self.target, r.kind, r.queue)
            if r is not s.reading:
                s.remember(r)
            d_add(s.depth)
            j_add(s.jobs)
            if s.paused is not None:
                p_add(s.paused)
            if s.oldest is not None:
                o_add(s.oldest)
            if s.workers is not None:
                w_add(s.workers)
        out: list[Metric] = [depth, jobs, paused, oldest, workers]
        if self.unacked is not None:
            unacked = gauge("runbook_queue_unacked",
                            "Messages delivered but not acknowledged (Celery: per database)",
                            ("target", "kind"))
            unacked.add_metric([self.target, "celery"], self.unacked)
            out.append(unacked)
        return out

    def _memo_for(self, readings: Sequence[QueueReading]) -> dict[str, RenderMemo]:
        """The render memos, dropped (with the per-queue series) when the set of queues
        changes, so they never hold series that are gone."""
        names = [(r.kind, r.queue) for r in readings]
        if names != self._memo_names:
            self._memo = {name: RenderMemo()
                          for name in ("depth", "jobs", "paused", "oldest", "workers")}
            self._series = {}
            self._memo_names = names
        return self._memo


class _QueueSeries:
    """One queue's label values, built once (the same queue labels every scrape), and its rows
    from its last reading: an idle queue gives the same reading, so the same rows, whose text
    the renderer then reuses."""

    __slots__ = ("_last_jobs", "_last_rows", "_state_keys", "depth", "empty", "jobs", "key",
                 "oldest", "paused", "reading", "workers")

    def __init__(self, target: str, kind: str, queue: str) -> None:
        self.key = (target, kind, queue)
        self._state_keys: dict[str, tuple[str, str, str, str]] = {}
        self._last_jobs: dict[str, float] | None = None
        self._last_rows: tuple[Row, ...] = ()
        self.reading: QueueReading | None = None
        self.empty: QueueReading | None = None
        """The last reading of this queue while it was empty (BullMQ)."""
        self.depth: Row = (self.key, 0.0)
        self.jobs: tuple[tuple[str, str, str], tuple[Row, ...]] = (self.key, ())
        self.paused: Row | None = None
        self.oldest: Row | None = None
        self.workers: Row | None = None

    def remember(self, r: QueueReading) -> None:
        """This scrape's reading and its rows."""
        key = self.key
        self.reading = r
        self.depth = (key, r.depth)
        self.jobs = (key, self.jobs_rows(r.jobs))
        self.paused = None if r.paused is None else (key, r.paused)
        self.oldest = None if r.kind == "celery" else (key, r.oldest_age or 0.0)
        self.workers = None if r.workers is None else (key, r.workers)

    def jobs_rows(self, jobs: dict[str, float]) -> tuple[Row, ...]:
        """Rows of runbook_queue_jobs; the same tuple as last scrape when nothing changed, so
        the renderer reuses its text."""
        if jobs == self._last_jobs:
            return self._last_rows
        keys = self._state_keys
        rows = []
        for state, value in jobs.items():
            key = keys.get(state)
            if key is None:
                key = keys[state] = (*self.key, state)
            rows.append((key, value))
        self._last_jobs = jobs
        self._last_rows = tuple(rows)
        return self._last_rows


def _fill(plan: list[tuple[QueueReading, str]], replies: Sequence[Any]) -> list[QueueReading]:
    readings: dict[int, QueueReading] = {}
    for (r, what), value in zip(plan, replies, strict=True):
        readings.setdefault(id(r), r)
        if what == ":paused":
            r.paused = 1.0 if value else 0.0
        elif what == ":oldest":
            if value is not None and not r.oldest_jobs:
                job = _text(value)
                if not job.startswith("0:"):  # BullMQ's legacy marker, not a job
                    r.oldest_jobs = (job,)
        elif what == ":last":  # the prioritized job BullMQ would take last
            if value:
                r.lowest_level = (value[0][1] // PRIORITY_STEP) * PRIORITY_STEP
        elif what == ":first":  # ... and the one it would take next
            if value:
                job, score = value[0]
                r.oldest_jobs += (_text(job),)
                if r.lowest_level is not None and score >= r.lowest_level:
                    r.lowest_level = None  # one priority in use: its first job is this one
        elif what == ":worker_keys":
            r.worker_keys = tuple(_text(k) for k in value)
            r.workers = 0.0  # until _rq_live_workers counts the members still alive
        elif what == ":depth":
            r.depth += float(value)
        else:
            r.jobs[what] = float(value)
    for r in readings.values():
        if r.kind == "bullmq":
            r.depth = sum(r.jobs.get(s, 0.0) for s in BULLMQ_WAITING)
        elif r.kind == "rq":
            r.depth = r.jobs.get("queued", 0.0)
        elif r.kind == "celery":
            r.jobs["waiting"] = r.depth
    return list(readings.values())


def _raise_first(replies: Iterable[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _bullmq_workers(clients: Sequence[dict[str, Any]], prefix: str) -> dict[str, int]:
    """Workers per queue from CLIENT LIST names, as BullMQ's own getWorkers counts them."""
    import base64
    import binascii

    counts: dict[str, int] = {}
    head = prefix + ":"
    for client in clients:
        name = _text(client.get("name") or "")
        if not name.startswith(head):
            continue
        encoded = name[len(head):]
        if ":" in encoded:
            encoded, _, rest = encoded.partition(":")
            if not rest.startswith("w:"):
                continue
        try:
            queue = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
        counts[queue] = counts.get(queue, 0) + 1
    return counts


def _age(kind: str, value: Any, now: float) -> float | None:
    if value is None:
        return None
    text = _text(value)
    try:
        if kind == "bullmq":
            stamp = float(text) / 1000.0
        else:
            stamp = datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
    return max(0.0, now - stamp)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
