"""Last success of a cron job or heartbeat: a Redis key, a SQL value, a file mtime, a JSON field."""

from __future__ import annotations

import asyncio
import os
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.core import Metric
from redis.asyncio import Redis

from exporter.collectors.base import Collector, one

# A number this large is milliseconds since the epoch, not seconds (that would be year 5138).
_MILLIS = 1e11
NAME = "runbook_last_success_timestamp_seconds"
HELP = "Unix time of the last success (0: never seen)"

if TYPE_CHECKING:
    import asyncpg  # imported where a pool is opened: only runbooks with PostgreSQL pay for it


def to_timestamp(value: Any) -> float:
    """Seconds since the epoch from a number (s or ms), numeric text, ISO text or a datetime."""
    if value is None:
        return 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).timestamp()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                return datetime.fromisoformat(text).timestamp()
            except ValueError:
                raise ValueError(f"{text[:40]!r} is neither a unix time nor an ISO date") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a timestamp")
    number = float(value)
    return number / 1000.0 if number > _MILLIS else number


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
    """One freshness check; exactly one source is given."""

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

    async def collect(self) -> list[Metric]:
        return [one(NAME, HELP, self.target, await self.read())]

    async def read(self) -> float:
        """The last success as a unix time, 0 when the source holds none yet."""
        if self.redis is not None and self.redis_key is not None:
            return to_timestamp(await self.redis.get(self.redis_key))
        if self.pool is not None and self.sql is not None:
            return to_timestamp(await self.pool.fetchval(self.sql))
        if self.file is not None:
            try:
                st = await asyncio.to_thread(os.stat, self.file)
            except FileNotFoundError:
                return 0.0
            return st.st_mtime
        if self.session is not None and self.url is not None and self.field is not None:
            async with self.session.get(self.url) as response:
                response.raise_for_status()
                body = await response.json(content_type=None)
            return to_timestamp(dig(body, self.field))
        raise ValueError("a freshness check needs one source")
