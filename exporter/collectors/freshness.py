"""Last success of a cron job or heartbeat: a Redis key, a SQL value, a file mtime, a JSON field."""

from __future__ import annotations

import asyncio
import json
import math
import numbers
import os
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.core import Metric
from redis.asyncio import Redis

from exporter.collectors.base import Collector, one
from exporter.collectors.http import read_capped

# A number's unit comes from its size: below 1e11 it is seconds (1e11 s is the year 5138),
# below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds. Each bound sits three
# orders of magnitude from the next, so any time from 1973 to 5138 reads right in every unit.
_UNITS = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6))
_NANOS = 1e9
# How far ahead of this host's clock a last success may be (clock skew between hosts); more is
# a wrong value, and taking it would keep the staleness alert quiet until that time comes.
MAX_SKEW = 300.0
NAME = "runbook_last_success_timestamp_seconds"
HELP = "Unix time of the last success (0: never seen)"

if TYPE_CHECKING:
    import asyncpg  # imported where a pool is opened: only runbooks with PostgreSQL pay for it


def plausible(seconds: float, now: float | None = None) -> float:
    """The unix time itself, or ValueError when it is NaN, infinite or in the future: each
    would keep a staleness alert from ever firing, so the check reports it instead."""
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds!r} is not a finite unix time")
    now = time.time() if now is None else now
    if seconds > now + MAX_SKEW:
        raise ValueError(f"{seconds:.0f} is {seconds - now:.0f}s in the future "
                         f"(more than {MAX_SKEW:.0f}s of clock skew)")
    return seconds


def as_utc(moment: datetime) -> datetime:
    """The datetime itself, or read as UTC when it has no offset. Such times come from
    `datetime.utcnow().isoformat()` or a `timestamp without time zone` column, nearly always in
    UTC; read in the exporter's local zone they would be hours off, or "in the future"."""
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def to_timestamp(value: Any, now: float | None = None) -> float:
    """Seconds since the epoch from a number (s, ms, µs or ns by its size; an int, a float, a
    Decimal or any other real), numeric text, ISO text, a datetime or a date (one without an
    offset is UTC); ValueError for NaN, infinity or a time in the future."""
    if value is None:
        return 0.0
    if isinstance(value, datetime):
        return plausible(as_utc(value).timestamp(), now)
    if isinstance(value, date):
        return plausible(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp(),
                         now)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                stamp = as_utc(datetime.fromisoformat(text)).timestamp()
            except ValueError:
                raise ValueError(f"{text[:40]!r} is neither a unix time nor an ISO date") from None
            return plausible(stamp, now)
    number = _as_number(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite unix time")
    size = abs(number)
    divisor = next((d for bound, d in _UNITS if size < bound), _NANOS)
    return plausible(number / divisor, now)


def _as_number(value: Any) -> float:
    """A number as a float; ValueError for anything else, bool included (True is no time).

    Decimal counts: PostgreSQL 14+ gives `extract(epoch from ...)` as numeric, which asyncpg
    hands out as Decimal (not a numbers.Real). Its NaN and infinities stay so as floats, for
    the checks that follow to refuse.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | numbers.Real):
        raise ValueError(f"{value!r} is not a timestamp")
    try:
        return float(value)
    except (ValueError, OverflowError):  # Decimal('sNaN'); an int too big for a float
        raise ValueError(f"{value!r} is not a finite unix time") from None


def dig(body: Any, dotted: str) -> Any:
    """The value at a dotted path (`a.b.0.c`) in parsed JSON."""
    current = body
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise ValueError(f"the JSON has no field {dotted!r} (stopped at {part!r})")
    return current


class FreshnessCollector(Collector):
    """One freshness check; exactly one source is given.

    A file's stat runs in a worker thread, and while one is still running no other is started:
    a thread stuck in stat (a hung NFS mount) cannot be stopped, so each scrape would leave one
    more, until the default thread pool is full and every collector using it times out. A
    scrape finding a stat in flight shares its result while it is younger than the timeout
    (two Prometheus servers scraping at once); only an older one is reported as hung.
    """

    kind = "freshness"

    def __init__(self, target: str, timeout: float, *, redis: Redis | None = None,
                 redis_key: str | None = None, pool: asyncpg.Pool | None = None,
                 sql: str | None = None, file: str | None = None,
                 session: aiohttp.ClientSession | None = None, url: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(target, timeout)
        self.redis, self.redis_key = redis, redis_key
        self.pool, self.sql = pool, sql
        self.file = file
        self.session, self.url, self.field = session, url, field
        self._stat: asyncio.Task[os.stat_result] | None = None
        self._stat_started = 0.0
        """Event-loop time the stat in _stat was started."""

    async def collect(self) -> list[Metric]:
        return [one(NAME, HELP, self.target, await self.read())]

    async def read(self) -> float:
        """The last success as a unix time, 0 when the source holds none yet."""
        if self.redis is not None and self.redis_key is not None:
            return to_timestamp(await self.redis.get(self.redis_key))
        if self.pool is not None and self.sql is not None:
            return to_timestamp(await self.pool.fetchval(self.sql))
        if self.file is not None:
            return await self._file_mtime(self.file)
        if self.session is not None and self.url is not None and self.field is not None:
            # This check's timeout, not the shared session's defaults (see http.probe_once).
            async with self.session.get(
                    self.url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                response.raise_for_status()
                body = json.loads(await read_capped(response))
            return to_timestamp(dig(body, self.field))
        raise ValueError("a freshness check needs one source")

    async def _file_mtime(self, path: str) -> float:
        """The file's mtime, 0 when it does not exist; OSError while an earlier stat hangs."""
        task = self._stat_task(path)
        # asyncio.wait never cancels the stat: when the scrape's deadline cancels this read,
        # the stat runs on, and the next scrape waits for it or, once it is older than the
        # timeout, reports it hung, instead of starting another.
        await asyncio.wait({task})
        try:
            st = task.result()
        except FileNotFoundError:
            return 0.0
        return plausible(st.st_mtime)

    def _stat_task(self, path: str) -> asyncio.Task[os.stat_result]:
        """The stat in flight while it is younger than the timeout (a concurrent scrape's:
        its answer is as fresh as a new one), else a new one; OSError when the one in
        flight is older, as a stat that slow is stuck (a hung mount)."""
        now = asyncio.get_running_loop().time()
        earlier = self._stat
        if earlier is not None and not earlier.done():
            age = now - self._stat_started
            if age > self.timeout:
                raise OSError(f"the stat of {path} started {age:.1f}s ago by an earlier scrape "
                              "is still running (a hung mount?)")
            return earlier
        task = asyncio.create_task(asyncio.to_thread(os.stat, path))
        task.add_done_callback(_retrieve)
        self._stat, self._stat_started = task, now
        return task


def _retrieve(task: asyncio.Task[os.stat_result]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log an abandoned stat's error
